"""Fault injection, read-only views, TD0.2 and the patient fixtures of the DMP sandbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import pytest

from opensegur.identity.ins import Ins
from opensegur.ops.demo import demo_dmp_patients, demo_patients
from opensegur.sandbox.dmp.patients import (
    CLOSED_NUMBER,
    NO_DMP_NUMBER,
    OPPOSED_NUMBER,
    DmpStatus,
    PatientRegistry,
    default_patients,
)
from opensegur.sandbox.insi import DEFAULT_IDENTITIES
from opensegur.security.pki import TestPki
from opensegur.transactions import xds
from opensegur.transactions.td02 import (
    ACTION_TD02,
    Td02Error,
    Td02Response,
    build_td02_request,
    build_td02_response,
    parse_td02_request,
    parse_td02_response,
)
from tests.sandbox_dmp.helpers import (
    PAT_TROIS,
    Soap,
    cx,
    iti41,
    post,
    query,
    read,
    registry_result,
    soap,
    soap_fault,
)

MATRICULE = PAT_TROIS[:15]


async def test_fail_after_commit_keeps_the_entry(client: httpx.AsyncClient, pki: TestPki) -> None:
    r = await client.post(
        "/dmp/_admin/faults", json={"fail_after_commit": True, "count": 1, "transactions": ["iti41"]}
    )
    assert r.status_code == 200
    sub = iti41(pki)
    resp = await post(client, "/dmp/iti41", sub.request)
    assert resp.status_code == 500 and b"after commit" in resp.content
    # What a client must do before re-sending: look the uniqueId up.
    found = await query(client, pki, xds.build_get_documents(unique_ids=[sub.documents[0].unique_id]))
    assert [d.entry_uuid for d in found.documents] == [sub.documents[0].entry_uuid]
    # Blind re-sending is caught as a duplicate.
    again = registry_result(await post(client, "/dmp/iti41", sub.request))
    assert again.errors[0].code == "XDSDuplicateUniqueIdInRegistry"
    calls = (await client.get("/dmp/_admin/calls")).json()
    assert [c.get("fail_after_commit") for c in calls if c["transaction"] == "iti41"][:1] == [True]


async def test_http_status_fault_is_limited_by_count_and_transaction(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    await client.post("/dmp/_admin/faults", json={"http_status": 503, "count": 1, "transactions": ["iti41"]})
    # Another transaction is not affected and does not consume the count.
    assert (await query(client, pki, xds.build_find_documents(PAT_TROIS))).status == "Success"
    sub = iti41(pki)
    assert (await post(client, "/dmp/iti41", sub.request)).status_code == 503
    found = await query(client, pki, xds.build_get_documents(unique_ids=[sub.documents[0].unique_id]))
    assert found.documents == []  # nothing committed
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok  # the count is spent


async def test_latency_soap_fault_and_timeout(client: httpx.AsyncClient, pki: TestPki) -> None:
    await client.post("/dmp/_admin/faults", json={"latency_ms": 300, "count": 1})
    started = time.monotonic()
    assert (await query(client, pki, xds.build_find_documents(PAT_TROIS))).status == "Success"
    assert time.monotonic() - started >= 0.3

    await client.post("/dmp/_admin/faults", json={"soap_fault": "DMP_INDISPONIBLE", "count": 1})
    resp = await post(client, "/dmp/iti18", soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), pki))
    assert resp.status_code == 500
    f = soap_fault(resp)
    assert f.code == "Receiver" and f.subcode == "DMP_INDISPONIBLE"

    await client.post("/dmp/_admin/faults", json={"timeout": True})
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), pki)
    resp = await post(client, "/dmp/iti18", req)  # the app's timeout sleep is 0.5 s in tests
    assert resp.status_code == 504

    # Clearing wakes a request stuck in an injected delay.
    await client.post("/dmp/_admin/faults", json={"latency_ms": 30000})
    pending = asyncio.create_task(post(client, "/dmp/iti18", req))
    await asyncio.sleep(0.05)
    assert (await client.delete("/dmp/_admin/faults")).json() == {"fault": None}
    started = time.monotonic()
    await asyncio.wait_for(pending, 5)
    assert time.monotonic() - started < 5


async def test_fault_config_is_validated(client: httpx.AsyncClient) -> None:
    assert (await client.post("/dmp/_admin/faults", json={"transactions": ["iti99"]})).status_code == 422
    assert (await client.post("/dmp/_admin/faults", json={"http_status": 200})).status_code == 422


async def test_inspect_and_access_history(client: httpx.AsyncClient, pki: TestPki) -> None:
    sub = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    await query(client, pki, xds.build_find_documents(PAT_TROIS))
    refused = await post(client, "/dmp/iti41", iti41(pki, sign=False).request)
    assert registry_result(refused).status == "Failure"

    view = (await client.get("/dmp/inspect", params={"patient": MATRICULE})).json()
    assert view["patient"] == MATRICULE and view["dmp"] == "OUVERT"
    doc = next(e for e in view["entries"] if e["uniqueId"] == sub.documents[0].unique_id)
    assert doc["entryUUID"] == sub.documents[0].entry_uuid
    assert doc["status"] == "Approved"
    assert doc["typeCode"]["code"] == "11490-0"
    assert doc["confidentialityCodes"] == ["N"]
    assert doc["mimeType"] == "text/xml" and doc["size"] == len(sub.contents[0])
    assert doc["submissionTime"] == sub.submission_set.submission_time
    assert sum(1 for e in view["entries"] if e["isSubmissionSetSignature"]) == 1

    history = (await client.get("/dmp/access-history", params={"patient": MATRICULE})).json()["accesses"]
    assert [(h["transaction"], h["outcome"]) for h in history] == [
        ("iti41", "Success"),
        ("iti18", "Success"),
        ("iti41", "XDSRegistryMetadataError"),
    ]
    assert history[0]["subject"]["id"] == "810000000001"
    assert history[0]["structure"] == pki.structure_id
    assert history[0]["authentication_mode"] == "INDIRECTE"
    assert dt.datetime.fromisoformat(history[0]["at"]).tzinfo is not None
    assert (await client.get("/dmp/inspect", params={"patient": "123"})).status_code == 422


def _td02_request(pki: TestPki, patient: str, **vihf: Any) -> Soap:
    return soap(ACTION_TD02, build_td02_request(patient), pki, patient=patient, **vihf)


@pytest.mark.parametrize(
    ("number", "status", "feeding", "authorisation"),
    [
        ("2790351215189", "OUVERT", False, "AUTORISE"),
        (CLOSED_NUMBER, "FERME", False, "AUTORISE"),
        (NO_DMP_NUMBER, "INEXISTANT", False, "NON_AUTORISE"),
        (OPPOSED_NUMBER, "OUVERT", True, "AUTORISE"),
    ],
)
async def test_td02(
    client: httpx.AsyncClient, pki: TestPki, number: str, status: str, feeding: bool, authorisation: str
) -> None:
    patient = cx(number)
    resp = await post(client, "/dmp/td02", _td02_request(pki, patient))
    assert resp.status_code == 200
    answer = parse_td02_response(read(resp)[0])
    assert answer.status == status
    assert answer.opposition_feeding is feeding
    assert answer.authorisation == authorisation
    if status == "FERME":
        assert answer.closing_date == dt.date(2024, 3, 15) and answer.closing_reason
    history = (await client.get("/dmp/access-history", params={"patient": patient[:15]})).json()["accesses"]
    assert [(h["transaction"], h["outcome"]) for h in history] == [("td02", status)]


async def test_td02_refuses_a_vihf_for_another_patient(client: httpx.AsyncClient, pki: TestPki) -> None:
    req = soap(ACTION_TD02, build_td02_request(cx(CLOSED_NUMBER)), pki, patient=PAT_TROIS)
    assert soap_fault(await post(client, "/dmp/td02", req)).subcode == "VIHF_INS"


def test_td02_round_trip_and_strict_parsing() -> None:
    r = Td02Response("FERME", dt.date(2024, 1, 2), "Décès", True, False, True, "INTERDIT", True, False)
    assert parse_td02_response(build_td02_response(r)) == r
    assert parse_td02_request(build_td02_request(PAT_TROIS)).ins_cx == PAT_TROIS
    with pytest.raises(Td02Error):
        Td02Response("OUVERTE")
    el = build_td02_response(Td02Response("OUVERT", authorisation="AUTORISE"))
    el.remove(el[-1])
    with pytest.raises(Td02Error, match="RattacheMonEspaceSante"):
        parse_td02_response(el)


def test_patient_fixtures_have_valid_keys_and_expected_states() -> None:
    patients = default_patients()
    for p in patients:
        Ins.parse(p.matricule, p.oid)  # raises on a bad key
    registry = PatientRegistry()
    assert registry.lookup(Ins.parse("279035121518989", "1.2.250.1.213.1.4.10")).status == DmpStatus.OUVERT
    for ident in DEFAULT_IDENTITIES:
        test_oid = {
            "1.2.250.1.213.1.4.8": "1.2.250.1.213.1.4.10",
            "1.2.250.1.213.1.4.9": "1.2.250.1.213.1.4.11",
        }
        for oid in {ident.oid, test_oid.get(ident.oid, ident.oid)}:
            found = registry.lookup(Ins.parse(ident.number13 + ident.key, oid))
            assert found.listed and found.status == DmpStatus.OUVERT
    closed = registry.lookup(Ins.parse(cx(CLOSED_NUMBER)[:15], "1.2.250.1.213.1.4.10"))
    assert closed.status == DmpStatus.FERME
    # The same fixture under the NIA test OID spelling keeps its state.
    assert (
        registry.lookup(Ins.parse(cx(CLOSED_NUMBER)[:15], "1.2.250.1.213.1.4.11")).status == DmpStatus.FERME
    )
    # Key formula, independently: 97 - (N mod 97), Corsica 2B → 18.
    assert Ins.parse("180032B02040123", "1.2.250.1.213.1.4.8").key == f"{97 - 1800318020401 % 97:02d}"


def test_every_demo_patient_with_an_ins_has_an_open_dmp_and_nobody_else_does() -> None:
    registry = PatientRegistry([*default_patients(), *demo_dmp_patients()])
    with_ins = [p for p in demo_patients() if p.matricule]
    assert len(with_ins) == 28  # 22 QUAL + 6 RECUP
    for p in with_ins:
        assert (
            registry.lookup(Ins.parse(p.matricule or "", "1.2.250.1.213.1.4.10")).status == DmpStatus.OUVERT
        )
    stranger = Ins.parse(cx("1551275123456")[:15], "1.2.250.1.213.1.4.10")
    assert registry.lookup(stranger).status == DmpStatus.INEXISTANT
    assert PatientRegistry().lookup(
        Ins.parse(with_ins[0].matricule or "", "1.2.250.1.213.1.4.10")
    ).status == (DmpStatus.INEXISTANT)
