"""Flow: the carnet de vaccination, read from the patient's vaccination documents in the DMP."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from opensegur.content import jdv
from opensegur.content.cda import CdaError, parse_cda
from opensegur.content.vaccination import TYPE_CODES as VACCINATION_TYPES
from opensegur.content.vaccination import Vaccination, vaccinations
from opensegur.documents.metadata import DocumentMetadata
from opensegur.flows.dmp_consult import Consulter, DmpConsultPort


@dataclass
class VaccinationRecord:
    """The carnet de vaccination: every vaccination of the patient's vaccination documents, newest first."""

    vaccinations: list[Vaccination] = field(default_factory=list)
    sources: list[DocumentMetadata] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # titles of the documents that could not be read


async def vaccination_record(port: DmpConsultPort, consulter: Consulter, cx: str) -> VaccinationRecord:
    """FindDocuments on the vaccination types without a date bound (an "Historique des vaccinations" often has an
    old date, PDSM4DMP), then each document retrieved and read. The same vaccination written in two documents (the
    history and a note) is shown once."""
    types = [jdv.load_value_set(jdv.JDV_TYPE_CODE).codes[code] for code in VACCINATION_TYPES]
    record = VaccinationRecord()
    record.sources = await port.find_documents(consulter, cx, since=None, type_codes=types)
    seen: set[tuple[str, str]] = set()
    for doc in record.sources:
        if not doc.repository_unique_id:
            continue
        retrieved = await port.retrieve(consulter, cx, doc.repository_unique_id, doc.unique_id)
        try:
            if doc.hash_sha1 and doc.hash_sha1.lower() != hashlib.sha1(retrieved.content).hexdigest():
                raise CdaError("DMP_HASH", "empreinte différente de celle enregistrée dans le DMP")
            root, _header = await asyncio.to_thread(parse_cda, retrieved.content)
        except CdaError:
            record.unreadable.append(doc.title or doc.unique_id)
            continue
        for v in vaccinations(root):
            # One injection: its day and its lot (the vaccine's name differs between a history and a note).
            key = (v.date[:8], v.lot or v.vaccine.casefold())
            if key not in seen:
                seen.add(key)
                record.vaccinations.append(v)
    record.vaccinations.sort(key=lambda v: v.sort_key, reverse=True)
    return record
