"""The hospital's PACS over DICOM DIMSE (pynetdicom): C-ECHO, and an exam's instances by C-FIND.

The DRIMbox source asks the PACS which images an imaging report's exam holds before it builds the manifest. The
query walks the Study Root model level by level — the study's series, then each series' instances — since a PACS
that implements only the hierarchical model (PS3.4 §C.4.1.2.1) refuses an IMAGE-level query without the series.

pynetdicom is blocking: callers on the event loop run these methods in a thread."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

__all__ = ["PacsEndpoint", "PacsError", "PacsQueryError", "PacsUnavailable", "PacsClient"]

_PENDING = (0xFF00, 0xFF01)
_SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesDescription")
_STUDY_KEYS = (
    "PatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
    "StudyID",
)
_IMAGE_KEYS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "NumberOfFrames")


class PacsError(Exception):
    """The PACS refused or failed the request: the French reason, for the operator."""


class PacsUnavailable(PacsError):
    """No association: the PACS is down, unreachable or refuses this AE title. Retry later."""


class PacsQueryError(PacsError):
    """The PACS answered the query with a failure status."""


@dataclass(frozen=True)
class PacsEndpoint:
    host: str
    port: int
    called_aet: str  # the PACS's AE title
    calling_aet: str = "OPENSEGUR"  # ours, as declared in the PACS
    timeout_s: float = 30.0

    def __str__(self) -> str:
        return f"{self.called_aet}@{self.host}:{self.port}"


class PacsClient:
    def __init__(self, endpoint: PacsEndpoint) -> None:
        self.endpoint = endpoint

    def _associate(self, context: str) -> Association:
        ae = AE(ae_title=self.endpoint.calling_aet)
        ae.add_requested_context(context)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout"):
            setattr(ae, timeout, self.endpoint.timeout_s)
        assoc = ae.associate(self.endpoint.host, self.endpoint.port, ae_title=self.endpoint.called_aet)
        if not assoc.is_established:
            why = "refusée" if assoc.is_rejected else "interrompue" if assoc.is_aborted else "impossible"
            raise PacsUnavailable(f"PACS {self.endpoint} : association {why}")
        return assoc

    def echo(self) -> None:
        """C-ECHO: the PACS answers this AE title."""
        assoc = self._associate(Verification)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status:
            # A PACS that does not know the calling AE title may accept the association, then abort it.
            raise PacsUnavailable(
                f"PACS {self.endpoint} : pas de réponse au C-ECHO ({self.endpoint.calling_aet} "
                "est-il déclaré dans le PACS ?)"
            )
        if status.Status != 0x0000:
            raise PacsQueryError(f"PACS {self.endpoint} : C-ECHO en échec ({_status(status)})")

    def _find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        found = []
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise PacsUnavailable(f"PACS {self.endpoint} : pas de réponse au C-FIND")
            if status.Status in _PENDING and identifier is not None:
                found.append(identifier)
            elif status.Status != 0x0000:
                raise PacsQueryError(f"PACS {self.endpoint} : C-FIND en échec ({_status(status)})")
        return found

    def find_instances(self, study_instance_uid: str) -> list[Dataset]:
        """Every instance of the study, each with its study, series and instance attributes (what
        ``imaging.study.study_from_matches`` groups); [] when the PACS does not know the study."""
        assoc = self._associate(StudyRootQueryRetrieveInformationModelFind)
        try:
            study = _query("STUDY", StudyInstanceUID=study_instance_uid, keys=_STUDY_KEYS)
            studies = self._find(assoc, study)
            if not studies:
                return []
            series_list = self._find(
                assoc,
                _query(
                    "SERIES", StudyInstanceUID=study_instance_uid, SeriesInstanceUID="", keys=_SERIES_KEYS
                ),
            )
            matches = []
            for series in series_list:
                images = self._find(
                    assoc,
                    _query(
                        "IMAGE",
                        StudyInstanceUID=study_instance_uid,
                        SeriesInstanceUID=str(series.SeriesInstanceUID),
                        keys=_IMAGE_KEYS,
                    ),
                )
                for image in images:
                    for source in (studies[0], series):
                        for keyword in (*_STUDY_KEYS, *_SERIES_KEYS, "SeriesInstanceUID"):
                            if keyword in source and keyword not in image:
                                setattr(image, keyword, source.get(keyword))
                    image.StudyInstanceUID = study_instance_uid
                    matches.append(image)
            return matches
        finally:
            assoc.release()


def _query(level: str, *, keys: tuple[str, ...], **unique: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in unique.items():
        setattr(ds, keyword, value)
    for keyword in keys:
        setattr(ds, keyword, "")
    return ds


def _status(status: Dataset | None) -> str:
    return f"statut 0x{int(status.Status):04X}" if status else "sans réponse"
