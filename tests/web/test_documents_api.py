"""Documents API and pages on documents received through the real HL7 intake (ANS example MDM)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from opensegur.content.validation import CdaValidator
from opensegur.flows.dmp_feed import ProcessContext, process_document
from opensegur.flows.jobs import JobKind
from opensegur.server import Runtime
from opensegur.store.models import AuditEvent, Document, Job
from opensegur.transport.mllp import send_message
from tests.conftest import EXAMPLES
from tests.dmp.helpers import with_flags
from tests.test_server import chromium
from tests.web import test_rest_intake as shared
from tests.web.test_rest_intake import Offline, _wait_status, running

# The fixtures of the REST intake tests, registered here too (pytest finds fixtures by module attribute).
offline = shared.offline
client = shared.client
schematron_cache = shared.schematron_cache

MDM_INITIAL = (
    EXAMPLES
    / "Vague 2"
    / "Trans_Doc-CDA-HL7V2"
    / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
    / "MDM"
    / "Transmission initiale MDM"
    / "message_MDM_CR_Radio_INIT_N1_Base64.er7"
)
EXAMPLE_INS = "279035121518989"
_numbers = itertools.count()


def numbered(raw: bytes) -> bytes:
    """The ANS examples all carry MSH-10 = 015: a DPI numbers its messages, so each send gets its own.

    The example also asks for an MSSanté copy: these tests follow the DMP delivery alone."""
    fields = raw.split(b"|", 10)
    fields[9] = f"DOC{next(_numbers)}-{time.time_ns()}".encode()
    return with_flags(b"|".join(fields), DESTMSSANTEPS=False, DESTMSSANTEPAT=False)


def received_by_hl7(offline: Offline) -> int:
    result = offline.intake.handle(numbered(MDM_INITIAL.read_bytes()))
    assert result.ack_code == "AA", result.ack
    with offline.db.session() as s:
        doc_id = s.scalar(select(Document.id).where(Document.source == "hl7").order_by(Document.id.desc()))
        assert doc_id is not None
        return doc_id


def audits(offline: Offline, action: str) -> list[AuditEvent]:
    with offline.db.session() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))
        s.expunge_all()
        return rows


def process_jobs(offline: Offline, doc_id: int) -> int:
    with offline.db.session() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.kind == JobKind.PROCESS, Job.key.like(f"{JobKind.PROCESS}:{doc_id}%"))
            )
            or 0
        )


# ---- offline: deterministic states ---------------------------------------------------------------------------


async def test_list_and_detail_of_an_hl7_document(offline: Offline, client: httpx.AsyncClient) -> None:
    doc_id = received_by_hl7(offline)
    listed = (await client.get("/api/v1/documents")).json()
    assert listed["total"] == 1 and listed["counts"]["received"] == 1 and listed["counts"]["sent"] == 0
    item = listed["items"][0]
    assert item["id"] == doc_id and item["source"] == "hl7" and item["kind"] == "initial"
    assert item["uniqueId"] == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert item["type"]["code"] == "18748-4"
    assert item["status"] == {"code": "received", "label": "Reçu"} and item["held"] is False
    assert item["first_send"]["label"] == "Premier envoi" and item["first_send"]["first_send"] is True
    assert item["patient"]["name"].startswith("PAT-TROIS") and item["site"]["name"].startswith("CHU-X")
    assert item["deliveries"] == [] and item["created"].endswith("+00:00")
    # Filters: status, site, patient and free text.
    assert (await client.get("/api/v1/documents", params={"status": "sent"})).json()["total"] == 0
    assert (await client.get("/api/v1/documents", params={"q": "pat-trois"})).json()["total"] == 1
    assert (await client.get("/api/v1/documents", params={"q": "inconnu"})).json()["total"] == 0
    other_site = item["site"]["id"] + 1
    assert (await client.get("/api/v1/documents", params={"site": other_site})).json()["total"] == 0
    by_patient = await client.get("/api/v1/documents", params={"patient_id": item["patient"]["id"]})
    assert by_patient.json()["total"] == 1
    assert audits(offline, "list_documents")[0].detail == {"patients": [item["patient"]["id"]]}

    detail = (await client.get(f"/api/v1/documents/{doc_id}")).json()
    assert [s["step"] for s in detail["timeline"]] == [
        "received",
        "validated",
        "waiting_identity",
        "sent",
        "acknowledged",
    ]
    assert detail["timeline"][0]["state"] == "current"
    assert detail["findings"] == [] and detail["exchanges"] == [] and detail["flags"]["dest_dmp"] is True
    assert [a.patient_id for a in audits(offline, "read_document_status")] == [item["patient"]["id"]]
    assert (await client.get("/api/v1/documents/999999")).status_code == 404


async def test_content_is_the_stored_cda_and_is_audited(offline: Offline, client: httpx.AsyncClient) -> None:
    doc_id = received_by_hl7(offline)
    r = await client.get(f"/api/v1/documents/{doc_id}/content")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert b"<ClinicalDocument" in r.content and b"18748-4" in r.content
    read = audits(offline, "read_document")
    assert len(read) == 1 and read[0].detail["document_id"] == doc_id and read[0].patient_id is not None


async def test_hold_release_retry_with_conflicts(
    offline: Offline, client: httpx.AsyncClient, schematron_cache: Path
) -> None:
    doc_id = received_by_hl7(offline)
    url = f"/api/v1/documents/{doc_id}"
    r = await client.post(f"{url}/hold")
    assert r.status_code == 200 and r.json()["held"] is True and r.json()["status"]["code"] == "held"
    again = await client.post(f"{url}/hold")
    assert again.status_code == 409 and again.json()["detail"] == "Document déjà retenu"
    retry = await client.post(f"{url}/retry")
    assert retry.status_code == 409 and "Aucun envoi en échec" in retry.json()["detail"]

    before = process_jobs(offline, doc_id)
    r = await client.post(f"{url}/release")
    assert r.status_code == 200 and r.json() == {
        "id": doc_id,
        "status": {"code": "received", "label": "Reçu"},
        "held": False,
    }
    assert process_jobs(offline, doc_id) == before + 1  # processing starts over from validation
    assert offline.workers.count >= 1
    not_held = await client.post(f"{url}/release")
    assert not_held.status_code == 409 and "n'est pas retenu" in not_held.json()["detail"]

    # The validation and the gates run as the worker would; a hold now lands on the planned delivery.
    ctx = ProcessContext(offline.db, CdaValidator(schematron_cache / "schematron"))
    status = await asyncio.to_thread(process_document, ctx, doc_id)
    assert status in ("validated", "waiting_identity"), status
    assert (await client.post(f"{url}/hold")).status_code == 200
    detail = (await client.get(url)).json()
    if detail["deliveries"]:
        assert [d["status"] for d in detail["deliveries"]] == ["held"]
    waiting = [s for s in detail["timeline"] if s["state"] == "waiting"]
    assert len(waiting) == 1 and waiting[0]["note"].startswith("Retenu par")

    with offline.db.session() as s:
        s.get_one(Document, doc_id).status = "sent"
        s.get_one(Document, doc_id).held = False
    late = await client.post(f"{url}/hold")
    assert late.status_code == 409 and "Envoyé" in late.json()["detail"]
    assert (await client.post("/api/v1/documents/424242/hold")).status_code == 404


async def test_pages_render_in_french_and_are_audited(offline: Offline, client: httpx.AsyncClient) -> None:
    doc_id = received_by_hl7(offline)
    page = await client.get("/documents")
    assert page.status_code == 200
    text = page.text
    for expected in (
        "Documents — flux vers le DMP",
        "Répartition par statut",
        "Reçu",
        "Premier envoi",
        "Filtrer",
    ):
        assert expected in text, expected
    assert 'href="/documents"' in text  # header link
    assert text.count("<rect") == 1  # one bar per status present: only "Reçu"
    assert "PAT-TROIS" in text and "· HL7 (DPI)" in text
    filtered = await client.get("/documents", params={"statut": "sent"})
    assert "Aucun document ne correspond." in filtered.text

    page = await client.get(f"/documents/{doc_id}")
    assert page.status_code == 200
    for expected in (
        "Parcours du document",
        'id="frise"',
        "En attente d&#39;identité",
        "Accusé",
        "Premier envoi",
        "Retenir",
        "Contrôles de conformité",
        'href="/identites/',
    ):
        assert expected in page.text, expected
    assert "Libérer" not in page.text and "Relancer" not in page.text
    assert len(audits(offline, "read_document_status")) == 1

    r = await client.post(f"/documents/{doc_id}/retenir")
    assert r.status_code == 303 and r.headers["location"] == f"/documents/{doc_id}"
    shown = await client.get(r.headers["location"])
    assert "Document retenu" in shown.text and "Libérer" in shown.text
    refused = await client.post(f"/documents/{doc_id}/relancer", follow_redirects=True)
    assert "Aucun envoi en échec à relancer" in refused.text
    released = await client.post(f"/documents/{doc_id}/liberer", follow_redirects=True)
    assert "Document libéré" in released.text
    assert (await client.get("/documents/999999")).status_code == 404


async def test_openapi_lists_the_documents_routes(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/api/v1/documents",
        "/api/v1/documents/{document_id}",
        "/api/v1/documents/{document_id}/hold",
        "/api/v1/documents/{document_id}/release",
        "/api/v1/documents/{document_id}/retry",
        "/api/v1/documents/{document_id}/content",
    ):
        assert path in paths, path
    intake = paths["/api/v1/documents"]["post"]
    assert intake["tags"] == ["documents"]
    assert set(intake["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {
        "pdf",
        "metadata",
    }
    assert "/documents" not in paths  # pages stay out of the API schema


# ---- end to end: DMP outage, retry, and the flow view in a real browser --------------------------------------


async def _mllp(rt: Runtime, raw: bytes) -> str:
    ack = await send_message("127.0.0.1", rt.mllp_port or 0, raw, timeout=60)
    code = re.search(rb"MSA\|(\w\w)", ack)
    assert code is not None, ack
    return code.group(1).decode()


async def _set_fault(rt: Runtime, **config: Any) -> None:
    async with httpx.AsyncClient() as c:
        (await c.post(f"{rt.endpoints['dmp']['admin']}/faults", json=config)).raise_for_status()


async def test_dmp_outage_then_retry_and_browser_view(
    tmp_path: Path,
    schematron_cache: Path,  # noqa: F811
) -> None:
    # One attempt per job and no outage waited out: the outage leaves the delivery failed until someone asks for
    # a retry.
    async with (
        running(tmp_path, schematron_cache, job_max_attempts=1, job_outage_max_s=0) as rt,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", timeout=60) as http,
    ):
        await _set_fault(rt, http_status=503, transactions=["iti41", "iti18"])
        assert await _mllp(rt, numbered(MDM_INITIAL.read_bytes())) == "AA"
        doc_id = (await http.get("/api/v1/documents", params={"q": "71024000081"})).json()["items"][0]["id"]
        url = f"/api/v1/documents/{doc_id}"
        failed = await _wait_status(http, url, {"error", "sent", "rejected"})
        assert failed["status"]["code"] == "error", failed
        # Its one attempt spent, the job is given up: the delivery no longer says a new try is planned.
        for _ in range(200):
            if [d["status"] for d in failed["deliveries"]] == ["dead"]:
                break
            await asyncio.sleep(0.05)
            failed = (await http.get(url)).json()
        assert [d["status"] for d in failed["deliveries"]] == ["dead"]
        assert failed["deliveries"][0]["error"]["code"] == "DMP_UNAVAILABLE"
        steps = {s["step"]: s for s in failed["timeline"]}
        assert steps["sent"]["state"] == "error" and "DMP_UNAVAILABLE" in steps["sent"]["note"]
        assert any(e["outcome"] == "retry" for e in failed["exchanges"])
        assert (await http.post(f"{url}/hold")).status_code == 200
        assert (await http.post(f"{url}/release")).status_code == 200

        failed = await _wait_status(http, url, {"error", "sent", "acknowledged"})
        assert failed["status"]["code"] == "error"
        async with httpx.AsyncClient() as c:
            (await c.delete(f"{rt.endpoints['dmp']['admin']}/faults")).raise_for_status()
        r = await http.post(f"{url}/retry")
        assert r.status_code == 200 and r.json()["retried"] == 1
        sent = await _wait_status(http, url, {"sent", "acknowledged"})
        assert [d["status"] for d in sent["deliveries"]] == ["delivered"]
        async with httpx.AsyncClient() as c:
            inspect = await c.get(rt.endpoints["dmp"]["inspect"], params={"patient": EXAMPLE_INS})
        assert any(e["uniqueId"].endswith("71024000081") for e in inspect.json()["entries"])

        dom = await asyncio.to_thread(
            chromium, tmp_path, "--dump-dom", f"http://127.0.0.1:{rt.http_port}/documents/{doc_id}"
        )
        assert 'lang="fr"' in dom and 'id="frise"' in dom
        assert dom.count('data-etape="') == 5
        assert "Reçu" in dom and "Envoyé" in dom and "Premier envoi" in dom
        assert 'class="done" data-etape="sent"' in dom
