"""Flow: this DRIMbox serves the images of the exams it published to the DRIMboxes of other hospitals
(WADO-RS, DRIM-M). A caller is let in on three conditions, each checked before the PACS is asked:
- an active Pro Santé Connect token (``Authorization: Bearer``), introspected at PSC: a professional asks;
- the ``KOS-SOPInstanceUID`` header names a manifest this DRIMbox published and still stands by;
- that manifest covers the requested study and series: a caller cannot walk the PACS from one manifest.
Anything else is answered as if the series did not exist (404), as the ANS prototype does, except a missing or
inactive token (401). Each retrieval is written in the audit trail with the professional's PSC identifier.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.flows.drimbox_ports import IntrospectionPort, PacsPort, PacsWadoPort
from opensegur.store.models import Document, ImagingManifest

__all__ = ["DrimboxServing", "ServedSeries", "covering_manifest"]


@dataclass(frozen=True)
class DrimboxServing:
    pacs: PacsPort
    introspector: IntrospectionPort
    pacs_wado: PacsWadoPort | None = None  # the PACS's own WADO-RS: series streamed through instead of C-GET


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
