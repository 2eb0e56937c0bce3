"""What a KOS manifest found in the DMP says, as a DRIMbox consumer reads it before asking another DRIMbox for the
images: whose exam it is, which study and request, and for each series where to retrieve it and which instances
it must hold. A manifest that does not say all of this is refused: a consumer that fetched from an unchecked
manifest could show another patient's images or call an address nobody vouched for.

Read as the source writes it (``imaging.kos``, the ANS sample ``informatif/KIN``): the patient by the INS with its
OID in IssuerOfPatientIDQualifiersSequence, the accession number in the ReferencedRequestSequence, one RetrieveURL
per series in the CurrentRequestedProcedureEvidenceSequence."""

from __future__ import annotations

import io
from dataclasses import dataclass
from urllib.parse import urlsplit

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from opensegur.errors import OpenSegurError
from opensegur.imaging.kos import KOS_SOP_CLASS
from opensegur.imaging.uids import required_uid

__all__ = ["Manifest", "ManifestError", "SeriesRef", "read_manifest"]


class ManifestError(OpenSegurError):
    """The DMP's document is not a KOS manifest a consumer can act on: the French reason."""


@dataclass(frozen=True)
class SeriesRef:
    series_instance_uid: str
    retrieve_url: str  # the source DRIMbox's WADO-RS address of the series
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    sop_instance_uid: str  # what the consumer names in KOS-SOPInstanceUID
    patient_id: str  # the INS
    patient_id_oid: str | None
    study_instance_uid: str
    accession_number: str
    series: tuple[SeriesRef, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(s.sop_instance_uids) for s in self.series)


def _url(value: object) -> str:
    url = str(value or "")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ManifestError(
            "Manifeste KOS : une série n'a pas d'adresse de récupération (RetrieveURL) valide"
        )
    return url


def _accession(ds: Dataset) -> str:
    for request in ds.get("ReferencedRequestSequence") or []:
        if request.get("AccessionNumber"):
            return str(request.AccessionNumber)
    return str(ds.get("AccessionNumber") or "")


def _series(item: Dataset) -> SeriesRef:
    sops = tuple(
        required_uid(
            ref.get("ReferencedSOPInstanceUID"), "Manifeste KOS : instance référencée", ManifestError
        )
        for ref in item.get("ReferencedSOPSequence") or []
    )
    if not sops:
        raise ManifestError("Manifeste KOS : une série ne référence aucune instance")
    return SeriesRef(
        required_uid(item.get("SeriesInstanceUID"), "Manifeste KOS : série", ManifestError),
        _url(item.get("RetrieveURL")),
        sops,
    )


def read_manifest(data: bytes) -> Manifest:
    """The manifest in ``data`` (DICOM Part 10, as ITI-43 returns it). Raises ManifestError."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise ManifestError(f"Le document n'est pas un fichier DICOM lisible ({type(exc).__name__})") from exc
    if str(ds.get("SOPClassUID", "")) != KOS_SOP_CLASS:
        raise ManifestError("Le document n'est pas un manifeste KOS (Key Object Selection)")
    patient_id = str(ds.get("PatientID") or "")
    if not patient_id:
        raise ManifestError("Manifeste KOS : patient (PatientID) absent")
    qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence") or []
    oid = str(qualifiers[0].get("UniversalEntityID") or "") or None if qualifiers else None
    evidence = ds.get("CurrentRequestedProcedureEvidenceSequence") or []
    if len(evidence) != 1:
        raise ManifestError("Manifeste KOS : il doit décrire exactement un examen")
    study = required_uid(
        evidence[0].get("StudyInstanceUID"), "Manifeste KOS : examen (StudyInstanceUID)", ManifestError
    )
    if str(ds.get("StudyInstanceUID") or study) != study:
        raise ManifestError("Manifeste KOS : l'examen référencé n'est pas celui du manifeste")
    series = tuple(_series(item) for item in evidence[0].get("ReferencedSeriesSequence") or [])
    if not series:
        raise ManifestError("Manifeste KOS : aucune série référencée")
    return Manifest(
        required_uid(ds.get("SOPInstanceUID"), "Manifeste KOS : identifiant du manifeste", ManifestError),
        patient_id,
        oid,
        study,
        _accession(ds),
        series,
    )
