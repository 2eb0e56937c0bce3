"""The consultation rules of the DMP, apart from any transport: when the DMP is searched, and over which period."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from opensegur.documents.metadata import Coded, DocumentMetadata, XdsAuthor
from opensegur.flows.dmp_consult import Consulter, consent_refusal
from opensegur.flows.dmp_search import AlteredDocument, DmpSearch, open_dmp, open_document
from opensegur.transactions.td02 import Td02Response
from opensegur.transactions.xds import SIGNATURE_CLASS, RetrievedDocument

pytestmark = pytest.mark.requirement("DMP-CONSULT-AIR")

CONSULTER = Consulter("10000000017", "Dr Test", (Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),), "1750000028")
NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@dataclass
class _Port:
    answer: Td02Response
    docs: list[DocumentMetadata] = field(default_factory=list)
    searches: list[datetime | None] = field(default_factory=list)
    asked: list[dict[str, Any]] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)

    async def status(self, consulter: Consulter, patient_cx: str) -> Td02Response:
        return self.answer

    async def find_documents(
        self,
        consulter: Consulter,
        patient_cx: str,
        *,
        since: datetime | None,
        until: datetime | None = None,
        type_codes: Sequence[Coded] | None = None,
        event_codes: Sequence[Coded] | None = None,
        with_deprecated: bool = False,
    ) -> list[DocumentMetadata]:
        self.searches.append(since)
        self.asked.append(
            {"until": until, "types": type_codes, "events": event_codes, "deprecated": with_deprecated}
        )
        return self.docs

    async def get_document(
        self, consulter: Consulter, patient_cx: str, unique_id: str
    ) -> DocumentMetadata | None:
        return next((d for d in self.docs if d.unique_id == unique_id), None)

    async def retrieve(
        self, consulter: Consulter, patient_cx: str, repository_unique_id: str, unique_id: str
    ) -> RetrievedDocument:
        return RetrievedDocument(repository_unique_id, unique_id, "text/xml", self.contents[unique_id])


def _doc(created: str) -> DocumentMetadata:
    c = Coded("x", "y")
    return DocumentMetadata(created, "p", "text/xml", c, c, c, c, c, [c], created)


@pytest.mark.parametrize(
    "answer",
    [
        Td02Response("FERME"),
        Td02Response("INEXISTANT"),
        Td02Response("OUVERT", authorisation="NON_AUTORISE"),
        Td02Response("OUVERT", authorisation="INTERDIT"),
    ],
)
async def test_no_search_unless_the_dmp_is_open_and_the_professional_authorised(answer: Td02Response) -> None:
    port = _Port(answer)
    view = await open_dmp(port, CONSULTER, "cx", now=NOW)
    assert port.searches == [] and not view.searched and view.documents == []


async def test_the_first_search_covers_two_years_and_the_wider_one_the_whole_dmp() -> None:
    signature = replace(_doc("20260301"), class_code=SIGNATURE_CLASS)
    port = _Port(
        Td02Response("OUVERT", authorisation="AUTORISE"), [_doc("20250101"), _doc("20260301"), signature]
    )
    view = await open_dmp(port, CONSULTER, "cx", now=NOW)
    assert port.searches == [datetime(2024, 12, 5, 9, 0, tzinfo=UTC)] and view.since == port.searches[0]
    # Newest first, without the submission sets' signature entries.
    assert [d.creation_time for d in view.documents] == ["20260301", "20250101"]
    whole = await open_dmp(port, CONSULTER, "cx", search=DmpSearch(whole=True), now=NOW)
    assert port.searches[-1] is None and whole.since is None


async def test_documents_are_listed_by_the_acts_date_which_the_search_bounds() -> None:
    # Put online in 2026 for an act of 2019 (an old report fed late): listed after a 2025 act put online before.
    late = replace(_doc("20260301"), unique_id="late", service_start_time="20190610")
    recent = replace(_doc("20250101"), unique_id="recent", service_start_time="20250101")
    port = _Port(Td02Response("OUVERT", authorisation="AUTORISE"), [late, recent, _doc("20240101")])
    view = await open_dmp(port, CONSULTER, "cx", search=DmpSearch(whole=True), now=NOW)
    # Without a serviceStartTime, the creationTime stands for the act's date.
    assert [d.unique_id for d in view.documents] == ["recent", "20240101", "late"]


async def test_a_search_asks_the_dmp_for_type_and_dates_and_filters_author_and_visibility_here() -> None:
    reault = XdsAuthor("801^RÉAULT^Pierre", ("CHU-X Chirurgie viscérale",), specialties=("SM14^Chirurgie^x",))
    other = XdsAuthor("802^MARTIN^Anne", ("Laboratoire Pasteur",))
    masked = Coded("MASQUE_PS", "1.2.250.1.213.1.1.4.13")
    docs = [
        replace(_doc("20260301"), authors=[reault]),
        replace(_doc("20260302"), authors=[other], confidentiality_codes=[Coded("N", "z"), masked]),
    ]
    port = _Port(Td02Response("OUVERT", authorisation="AUTORISE"), docs)
    search = DmpSearch(
        versions=True,
        type_code="11488-4",
        act_from=date(2026, 1, 1),
        act_to=date(2026, 3, 31),
        author="reault",
    )
    assert search.narrowed
    view = await open_dmp(port, CONSULTER, "cx", search=search, now=NOW)
    asked = port.asked[-1]
    assert port.searches[-1] == datetime(2026, 1, 1, tzinfo=UTC) and not view.first_bound
    assert asked["until"] is not None and asked["until"].date() == date(2026, 3, 31) and asked["deprecated"]
    assert [t.code for t in asked["types"]] == ["11488-4"]
    assert [d.creation_time for d in view.documents] == ["20260301"]  # accents and case folded
    by_visibility = {
        v: [
            d.creation_time
            for d in (await open_dmp(port, CONSULTER, "cx", search=DmpSearch(visibility=v))).documents
        ]
        for v in ("normale", "MASQUE_PS")
    }
    assert by_visibility == {"normale": ["20260301"], "MASQUE_PS": ["20260302"]}
    # A criterion lifts the first search's two-year bound: the professional said what they want.
    assert port.searches[-1] is None


@pytest.mark.parametrize(
    ("status", "ins", "consent", "refused"),
    [
        ("QUAL", "279035121518989", {"consultation_consent": "IC"}, None),
        ("QUAL", "279035121518989", {"consultation_consent": "INC"}, "refusé"),
        ("QUAL", "279035121518989", {"consultation_consent": "NA"}, "non recueilli"),
        ("QUAL", "279035121518989", {}, "non recueilli"),
        ("VALI", "279035121518989", {"consultation_consent": "IC"}, "non qualifiée"),
        ("QUAL", None, {"consultation_consent": "IC"}, "non qualifiée"),
    ],
)
def test_consent_and_qualified_ins_come_first(
    status: str, ins: str | None, consent: dict[str, str], refused: str | None
) -> None:
    patient = SimpleNamespace(
        status=status, ins_matricule=ins, ins_oid="1.2.250.1.213.1.4.10", dmp_consent=consent
    )
    reason = consent_refusal(patient)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


async def test_documents_created_after_the_last_visit_are_new() -> None:
    port = _Port(Td02Response("OUVERT", authorisation="AUTORISE"), [_doc("20261201093000"), _doc("20261204")])
    view = await open_dmp(port, CONSULTER, "cx", last_visit=datetime(2026, 12, 2, tzinfo=UTC), now=NOW)
    assert [view.is_new(d) for d in view.documents] == [True, False]
    first = await open_dmp(port, CONSULTER, "cx", now=NOW)
    assert not any(first.is_new(d) for d in first.documents)


async def test_bris_de_glace_needs_no_authorisation_but_respects_the_patients_opposition() -> None:
    emergency = replace(CONSULTER, purpose_of_use="bris_de_glace")
    allowed = _Port(Td02Response("OUVERT", authorisation="NON_AUTORISE"), [_doc("20261201")])
    view = await open_dmp(allowed, emergency, "cx", now=NOW)
    assert view.searched and len(view.documents) == 1 and view.refusal is None
    opposed = _Port(Td02Response("OUVERT", authorisation="NON_AUTORISE", opposition_break_glass=True))
    view = await open_dmp(opposed, emergency, "cx", now=NOW)
    assert (
        not view.searched and opposed.searches == [] and view.refusal is not None and "opposé" in view.refusal
    )
    blocked = _Port(Td02Response("OUVERT", authorisation="INTERDIT"))
    assert not (await open_dmp(blocked, emergency, "cx", now=NOW)).searched


def test_in_an_emergency_only_the_qualified_ins_is_required() -> None:
    patient = SimpleNamespace(status="QUAL", ins_matricule="2790351215189", ins_oid="o", dmp_consent={})
    assert consent_refusal(patient) is not None and consent_refusal(patient, emergency=True) is None
    patient.status = "PROV"
    assert consent_refusal(patient, emergency=True) is not None


@pytest.mark.parametrize(
    ("sent", "why"),
    [(b"<ClinicalDocument/>!", "octets reçus"), (b"<ClinicalDocument/ ", "empreinte SHA-1")],
)
async def test_a_document_that_is_not_what_the_registry_lists_is_not_shown(sent: bytes, why: str) -> None:
    listed = b"<ClinicalDocument/>"
    entry = replace(
        _doc("20261201"),
        repository_unique_id="1.2.3",
        size=len(listed),
        hash_sha1=hashlib.sha1(listed).hexdigest(),
    )
    port = _Port(
        Td02Response("OUVERT", authorisation="AUTORISE"), [entry], contents={entry.unique_id: listed}
    )
    assert (await open_document(port, CONSULTER, "cx", entry.unique_id)).content == listed
    port.contents[entry.unique_id] = sent
    with pytest.raises(AlteredDocument, match=why):
        await open_document(port, CONSULTER, "cx", entry.unique_id)
    with pytest.raises(AlteredDocument, match="pas, ou plus"):
        await open_document(port, CONSULTER, "cx", "1.2.3.4.5")
