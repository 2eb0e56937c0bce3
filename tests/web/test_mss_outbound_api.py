"""REST endpoints of the outbound MSSanté flow: appointment mails and sending an existing document."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from opensegur.store.models import AuditEvent, Document, Job, Mail, Patient
from opensegur.web.routes.mss_outbound import router
from tests.actors import EVERYONE, act_as
from tests.dmp.helpers import INS, adt, mdm, new_number, pid_segment, uid
from tests.flows.test_mss_outbound import PATIENT_BOX, Rig, body, rig, with_flags

__all__ = ["rig"]  # the fixture comes from the flow tests

OTHER_PS = "dr.martin@hopital-b.mssante.fr"


@pytest.fixture
def api(rig: Rig) -> httpx.AsyncClient:
    app = FastAPI()
    app.state.runtime = SimpleNamespace(db=rig.db, settings=SimpleNamespace(), workers=rig.pool)
    app.include_router(router)
    act_as(app, dataclasses.replace(EVERYONE, name="secretariat"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def patient_id(rig: Rig, ipp: str) -> int:
    with rig.db.session() as s:
        return s.scalars(select(Patient.id).where(Patient.identifiers.any(value=ipp))).one()


async def test_appointment_for_a_qualified_patient(rig: Rig, api: httpx.AsyncClient) -> None:
    pid = pid_segment(
        "IPP-API", ins=INS, status="QUAL", name="PAT-TROIS", first="DOMINIQUE", birth="19790328"
    )
    assert rig.send_hl7(adt("A28", "A28-API", pid))[0] == "AA"
    start = (datetime.now(UTC) + timedelta(days=5)).replace(tzinfo=None, microsecond=0)  # Paris wall clock
    r = await api.post(
        "/api/v1/mssante/appointments",
        json={
            "patient_id": patient_id(rig, "IPP-API"),
            "start": start.isoformat(),
            "place": "Consultations externes, porte 4",
            "preparation": "Apporter votre carte Vitale.",
        },
    )
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["recipient"] == PATIENT_BOX and queued["status"] == "pending"
    await rig.drain()
    [msg] = rig.operator.mails()
    assert str(msg["X-MSS-MES"]) == "FIN"
    text = body(msg)
    assert f"le {start:%d/%m/%Y} à {start:%H}h{start:%M}" in text
    assert "Lieu : Consultations externes, porte 4" in text and "Apporter votre carte Vitale." in text
    with rig.db.session() as s:
        assert s.get_one(Mail, queued["mail_id"]).status == "sent"
        [audit] = s.scalars(select(AuditEvent).where(AuditEvent.action == "mss_appointment")).all()
        assert audit.actor == "secretariat"


async def test_appointment_refusals(rig: Rig, api: httpx.AsyncClient) -> None:
    assert rig.send_hl7(adt("A28", "A28-P", pid_segment("IPP-PROV", status="PROV")))[0] == "AA"
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    r = await api.post(
        "/api/v1/mssante/appointments",
        json={"patient_id": patient_id(rig, "IPP-PROV"), "start": later, "place": "Imagerie"},
    )
    assert r.status_code == 409 and r.json()["detail"]["code"] == "INS_NOT_QUALIFIED"
    assert "non qualifiée" in r.json()["detail"]["message"]
    r = await api.post(
        "/api/v1/mssante/appointments", json={"patient_id": 999999, "start": later, "place": "X"}
    )
    assert r.status_code == 404
    r = await api.post("/api/v1/mssante/appointments", json={"patient_id": 1, "start": later, "place": ""})
    assert r.status_code == 422
    with rig.db.session() as s:
        assert s.scalar(select(Job).where(Job.kind == "mss.appointment")) is None


async def test_send_an_existing_document_to_chosen_recipients(rig: Rig, api: httpx.AsyncClient) -> None:
    n = new_number()
    # A document for the DMP only: nothing goes by mail until someone asks.
    raw = with_flags(mdm("initial", n), DESTMSSANTEPS=False)
    assert rig.send_hl7(raw)[0] == "AA"
    await rig.drain()
    assert rig.operator.sent == []
    with rig.db.session() as s:
        doc_id = s.scalars(select(Document.id).where(Document.unique_id == uid(n))).one()

    request = {
        "recipients": [OTHER_PS],
        "to_patient": True,
        "return_receipt": True,
        "body": "Pour information.",
    }
    r = await api.post(f"/api/v1/mssante/documents/{doc_id}/send", json=request)
    assert r.status_code == 202, r.text
    first = r.json()["deliveries"]
    assert {d["destination"]: d["recipients"] for d in first} == {
        "MSSANTE_PS": [OTHER_PS],
        "MSSANTE_PAT": [PATIENT_BOX],
    }
    again = await api.post(f"/api/v1/mssante/documents/{doc_id}/send", json=request)
    assert [d["id"] for d in again.json()["deliveries"]] == [d["id"] for d in first]
    await rig.drain()
    assert len(rig.operator.sent) == 2
    [to_ps] = rig.operator.to(OTHER_PS)
    assert body(to_ps).strip() == "Pour information." and str(to_ps["Subject"]).startswith("XDM/1.0/DDM+")
    assert rig.dpi.messages == []  # a manual send is not acknowledged to the DPI


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"recipients": ["pas une adresse"]}, 422, "ADDRESS_INVALID"),
        ({"recipients": [f"{INS}@patient.mssante.fr"]}, 422, "PATIENT_ADDRESS"),
        ({"recipients": []}, 422, "NO_RECIPIENT"),
    ],
)
async def test_document_send_refusals(
    rig: Rig, api: httpx.AsyncClient, payload: dict[str, object], status: int, code: str
) -> None:
    n = new_number()
    assert rig.send_hl7(with_flags(mdm("initial", n), DESTMSSANTEPS=False))[0] == "AA"
    await rig.drain()
    with rig.db.session() as s:
        doc_id = s.scalars(select(Document.id).where(Document.unique_id == uid(n))).one()
    r = await api.post(f"/api/v1/mssante/documents/{doc_id}/send", json=payload)
    assert r.status_code == status and r.json()["detail"]["code"] == code
    r = await api.post("/api/v1/mssante/documents/999999/send", json={"recipients": [OTHER_PS]})
    assert r.status_code == 404


async def test_openapi_describes_both_routes(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    assert {"/api/v1/mssante/appointments", "/api/v1/mssante/documents/{document_id}/send"} <= set(
        schema["paths"]
    )
    assert "AppointmentRequest" in schema["components"]["schemas"]
