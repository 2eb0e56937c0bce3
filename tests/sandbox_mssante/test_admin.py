"""The HTTP admin and inspection API of the MSSanté sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from opensegur.sandbox.mssante import ANS_EXAMPLE_MAILBOXES, MssOperator, create_mssante_router
from opensegur.transactions.mdn import parse_mdn
from opensegur.transactions.mss_mail import build_document_mail
from tests.mssante.conftest import CR_RADIO_V1, package
from tests.mssante.conftest import PATIENT as MAIL_PATIENT
from tests.sandbox_mssante.helpers import DOCTOR, DPI, PATIENT, PATIENT_BAD_KEY, imap, inbox, mail


@pytest.fixture
async def http(operator: MssOperator) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(create_mssante_router(operator))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox") as client:
        yield client


async def test_mailboxes_hold_the_ans_examples_and_the_hospital(http: httpx.AsyncClient) -> None:
    body = (await http.get("/mssante/mailboxes")).json()
    assert {a.lower() for a in ANS_EXAMPLE_MAILBOXES} <= set(body["mailboxes"])
    assert DPI in body["mailboxes"]
    assert body["patient_domain"] == "patient.mssante.fr"
    assert body["smtp"].startswith("127.0.0.1:") and body["imap"].startswith("127.0.0.1:")


async def test_deliver_then_inspect_a_document_mail(http: httpx.AsyncClient, operator: MssOperator) -> None:
    msg = build_document_mail(
        sender=DOCTOR,
        recipients=[DPI],
        patient=MAIL_PATIENT,
        document_label="CR d'imagerie médicale",
        xdm_zip=package(CR_RADIO_V1.read_bytes()),
        body_text="Bonjour.",
        nil="OPENSEGUR-TEST",
        ins_qualified=True,
        read_receipt_to=DOCTOR,
    )
    answer = await http.post("/mssante/_admin/deliver", params={"mailbox": DPI}, content=msg.as_bytes())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"mailbox": DPI, "folder": "INBOX", "uid": 1}

    view = (await http.get("/mssante/inspect", params={"mailbox": DPI})).json()
    assert set(view["folders"]) == {"INBOX", "Traites"}
    [item] = view["folders"]["INBOX"]
    assert item["uid"] == 1 and item["message_id"] == msg["Message-ID"]
    assert item["subject"].startswith("XDM/1.0/DDM+CR d'imagerie médicale")
    assert item["x_mss"]["X-MSS-INS"] == "O"
    assert "X-MSS-CODECDA" in item["x_mss"]
    assert item["attachments"] == ["IHE_XDM.ZIP"]
    assert item["flags"] == []
    assert item["disposition_notification_to"] == DOCTOR

    # Inspection is read-only; the admin "read" is the recipient opening it, hence the MDN.
    read = (await http.post("/mssante/_admin/read", params={"mailbox": DPI, "uid": 1})).json()
    assert read["mdn"] == "delivered"
    [mdn] = await asyncio.to_thread(inbox, operator, DOCTOR)
    assert parse_mdn(mdn).disposition == "displayed"
    view = (await http.get("/mssante/inspect", params={"mailbox": DPI, "folder": "INBOX"})).json()
    assert view["folders"]["INBOX"][0]["flags"] == ["\\Seen"]


async def test_deliver_to_a_patient_and_errors(http: httpx.AsyncClient) -> None:
    raw = mail(DOCTOR, [PATIENT]).as_bytes()
    assert (
        await http.post("/mssante/_admin/deliver", params={"mailbox": PATIENT}, content=raw)
    ).status_code == 200
    bad_key = await http.post("/mssante/_admin/deliver", params={"mailbox": PATIENT_BAD_KEY}, content=raw)
    assert bad_key.status_code == 404
    assert "inconnue" in bad_key.json()["detail"]
    empty = await http.post("/mssante/_admin/deliver", params={"mailbox": DPI}, content=b"")
    assert empty.status_code == 422
    no_from = await http.post(
        "/mssante/_admin/deliver", params={"mailbox": DPI}, content=b"Subject: x\r\n\r\nbody\r\n"
    )
    assert no_from.status_code == 422
    traversal = await http.post("/mssante/_admin/deliver", params={"mailbox": "../../etc@x.fr"}, content=raw)
    assert traversal.status_code == 422
    assert (await http.get("/mssante/inspect", params={"mailbox": "nobody@nowhere.fr"})).status_code == 404
    missing = await http.post("/mssante/_admin/read", params={"mailbox": DPI, "uid": 42})
    assert missing.status_code == 404


async def test_oversized_delivery_is_refused(http: httpx.AsyncClient, operator: MssOperator) -> None:
    operator.max_message_bytes = 1_000
    raw = mail(DOCTOR, [DPI]).as_bytes() + b"x" * 2_000
    answer = await http.post("/mssante/_admin/deliver", params={"mailbox": DPI}, content=raw)
    assert answer.status_code == 413


async def test_faults_are_set_listed_and_cleared(http: httpx.AsyncClient, operator: MssOperator) -> None:
    set_answer = await http.post(
        "/mssante/_admin/faults", json={"kind": "refuse_recipient", "recipient": DOCTOR}
    )
    assert set_answer.status_code == 200
    [fault] = (await http.get("/mssante/_admin/faults")).json()["faults"]
    assert (fault["kind"], fault["recipient"]) == ("refuse_recipient", DOCTOR)
    assert (await http.post("/mssante/_admin/faults", json={"kind": "explode"})).status_code == 422
    assert (
        await http.post("/mssante/_admin/faults", json={"kind": "bounce", "status": "2.0.0"})
    ).status_code == 422
    assert (
        await http.post("/mssante/_admin/faults", json={"kind": "delay", "delay_s": -1})
    ).status_code == 422
    assert (await http.delete("/mssante/_admin/faults")).json() == {"faults": []}
    assert operator.faults.active() == {}


async def test_a_delivery_wakes_imap_idle_through_the_admin_api(
    http: httpx.AsyncClient, operator: MssOperator
) -> None:
    import threading

    idling = threading.Event()

    def idle_client() -> list[tuple[int, bytes]]:
        with imap(operator, DPI) as client:
            client.select_folder("INBOX")
            client.idle()
            idling.set()
            responses = client.idle_check(timeout=10)
            client.idle_done()
            return responses

    waiting = asyncio.ensure_future(asyncio.to_thread(idle_client))
    assert await asyncio.to_thread(idling.wait, 10)
    raw = mail(DOCTOR, [DPI]).as_bytes()
    assert (
        await http.post("/mssante/_admin/deliver", params={"mailbox": DPI}, content=raw)
    ).status_code == 200
    assert (1, b"EXISTS") in await asyncio.wait_for(waiting, 15)
