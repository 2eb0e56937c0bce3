"""The patient's clinical record as its page and the API show it: the documents, produced here or received by
MSSanté, and beside them the biology results (``web.biology``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from opensegur.documents.lifecycle import STATUS_LABELS
from opensegur.store.models import Document, Mail, Patient
from opensegur.web.biology import lab_results, result_charts, result_json
from opensegur.web.format_fr import StatusOut, aware, number_fr, when_fr

__all__ = [
    "ORIGIN_LABELS",
    "PatientDocument",
    "PatientDocuments",
    "document_items",
    "get_patient",
    "patient_sections",
]

ORIGIN_LABELS = {
    "hl7": "Produit — DPI (HL7)",
    "rest": "Produit — dépôt API",
    "mhd": "Produit — dépôt FHIR MHD",
    "mssante": "Reçu — MSSanté",
}


def document_items(s: Session, patient_id: int) -> list[dict[str, Any]]:
    docs = list(
        s.scalars(
            select(Document)
            .where(Document.patient_id == patient_id)
            .options(selectinload(Document.deliveries))
            .order_by(Document.created_at.desc(), Document.id.desc())
        )
    )
    mails: dict[int, Mail] = {}
    if docs:
        for m in s.scalars(
            select(Mail).where(Mail.direction == "in", Mail.document_id.in_([d.id for d in docs]))
        ):
            if m.document_id is not None:
                mails.setdefault(m.document_id, m)
    items = []
    for d in docs:
        received = d.source == "mssante"
        mail = mails.get(d.id)
        mail_id = mail.id if mail else d.context.get("mail_id")
        items.append(
            {
                "id": d.id,
                "direction": "received" if received else "produced",
                "origin": {"code": d.source, "label": ORIGIN_LABELS.get(d.source, d.source)},
                "type": {"code": d.type_code, "title": d.title},
                "date": aware(d.created_at),
                "status": {"code": d.status, "label": STATUS_LABELS.get(d.status, d.status)},
                "sender": (mail.sender if mail else d.context.get("sender")) if received else None,
                "deliveries": [{"destination": x.destination, "status": x.status} for x in d.deliveries],
                "links": {
                    "page": f"/documents/{d.id}",
                    "api": f"/api/v1/documents/{d.id}",
                    "content": f"/api/v1/documents/{d.id}/content" if d.payload_sha256 else None,
                    "mail": f"/mssante/triage/{mail_id}" if received and mail_id else None,
                },
            }
        )
    return items


def patient_sections(s: Session, patient_id: int) -> dict[str, Any]:
    """What ``patient.html`` shows under "Documents" and "Résultats de biologie" (display-ready)."""
    rows = lab_results(s, patient_id)
    results = []
    for r in rows:
        j = result_json(r)
        results.append(
            {
                **j,
                "value_fr": number_fr(r.value) or "—",
                "reference_fr": number_fr(j["reference_text"]) or "—",
                "when": when_fr(r.observed_at),
            }
        )
    documents = [{**d, "when": when_fr(d["date"])} for d in document_items(s, patient_id)]
    return {"patient_documents": documents, "lab_results": results, "lab_charts": result_charts(rows)}


def get_patient(s: Session, patient_id: int) -> Patient:
    p = s.get(Patient, patient_id)
    if p is None:
        raise HTTPException(404, "Patient inconnu")
    return p


# ---- API models -----------------------------------------------------------------------------------------------


class CodedTitle(BaseModel):
    code: str | None
    title: str | None


class DeliveryOut(BaseModel):
    destination: str
    status: str


class DocumentLinks(BaseModel):
    page: str
    api: str
    content: str | None
    mail: str | None


class PatientDocument(BaseModel):
    id: int
    direction: Literal["produced", "received"] = Field(description="produit par l'établissement ou reçu")
    origin: StatusOut
    type: CodedTitle
    date: datetime | None
    status: StatusOut
    sender: str | None = Field(description="adresse MSSanté de l'expéditeur (documents reçus)")
    deliveries: list[DeliveryOut]
    links: DocumentLinks


class PatientDocuments(BaseModel):
    patient_id: int
    total: int
    items: list[PatientDocument]
