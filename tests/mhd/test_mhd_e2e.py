"""ITI-65 end to end: the in-process Platform with the sandbox DMP receives what a FHIR client pushed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from opensegur.server import Runtime
from tests.dmp.helpers import adt, pid_segment, send_raw
from tests.mhd.helpers import (
    CDA_V1,
    CDA_V2,
    EXAMPLE_CDA_ID,
    EXAMPLE_CDA_V2_ID,
    EXAMPLE_INS,
    FHIR_JSON,
    app_for,
    bundle,
    cda_document,
    document,
    index_of,
    ipp_subject,
)
from tests.web import test_rest_intake as shared
from tests.web.test_rest_intake import _dmp_entries, _wait_status, make_pdf, qualified_patient, running

schematron_cache = shared.schematron_cache


async def _provide(http: httpx.AsyncClient, b: dict[str, Any]) -> int:
    r = await http.post("/fhir", content=json.dumps(b), headers={"content-type": FHIR_JSON})
    assert r.status_code == 200, r.text
    location = r.json()["entry"][index_of(b, "DocumentReference")]["response"]["location"]
    return int(location.removeprefix("DocumentReference/"))


async def _sent(http: httpx.AsyncClient, doc_id: int) -> dict[str, Any]:
    detail = await _wait_status(http, f"/api/v1/documents/{doc_id}", {"sent", "rejected", "error"})
    assert detail["status"]["code"] == "sent", detail
    assert [d["status"] for d in detail["deliveries"]] == ["delivered"]
    return detail


def _client(rt: Runtime) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(rt)), base_url="http://opensegur.test")


async def test_pdf_reaches_the_sandbox_dmp_then_is_replaced(tmp_path: Path, schematron_cache: Path) -> None:
    async with running(tmp_path, schematron_cache) as rt, _client(rt) as http:
        patient = qualified_patient(rt.db)
        subject = ipp_subject(patient, "1.2.250.1.999.1.1.2")  # the demo site HSV's IPP authority
        first = await _provide(http, bundle(document(make_pdf(), subject)))
        detail = await _sent(http, first)
        assert detail["source"] == "mhd" and detail["findings"] == []
        mine = [e for e in await _dmp_entries(rt, patient["ins"]) if e["uniqueId"] == detail["uniqueId"]]
        assert len(mine) == 1 and mine[0]["status"] == "Approved"
        assert mine[0]["typeCode"]["code"] == "11490-0"
        ref = (await http.get(f"/fhir/DocumentReference/{first}")).json()
        assert ref["status"] == "current" and ref["description"] == "Flux OpenSégur : Envoyé"

        replaces = [{"code": "replaces", "target": {"reference": f"DocumentReference/{first}"}}]
        second = await _provide(http, bundle(document(make_pdf(2), subject, relates_to=replaces)))
        new = await _sent(http, second)
        assert new["kind"] == "replacement" and new["replaces"] == detail["uniqueId"] and new["version"] == 2
        by_id = {e["uniqueId"]: e["status"] for e in await _dmp_entries(rt, patient["ins"])}
        assert by_id[detail["uniqueId"]] == "Deprecated" and by_id[new["uniqueId"]] == "Approved"
        assert (await http.get(f"/fhir/DocumentReference/{first}")).json()["status"] == "superseded"
        assert (await http.get(f"/fhir/DocumentReference/{second}")).json()["relatesTo"] == [
            {"code": "replaces", "target": {"identifier": ref["masterIdentifier"]}}
        ]


async def test_ans_example_cda_reaches_the_sandbox_dmp_then_its_replacement(
    tmp_path: Path, schematron_cache: Path
) -> None:
    async with running(tmp_path, schematron_cache) as rt, _client(rt) as http:
        pid = pid_segment(
            "405660",
            ins=EXAMPLE_INS,
            status="QUAL",
            name="PAT-TROIS",
            first="DOMINIQUE",
            birth="19790328",
            cog="63220",
        )
        assert (await send_raw(rt, adt("A28", "A28-MHD", pid))).code == "AA"
        first = await _provide(http, bundle(cda_document(CDA_V1.read_bytes())))
        detail = await _sent(http, first)
        assert detail["uniqueId"] == EXAMPLE_CDA_ID and detail["source"] == "mhd"
        [entry] = [e for e in await _dmp_entries(rt, EXAMPLE_INS) if e["uniqueId"] == EXAMPLE_CDA_ID]
        assert entry["status"] == "Approved" and entry["typeCode"]["code"] == "18748-4"

        replaces = [
            {
                "code": "replaces",
                "target": {
                    "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{EXAMPLE_CDA_ID}"}
                },
            }
        ]
        v2 = cda_document(CDA_V2.read_bytes(), master=f"urn:oid:{EXAMPLE_CDA_V2_ID}", relates_to=replaces)
        second = await _provide(http, bundle(v2))
        assert (await _sent(http, second))["kind"] == "replacement"
        by_id = {e["uniqueId"]: e["status"] for e in await _dmp_entries(rt, EXAMPLE_INS)}
        assert by_id == {EXAMPLE_CDA_ID: "Deprecated", EXAMPLE_CDA_V2_ID: "Approved"}
        ref = (await http.get(f"/fhir/DocumentReference/{first}")).json()
        assert ref["status"] == "superseded"
        assert ref["masterIdentifier"] == {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:{EXAMPLE_CDA_ID}",
        }
        assert "identifier" not in ref  # the hospital's id is the document's own
