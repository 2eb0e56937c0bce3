"""A realistic DMP for the demo's patients: the ANS example documents, spread over several years.

The metadata are what a producer would send: derived from each CDA's header by the platform's own rules
(``content.xds_metadata``), the patient being the demo patient's INS. Registered directly in the store once per
patient (a restart keeps what is there), so the DMP tab, the carnet de vaccination and the viewer have something
real to show under ``serve --demo``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from opensegur.content import jdv
from opensegur.content.cda import parse_cda
from opensegur.content.xds_metadata import document_metadata
from opensegur.documents.metadata import SubmissionSetMetadata
from opensegur.sandbox.dmp.patients import DmpPatient, DmpStatus
from opensegur.sandbox.dmp.store import Caller, DmpStore
from opensegur.transactions.ihe_ids import ASSOC_HAS_MEMBER
from opensegur.transactions.xds import Association, ProvideAndRegister, SubmittedDocument

__all__ = ["DEMO_DOCUMENTS", "seed_demo_dmp"]

_DIR = Path(__file__).with_name("demo_documents")
# (file, age in days, class code when the ANS type→class table ASS_X04, not in the kit, leaves it open)
DEMO_DOCUMENTS: tuple[tuple[str, int, str | None], ...] = (
    ("BIO-CR-BIO_2024.01_TSH_1.xml", 20, None),
    ("IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml", 95, None),
    ("LDL-SES_2022.01.xml", 400, None),
    ("VAC-NOTE_2023.01.xml", 800, None),
    ("BIO-CR-BIO_2024.01_TSH_2.xml", 1100, None),
    ("VAC_2023.01.xml", 1500, "11"),  # Historique des vaccinations: a synthesis
)
_OID_ROOT = "1.2.250.1.999.70"  # the sandbox's arc for what it generates
_SEEDER = Caller(
    "SANDBOX-SEED", "Bac à sable DMP, contenu de démonstration", "SANDBOX", "INDIRECTE", "normal", ""
)


def _uid(matricule: str, index: int, kind: str) -> str:
    # Deterministic, so a second start finds the document already there.
    number = int(hashlib.sha256(f"{matricule}/{index}/{kind}".encode()).hexdigest()[:12], 16)
    return f"{_OID_ROOT}.{1 if kind == 'doc' else 2}.{number}"


def seed_demo_dmp(store: DmpStore, patients: list[DmpPatient], now: datetime | None = None) -> int:
    """Register the demo documents in the DMP of each open ``patients``' DMP that has none yet; the count added."""
    moment = now or datetime.now(UTC)
    files = {name: (_DIR / name).read_bytes() for name, _age, _cls in DEMO_DOCUMENTS}
    headers = {name: parse_cda(raw)[1] for name, raw in files.items()}
    added = 0
    for patient in patients:
        if patient.status != DmpStatus.OUVERT or store.find_entries(patient_matricule=patient.matricule):
            continue
        cx = f"{patient.matricule}^^^&{patient.oid}&ISO^NH"
        for index, (name, age, class_code) in enumerate(DEMO_DOCUMENTS):
            content = files[name]
            when = (moment - timedelta(days=age)).strftime("%Y%m%d%H%M%S")
            m = document_metadata(
                headers[name],
                ipp=None,
                ipp_authority_oid=None,
                size=len(content),
                hash_sha1=hashlib.sha1(content).hexdigest(),
                class_code=jdv.CLASS_CODES[class_code] if class_code else None,
            )
            m = dataclasses.replace(
                m,
                unique_id=_uid(patient.matricule, index, "doc"),
                patient_id=cx,
                source_patient_id=cx,
                creation_time=when,
                service_start_time=when,
                service_stop_time=when,
                entry_uuid=f"Document{index:02d}",
                repository_unique_id=None,
            )
            ss = SubmissionSetMetadata(
                unique_id=_uid(patient.matricule, index, "set"),
                source_id=_OID_ROOT,
                patient_id=cx,
                content_type_code=jdv.content_type_code_for_patient_class("O") or m.class_code,
                submission_time=when,
                authors=list(m.authors[:1]),
                title=m.title,
                entry_uuid="SubmissionSet01",
            )
            member = Association(
                ASSOC_HAS_MEMBER,
                "SubmissionSet01",
                m.entry_uuid or "",
                "",
                {"SubmissionSetStatus": ["Original"]},
            )
            store.register(
                ProvideAndRegister(ss, [SubmittedDocument(m, content)], [member]),
                dataclasses.replace(_SEEDER, patient_cx=cx),
                patient.matricule,
            )
            added += 1
    return added
