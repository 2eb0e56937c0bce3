"""HTTP edge of the outbound MSSanté flow: appointment mails to patients, existing documents to chosen recipients.

Rules live in ``flows.mss_outbound``; this module validates the request, maps the flow's refusals to HTTP statuses
and wakes the workers. Mails leave from a job, so both routes answer 202 with what was queued.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select

from opensegur.flows.mss_outbound import MssOutboundError, request_document_send, schedule_appointment
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store.models import Document, Mail
from opensegur.web.deps import Rt, allow, ensure_patient

router = APIRouter(tags=["mssante"])

_PARIS = ZoneInfo("Europe/Paris")
_HTTP_STATUS = {
    "NOT_FOUND": 404,
    "NOT_VALIDATED": 409,
    "NOT_SENDABLE": 409,
    "INS_NOT_QUALIFIED": 409,
}


Sender = Annotated[Actor, Depends(allow(Action.DOCUMENTS_SEND))]


class AppointmentRequest(BaseModel):
    patient_id: int = Field(
        description="Identifiant du patient dans OpenSégur (identité INS qualifiée requise)"
    )
    start: datetime = Field(
        description="Date et heure du rendez-vous, ISO 8601 ; sans fuseau : heure de Paris"
    )
    place: str = Field(min_length=1, max_length=500, description="Lieu du rendez-vous (service, bâtiment…)")
    preparation: str = Field("", max_length=2000, description="Consignes de préparation pour le patient")
    allow_reply: bool = Field(
        False, description="Le patient peut répondre (sinon en-tête X-MSS-MES: FIN, réponse bloquée)"
    )


class AppointmentQueued(BaseModel):
    mail_id: int = Field(description="Identifiant du courriel en file d'envoi")
    recipient: str = Field(description="Adresse Mon espace santé du patient")
    status: str = Field(description="État du courriel (pending : en file d'envoi)")


class DocumentSendRequest(BaseModel):
    recipients: list[str] = Field(
        default_factory=list, max_length=50, description="Adresses MSSanté des professionnels destinataires"
    )
    to_patient: bool = Field(False, description="Envoyer aussi à la messagerie Mon espace santé du patient")
    return_receipt: bool = Field(False, description="Demander un accusé de réception (DSN)")
    read_receipt: bool = Field(False, description="Demander un accusé de lecture (MDN)")
    body: str | None = Field(
        None, max_length=10_000, description="Texte du courriel ; sinon un texte par défaut"
    )


class DeliveryQueued(BaseModel):
    id: int
    destination: str = Field(description="MSSANTE_PS (professionnels) ou MSSANTE_PAT (patient)")
    status: str
    recipients: list[str]


class DocumentSendQueued(BaseModel):
    document_id: int
    deliveries: list[DeliveryQueued]


def _http_error(exc: MssOutboundError) -> HTTPException:
    return HTTPException(
        _HTTP_STATUS.get(exc.code, 422), detail={"code": exc.code, "message": exc.message_fr}
    )


@router.post("/api/v1/mssante/appointments", status_code=202, response_model=AppointmentQueued)
async def post_appointment(req: AppointmentRequest, actor: Sender, rt: Rt) -> AppointmentQueued:
    """Envoie au patient (Mon espace santé) un courriel de confirmation de rendez-vous."""
    start = req.start if req.start.tzinfo is not None else req.start.replace(tzinfo=_PARIS)

    def _do() -> AppointmentQueued:
        with rt.db.session() as s:
            ensure_patient(s, rt, actor, Action.DOCUMENTS_SEND, req.patient_id)
            mail = schedule_appointment(
                s,
                req.patient_id,
                start=start,
                place=req.place,
                preparation=req.preparation,
                allow_reply=req.allow_reply,
                actor=actor.name,
            )
            return AppointmentQueued(mail_id=mail.id, recipient=mail.recipients[0], status=mail.status)

    try:
        queued = await asyncio.to_thread(_do)
    except MssOutboundError as exc:
        raise _http_error(exc) from exc
    return queued


@router.post(
    "/api/v1/mssante/documents/{document_id}/send", status_code=202, response_model=DocumentSendQueued
)
async def post_document_send(
    document_id: int, req: DocumentSendRequest, actor: Sender, rt: Rt
) -> DocumentSendQueued:
    """Envoie un document déjà validé à des professionnels (MSSanté) et/ou au patient."""

    def _do() -> DocumentSendQueued:
        with rt.db.session() as s:
            doc = s.get(Document, document_id)
            if doc is not None:
                ensure_patient(s, rt, actor, Action.DOCUMENTS_SEND, doc.patient_id)
            deliveries = request_document_send(
                s,
                document_id,
                recipients=req.recipients,
                to_patient=req.to_patient,
                return_receipt=req.return_receipt,
                read_receipt=req.read_receipt,
                body=req.body,
                actor=actor.name,
            )
            out = []
            for d in deliveries:
                mail = s.scalars(select(Mail).where(Mail.delivery_id == d.id)).one()
                out.append(
                    DeliveryQueued(
                        id=d.id,
                        destination=d.destination,
                        status=d.status,
                        recipients=list(mail.recipients),
                    )
                )
            return DocumentSendQueued(document_id=document_id, deliveries=out)

    try:
        queued = await asyncio.to_thread(_do)
    except MssOutboundError as exc:
        raise _http_error(exc) from exc
    return queued
