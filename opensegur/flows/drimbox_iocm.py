"""Flow: an image change from the PACS reaches the manifests this DRIMbox published (IHE RAD IOCM).

The PACS sends a Rejection Note (C-STORE of a KOS, ``transport.dicom_receiver``). In one transaction, before the
PACS is answered: the withdrawn instances are recorded (``ImagingRejection``), and each imaging report whose
manifest covers their exam gets a ``drimbox.publish`` job of its own. That job asks the PACS again, leaves out every
rejected instance — a PACS that implements IOCM already hides them, one that does not still lists them — and
publishes a manifest that replaces the previous one (RPLC), or withdraws it (ITI-57) when no image is left.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from sqlalchemy import select

from opensegur.flows.jobs import JobKind
from opensegur.imaging.iocm import RejectionError, read_rejection
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import Document, ImagingManifest, ImagingRejection
from opensegur.transport.dicom_receiver import NotAccepted

__all__ = ["make_note_handler"]


def receive_note(db: Database, ds: Dataset) -> list[int]:
    """Records the Rejection Note ``ds`` and queues the new manifests; the jobs' ids. Raises NotAccepted."""
    try:
        rejection = read_rejection(ds)
    except RejectionError as exc:
        raise NotAccepted(str(exc)) from exc
    if rejection is None:
        raise NotAccepted("Seules les notes de rejet IOCM (KOS « Rejected for … ») sont reçues ici")
    queued = []
    with db.session() as s:
        for study, sops in rejection.instances.items():
            known = set(
                s.scalars(
                    select(ImagingRejection.sop_instance_uid).where(
                        ImagingRejection.study_instance_uid == study
                    )
                )
            )
            for sop in sorted(sops - known):
                s.add(
                    ImagingRejection(
                        study_instance_uid=study,
                        sop_instance_uid=sop,
                        reason=rejection.reason,
                        note_sop_instance_uid=rejection.note_sop_instance_uid,
                    )
                )
            reports = s.execute(
                select(Document.id, Document.structure_id, Document.patient_id)
                .join(ImagingManifest, ImagingManifest.document_id == Document.id)
                .where(ImagingManifest.study_instance_uid == study, ImagingManifest.status == "published")
                .distinct()
            ).all()
            for document_id, structure_id, patient_id in reports:
                queued.append(
                    jobs.enqueue(
                        s,
                        JobKind.DRIMBOX_PUBLISH,
                        f"{JobKind.DRIMBOX_PUBLISH}:{document_id}:iocm:{rejection.note_sop_instance_uid}",
                        {"document_id": document_id, "change": rejection.note_sop_instance_uid},
                        structure_id=structure_id,
                        patient_id=patient_id,
                    )
                )
    return queued


def make_note_handler(db: Database) -> Callable[[Dataset], None]:
    """What the DICOM receiver calls for each object the PACS pushes."""

    def handle(ds: Dataset) -> None:
        receive_note(db, ds)

    return handle
