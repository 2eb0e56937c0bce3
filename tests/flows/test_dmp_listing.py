"""The kept list of a patient's DMP and its delta refresh (PDSM4DMP rule 2), apart from any transport: what
FindSubmissionSets, GetAssociations and GetDocumentsAndAssociations answer is applied to the kept list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from opensegur.documents.metadata import Coded, DocumentMetadata
from opensegur.flows.dmp_consult import Consulter
from opensegur.flows.dmp_listing import (
    BATCH,
    COMPLETE_SEARCH_AFTER,
    ORIGIN_ADMISSION,
    KeptList,
    load_list,
    refresh,
    save_list,
)
from opensegur.flows.dmp_search import open_dmp
from opensegur.store.db import Database
from opensegur.store.models import Patient
from opensegur.transactions.ihe_ids import ASSOC_HAS_MEMBER, ASSOC_RPLC, ASSOC_UPDATE_AVAILABILITY
from opensegur.transactions.td02 import Td02Response
from opensegur.transactions.xds import Association
from tests.flows.helpers import with_demo

pytestmark = pytest.mark.requirement("DMP-CONSULT-AIR")

CONSULTER = Consulter("10000000017", "Dr Test", (Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),), "1750000028")
NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=730)


def _doc(n: int, act: str = "20260101", **changes: object) -> DocumentMetadata:
    c = Coded("x", "y")
    doc = DocumentMetadata(f"1.2.3.{n}", "p", "text/xml", c, c, c, c, c, [c], act, title=f"doc {n}")
    return replace(
        doc, entry_uuid=f"urn:uuid:e{n}", logical_id=f"urn:uuid:l{n}", service_start_time=act, **changes
    )


@dataclass
class _DeltaPort:
    """A DMP that answers the three queries of a delta from ``sets`` (set id → member entries) and ``docs``."""

    sets: dict[str, list[str]] = field(default_factory=dict)
    docs: dict[str, DocumentMetadata] = field(default_factory=dict)
    extra: list[Association] = field(default_factory=list)  # RPLC, status updates
    asked: list[tuple[str, int]] = field(default_factory=list)
    searched: int = 0

    async def status(self, consulter: Consulter, patient_cx: str) -> Td02Response:
        return Td02Response("OUVERT", authorisation="AUTORISE")

    async def find_documents(
        self, consulter: Consulter, patient_cx: str, **_: object
    ) -> list[DocumentMetadata]:
        self.searched += 1
        return list(self.docs.values())

    async def find_submission_sets(
        self, consulter: Consulter, patient_cx: str, *, since: datetime
    ) -> list[str]:
        self.asked.append(("sets", 0))
        return list(self.sets)

    async def get_associations(
        self, consulter: Consulter, patient_cx: str, uuids: Sequence[str]
    ) -> list[Association]:
        self.asked.append(("associations", len(uuids)))
        found = [Association(ASSOC_HAS_MEMBER, s, m) for s in uuids for m in self.sets[s]]
        return found + [a for a in self.extra if a.source in uuids]

    async def get_documents_and_associations(
        self, consulter: Consulter, patient_cx: str, uuids: Sequence[str]
    ) -> tuple[list[DocumentMetadata], list[Association]]:
        self.asked.append(("documents", len(uuids)))
        return [self.docs[u] for u in uuids if u in self.docs], [a for a in self.extra if a.source in uuids]


def _kept(*docs: DocumentMetadata, age: timedelta = timedelta(hours=1)) -> KeptList:
    return KeptList(NOW - age, NOW - age, SINCE, ORIGIN_ADMISSION, tuple(docs))


async def test_new_replaced_updated_and_deleted_entries_are_applied_to_the_kept_list() -> None:
    kept_docs = [_doc(1), _doc(2), _doc(3), _doc(4)]
    corrected = _doc(11)
    new_version = replace(_doc(2), entry_uuid="urn:uuid:e2v2", confidentiality_codes=[Coded("N", "z")])
    deleted = replace(_doc(3), availability_status="Deleted")
    port = _DeltaPort(
        sets={
            "ss-new": ["urn:uuid:e10"],
            "ss-rplc": ["urn:uuid:e11"],
            "ss-vis": ["urn:uuid:e2v2"],
            "ss-del": [],
        },
        docs={
            "urn:uuid:e10": _doc(10),
            "urn:uuid:e11": corrected,
            "urn:uuid:e2v2": new_version,
            "urn:uuid:e3": deleted,
        },
        extra=[
            Association(ASSOC_RPLC, "urn:uuid:e11", "urn:uuid:e1"),
            Association(ASSOC_UPDATE_AVAILABILITY, "ss-del", "urn:uuid:e3"),
        ],
    )
    got = await refresh(port, CONSULTER, "cx", _kept(*kept_docs), SINCE)
    assert sorted(d.entry_uuid or "" for d in got.documents) == [
        "urn:uuid:e10",
        "urn:uuid:e11",
        "urn:uuid:e2v2",
        "urn:uuid:e4",
    ]
    assert (got.added, got.withdrawn) == (3, 3)


async def test_the_delta_asks_in_batches_of_twenty_and_keeps_the_period() -> None:
    members = {f"ss{i}": [f"urn:uuid:e{100 + i}"] for i in range(BATCH + 5)}
    docs = {f"urn:uuid:e{100 + i}": _doc(100 + i) for i in range(BATCH + 5)}
    docs["urn:uuid:e100"] = _doc(100, act="20190101")  # an old act put online now: outside the two years
    port = _DeltaPort(sets=members, docs=docs)
    old = _doc(1, act="20241201")  # listed then, now more than two years ago
    got = await refresh(port, CONSULTER, "cx", _kept(old, _doc(2)), SINCE)
    assert port.asked == [
        ("sets", 0),
        ("associations", 20),
        ("associations", 5),
        ("documents", 20),
        ("documents", 5),
    ]
    ids = {d.entry_uuid for d in got.documents}
    assert "urn:uuid:e100" not in ids and "urn:uuid:e1" not in ids and len(ids) == BATCH + 5
    assert got.withdrawn == 1


async def test_open_dmp_refreshes_a_fresh_kept_list_and_searches_again_past_the_bound() -> None:
    port = _DeltaPort(sets={"ss": ["urn:uuid:e9"]}, docs={"urn:uuid:e9": _doc(9)})
    view = await open_dmp(port, CONSULTER, "cx", kept=_kept(_doc(1)), now=NOW)
    assert port.searched == 0 and view.refreshed is not None and view.kept is not None
    assert [d.entry_uuid for d in view.documents] == ["urn:uuid:e1", "urn:uuid:e9"]
    assert view.to_keep is not None and view.to_keep.fetched_at == NOW and view.to_keep.searched_at < NOW
    stale = _kept(_doc(1), age=COMPLETE_SEARCH_AFTER + timedelta(minutes=1))
    again = await open_dmp(port, CONSULTER, "cx", kept=stale, now=NOW)
    assert port.searched == 1 and again.kept is None and again.to_keep is not None
    assert again.to_keep.searched_at == NOW
    # An emergency mode may show what the normal one hides: its list is neither used nor kept.
    urgent = await open_dmp(
        port, replace(CONSULTER, purpose_of_use="bris_de_glace"), "cx", kept=_kept(_doc(1)), now=NOW
    )
    assert urgent.kept is None and urgent.to_keep is None and port.searched == 2


def test_a_kept_list_is_one_per_patient_and_professional(db: Database) -> None:
    with_demo(db)
    with db.session() as s:
        patient_id = s.scalars(select(Patient.id)).first()
        assert patient_id is not None
        save_list(s, patient_id, CONSULTER.rpps, _kept(_doc(1), _doc(2)))
        save_list(s, patient_id, CONSULTER.rpps, _kept(_doc(3)))
        save_list(s, patient_id, "10000000025", _kept(_doc(4)))
    with db.session() as s:
        mine = load_list(s, patient_id, CONSULTER.rpps)
        assert mine is not None and [d.title for d in mine.documents] == ["doc 3"]
        assert mine.fetched_at == NOW - timedelta(hours=1) and mine.origin == ORIGIN_ADMISSION
        assert mine.documents[0].logical_id == "urn:uuid:l3"
        assert load_list(s, patient_id, "10000000033") is None
        # A refresh that found nothing moves the dates only; the documents stay as written.
        save_list(s, patient_id, CONSULTER.rpps, replace(_kept(_doc(9)), fetched_at=NOW), same_documents=True)
    with db.session() as s:
        touched = load_list(s, patient_id, CONSULTER.rpps)
        assert (
            touched is not None
            and touched.fetched_at == NOW
            and [d.title for d in touched.documents] == ["doc 3"]
        )
        # A list too old to be refreshed is deleted when another is kept: nothing holds it longer than it serves.
        later = replace(
            _kept(_doc(5)), fetched_at=NOW + COMPLETE_SEARCH_AFTER, searched_at=NOW + COMPLETE_SEARCH_AFTER
        )
        save_list(s, patient_id, "10000000033", later)
    with db.session() as s:
        assert (
            load_list(s, patient_id, CONSULTER.rpps) is None
            and load_list(s, patient_id, "10000000025") is None
        )
        assert load_list(s, patient_id, "10000000033") is not None
