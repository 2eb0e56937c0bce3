"""Flow: this DRIMbox serves the images of the exams it published to the DRIMboxes of other hospitals
(WADO-RS, DRIM-M). A caller is let in on these conditions, each checked before the PACS is asked:
- with mutual TLS configured, a client certificate whose subject is a listed DRIMbox's operator certificate
  (the ANS's list, ``DNCertificatOperateur``): any other caller, or one without certificate, is refused (403);
- an active Pro Santé Connect token (``Authorization: Bearer``), introspected at PSC: a professional asks;
- the ``KOS-SOPInstanceUID`` header names a manifest this DRIMbox published and still stands by;
- that manifest covers the requested study and series: a caller cannot walk the PACS from one manifest.
Anything else is answered as if the series did not exist (404), as the ANS prototype does, except a missing or
inactive token (401). Each retrieval is written in the audit trail with the professional's PSC identifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.errors import OpenSegurError
from opensegur.flows.drimbox_ports import IntrospectionPort, PacsPort, PacsWadoPort
from opensegur.security.drimbox_directory import DirectoryError, DrimboxDirectory
from opensegur.store.models import Document, ImagingManifest

__all__ = ["CallerRefused", "DrimboxServing", "ServedSeries", "covering_manifest", "listed_caller"]


class CallerRefused(OpenSegurError):
    """The calling DRIMbox is not one of the list: the French reason."""


@dataclass(frozen=True)
class DrimboxServing:
    pacs: PacsPort
    introspector: IntrospectionPort
    pacs_wado: PacsWadoPort | None = None  # the PACS's own WADO-RS: series streamed through instead of C-GET
    # With mutual TLS: the ANS's list, read afresh at each call, that every caller's certificate must be in.
    callers: Callable[[], DrimboxDirectory] | None = None


def listed_caller(serving: DrimboxServing, certificate_name: str | None) -> str | None:
    """The listed DRIMbox (its Identifiant) whose certificate the caller presented; None when mutual TLS is not
    configured. Raises CallerRefused."""
    if serving.callers is None:
        return None
    if certificate_name is None:
        raise CallerRefused(
            "Certificat client requis : les images ne sont servies qu'aux DRIMbox de la liste blanche, en TLS mutuel"
        )
    try:
        caller = serving.callers().operated_by(certificate_name)
    except DirectoryError as exc:
        raise CallerRefused(f"{exc} — aucune image n'est servie sans liste blanche des DRIMbox") from exc
    if caller is None:
        raise CallerRefused("Le certificat de l'appelant n'est celui d'aucun DRIMbox de la liste blanche")
    return caller.identifier


@dataclass(frozen=True)
class ServedSeries:
    manifest_sop: str
    patient_id: int | None  # the patient of the report the manifest was published for


def covering_manifest(s: Session, kos_sop: str, study: str, series: str) -> ServedSeries | None:
    """The published manifest ``kos_sop`` when it covers ``series`` of ``study``, else None."""
    row = s.scalar(
        select(ImagingManifest).where(
            ImagingManifest.sop_instance_uid == kos_sop, ImagingManifest.status == "published"
        )
    )
    if row is None or row.study_instance_uid != study or series not in (row.series_uids or []):
        return None
    report = s.get(Document, row.document_id)
    return ServedSeries(row.sop_instance_uid, report.patient_id if report is not None else None)
