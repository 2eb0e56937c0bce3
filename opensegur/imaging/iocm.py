"""An image change from the PACS (IHE RAD IOCM): the Rejection Note, a Key Object Selection whose document title
says why instances were withdrawn, listing them in its evidence sequence (DICOM PS3.16 CID 7011 « Rejected for
… »). A DRIMbox that published a manifest naming those instances must publish one without them, or withdraw it when
nothing is left: another hospital must not be sent looking for an image the PACS no longer stands by.

Pure: the C-STORE that brings the note is the transport's; what to do with it is the flow's."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from opensegur.errors import OpenSegurError
from opensegur.imaging.kos import KOS_SOP_CLASS
from opensegur.imaging.uids import required_uid

__all__ = ["REJECTION_REASONS", "Rejection", "RejectionError", "read_rejection"]

# CID 7011 Rejected for Quality Reasons and its siblings (PS3.16), as IOCM uses them.
REJECTION_REASONS = {
    "113001": "Rejeté pour raison de qualité",
    "113037": "Rejeté pour la sécurité du patient",
    "113038": "Entrée de liste de travail erronée",
    "113039": "Durée de conservation expirée",
}


class RejectionError(OpenSegurError):
    """A Rejection Note that cannot be acted on: the French reason, answered to the PACS."""


@dataclass(frozen=True)
class Rejection:
    note_sop_instance_uid: str
    reason: str  # the CID 7011 code
    instances: dict[str, frozenset[str]]  # study UID → the SOP Instance UIDs withdrawn

    @property
    def reason_label(self) -> str:
        return REJECTION_REASONS[self.reason]


def read_rejection(ds: Dataset) -> Rejection | None:
    """The Rejection Note ``ds`` is, or None for any other object (a KOS that is a manifest, an image…)."""
    if str(ds.get("SOPClassUID", "")) != KOS_SOP_CLASS:
        return None
    title = (ds.get("ConceptNameCodeSequence") or [None])[0]
    if title is None or title.get("CodingSchemeDesignator") != "DCM":
        return None
    reason = str(title.get("CodeValue") or "")
    if reason not in REJECTION_REASONS:
        return None
    instances: dict[str, set[str]] = {}
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        study_uid = required_uid(study.get("StudyInstanceUID"), "Note de rejet IOCM : examen", RejectionError)
        for series in study.get("ReferencedSeriesSequence") or []:
            for ref in series.get("ReferencedSOPSequence") or []:
                sop = required_uid(
                    ref.get("ReferencedSOPInstanceUID"),
                    "Note de rejet IOCM : instance rejetée",
                    RejectionError,
                )
                instances.setdefault(study_uid, set()).add(sop)
    if not instances:
        raise RejectionError("Note de rejet IOCM sans instance rejetée")
    return Rejection(
        required_uid(ds.get("SOPInstanceUID"), "Note de rejet IOCM : identifiant de la note", RejectionError),
        reason,
        {study: frozenset(sops) for study, sops in instances.items()},
    )
