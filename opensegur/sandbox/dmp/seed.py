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
from opensegur.documents.metadata import Coded, DocumentMetadata, SubmissionSetMetadata
from opensegur.sandbox.dmp.patients import DmpPatient, DmpStatus
from opensegur.sandbox.dmp.store import Caller, DmpStore
from opensegur.transactions.ihe_ids import ASSOC_HAS_MEMBER
from opensegur.transactions.xds import Association, ProvideAndRegister, SubmittedDocument

__all__ = [
    "DEMO_DOCUMENTS",
    "IMAGING_REPORT",
    "DemoDocuments",
    "demo_file",
    "register_alone",
    "seed_demo_dmp",
]

_DIR = Path(__file__).with_name("demo_documents")
# The imaging report whose exam the sandbox's remote DRIMbox has images of.
IMAGING_REPORT = "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml"
# (file, age in days, class code when the ANS type→class table ASS_X04, not in the kit, leaves it open)
DEMO_DOCUMENTS: tuple[tuple[str, int, str | None], ...] = (
    ("BIO-CR-BIO_2024.01_TSH_1.xml", 20, None),
    (IMAGING_REPORT, 95, None),
    ("LDL-SES_2022.01.xml", 400, None),
    ("VAC-NOTE_2023.01.xml", 800, None),
    ("BIO-CR-BIO_2024.01_TSH_2.xml", 1100, None),
    ("VAC_2023.01.xml", 1500, "11"),  # Historique des vaccinations: a synthesis
)
# The imaging report whose exam the sandbox's remote DRIMbox has images of.
IMAGING_REPORT = "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml"
_OID_ROOT = "1.2.250.1.999.70"  # the sandbox's arc for what it generates
_SEEDER = Caller(
    "SANDBOX-SEED", "Bac à sable DMP, contenu de démonstration", "SANDBOX", "INDIRECTE", "normal", ""
)


def _uid(matricule: str, index: int, kind: str) -> str:
    # Deterministic, so a second start finds the document already there.
    number = int(hashlib.sha256(f"{matricule}/{index}/{kind}".encode()).hexdigest()[:12], 16)
    return f"{_OID_ROOT}.{1 if kind == 'doc' else 2}.{number}"


def register_alone(
    store: DmpStore,
    patient: DmpPatient,
    entry: DocumentMetadata,
    content: bytes,
    when: datetime,
    *,
    set_unique_id: str,
    source_id: str,
    caller: Caller,
    content_type_code: Coded,
) -> None:
    """``entry`` in ``patient``'s DMP, in a submission set of its own, about an act of ``when``, as its producer
    would have sent it."""
    at = when.strftime("%Y%m%d%H%M%S")
    entry = dataclasses.replace(
        entry,
        patient_id=patient.cx,
        source_patient_id=patient.cx,
        creation_time=at,
        service_start_time=at,
        service_stop_time=at,
        entry_uuid="Document01",
        repository_unique_id=None,
    )
    ss = SubmissionSetMetadata(
        unique_id=set_unique_id,
        source_id=source_id,
        patient_id=patient.cx,
        content_type_code=content_type_code,
        submission_time=at,
        authors=list(entry.authors[:1]),
        title=entry.title,
        entry_uuid="SubmissionSet01",
    )
    member = Association(
        ASSOC_HAS_MEMBER, "SubmissionSet01", "Document01", "", {"SubmissionSetStatus": ["Original"]}
    )
    store.register(
        ProvideAndRegister(ss, [SubmittedDocument(entry, content)], [member]),
        dataclasses.replace(caller, patient_cx=patient.cx),
        patient.matricule,
    )


def demo_file(name: str) -> bytes:
    return (_DIR / name).read_bytes()


class DemoDocuments:
    """The ANS example files, read and their CDA headers parsed once."""

    def __init__(self) -> None:
        self.files = {name: demo_file(name) for name, _age, _cls in DEMO_DOCUMENTS}
        self.headers = {name: parse_cda(raw)[1] for name, raw in self.files.items()}

    def register(
        self,
        store: DmpStore,
        patient: DmpPatient,
        index: int,
        when: datetime,
        *,
        unique_id: str,
        set_unique_id: str,
        source_id: str,
        caller: Caller = _SEEDER,
    ) -> str:
        """The ``index``-th demo document (modulo their number) in the patient's DMP, in a submission set of its
        own, about an act of ``when``, with the metadata a producer would derive from its header."""
        name, _age, class_code = DEMO_DOCUMENTS[index % len(DEMO_DOCUMENTS)]
        content = self.files[name]
        m = document_metadata(
            self.headers[name],
            ipp=None,
            ipp_authority_oid=None,
            size=len(content),
            hash_sha1=hashlib.sha1(content).hexdigest(),
            class_code=jdv.CLASS_CODES[class_code] if class_code else None,
        )
        register_alone(
            store,
            patient,
            dataclasses.replace(m, unique_id=unique_id),
            content,
            when,
            set_unique_id=set_unique_id,
            source_id=source_id,
            caller=caller,
            content_type_code=jdv.content_type_code_for_patient_class("O") or m.class_code,
        )
        return unique_id


def seed_demo_dmp(store: DmpStore, patients: list[DmpPatient], now: datetime | None = None) -> int:
    """Register the demo documents in the DMP of each open ``patients``' DMP that has none yet; the count added."""
    moment = now or datetime.now(UTC)
    documents = DemoDocuments()
    added = 0
    for patient in patients:
        if patient.status != DmpStatus.OUVERT or store.find_entries(patient_matricule=patient.matricule):
            continue
        for index, (_name, age, _cls) in enumerate(DEMO_DOCUMENTS):
            documents.register(
                store,
                patient,
                index,
                moment - timedelta(days=age),
                unique_id=_uid(patient.matricule, index, "doc"),
                set_unique_id=_uid(patient.matricule, index, "set"),
                source_id=_OID_ROOT,
            )
            added += 1
    return added
