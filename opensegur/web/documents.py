"""Read models of the document flows for the documents API and the flow-view pages (``web/routes/documents``).

Business rules live in ``flows.dmp_feed`` and ``flows.rest_intake``; this module reads, maps errors to HTTP
statuses and writes the audit trail of every read that shows patient data.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session, selectinload

from opensegur.documents.delivery import DELIVERY_LABELS
from opensegur.documents.lifecycle import STATUS_LABELS
from opensegur.documents.metadata import XdsAuthor, xon_name
from opensegur.errors import OpenSegurError
from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.store.models import Document, Exchange, Patient, Structure

KIND_LABELS = {"initial": "Premier envoi", "replacement": "Nouvelle version", "deletion": "Suppression"}
ACTION_LABELS = {
    "register": "Dépôt",
    "replace": "Remplacement",
    "delete": "Suppression",
    "send": "Envoi par messagerie",
}
DESTINATION_LABELS = {
    "DMP": "DMP",
    "MSSANTE_PS": "MSSanté — professionnels",
    "MSSANTE_PAT": "MSSanté — patient (Mon espace santé)",
}
SEVERITY_LABELS = {"blocking": "Bloquant", "warning": "Avertissement", "info": "Information"}
# The steps of the flow view, in order; ``rejected``/``error``/``opposition`` stop on one of them.
STEPS = [
    ("received", "Reçu"),
    ("validated", "Validé"),
    ("waiting_identity", "En attente d'identité"),
    ("sent", "Envoyé"),
    ("acknowledged", "Accusé"),
]
_STEP_INDEX = {key: i for i, (key, _label) in enumerate(STEPS)}
# Multipart boundaries, part headers and the metadata JSON on top of the PDF itself.
ENVELOPE_ALLOWANCE = 256 * 1024
_PARIS = ZoneInfo("Europe/Paris")


class TooLarge(OpenSegurError):
    pass


# ---- read models ----------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    # SQLite gives back naive datetimes; the store writes UTC, so say so in the API.
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


def heure_fr(value: str | datetime | None, seconds: bool = False) -> str:
    """A timestamp (ISO text from the API, or a stored datetime) as a clinician reads it: Paris wall-clock
    time, French order. The store writes UTC; SQLite gives it back naive."""
    if not value:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(_PARIS)
    return moment.strftime("%d/%m/%Y %H:%M:%S" if seconds else "%d/%m/%Y %H:%M")


def dtm_fr(value: str | None) -> str:
    """An XDS DTM (``YYYY[MM[DD[hh[mm[ss]]]]]``, UTC per ITI TF-3) as a clinician reads it: the date, and the Paris
    wall-clock time when the DTM has one."""
    if not value or not value[:4].isdigit():
        return value or "—"
    if len(value) < 8 or not value[:8].isdigit():
        # A DTM may be a year or a month only (a vaccination remembered as « 1975 »).
        return value[:4] if len(value) < 6 else f"{value[4:6]}/{value[:4]}"
    if len(value) < 12:
        return f"{value[6:8]}/{value[4:6]}/{value[:4]}"
    return heure_fr(datetime.strptime(value[:12], "%Y%m%d%H%M").replace(tzinfo=UTC))


def author_fr(author: XdsAuthor) -> str:
    """« Prénom NOM (établissement) » from an XDS author's XCN and first XON, for a list a clinician scans."""
    person = (author.person or "").split("^")
    name = " ".join(
        x for x in (person[2] if len(person) > 2 else "", person[1] if len(person) > 1 else "") if x
    )
    institution = xon_name(author.institutions[0]) if author.institutions else ""
    if name and institution:
        return f"{name} ({institution})"
    return name or institution or "—"


def _patient_name(p: Patient | None) -> str | None:
    if p is None:
        return None
    return f"{p.used_name or p.birth_name} {p.first_names}".strip()


def status_of(doc: Document) -> dict[str, str]:
    return {"code": doc.status, "label": STATUS_LABELS.get(doc.status, doc.status)}


def _first_send(doc: Document) -> dict[str, Any]:
    return {
        "kind": doc.kind,
        "label": KIND_LABELS.get(doc.kind, doc.kind),
        "first_send": bool(doc.context.get("first_send", doc.kind == "initial")),
    }


# How a document reached the platform, as the pages say it.
SOURCE_LABELS = {
    "hl7": "HL7 (DPI)",
    "rest": "API REST",
    "mhd": "FHIR MHD",
    "mssante": "MSSanté",
}


def document_summary(doc: Document, patient: Patient | None, site: Structure | None) -> dict[str, Any]:
    return {
        "id": doc.id,
        "uniqueId": doc.unique_id,
        "kind": doc.kind,
        "source": doc.source,
        "source_label": SOURCE_LABELS.get(doc.source, doc.source),
        "type": {"code": doc.type_code, "title": doc.title},
        "patient": {"id": doc.patient_id, "name": _patient_name(patient)},
        "site": {"id": doc.structure_id, "name": site.name if site else None},
        "status": status_of(doc),
        "status_reason": doc.status_reason,
        "held": doc.held,
        "first_send": _first_send(doc),
        "created": _iso(doc.created_at),
        "updated": _iso(doc.updated_at),
        "deliveries": [
            {"destination": d.destination, "action": d.action, "status": d.status} for d in doc.deliveries
        ],
    }


def timeline(doc: Document, exchanges: list[Exchange]) -> list[dict[str, Any]]:
    """The five steps of the flow view, each ``done``, ``current``, ``waiting``, ``error``, ``skipped`` or ``todo``."""
    status = doc.status
    reason = doc.status_reason or STATUS_LABELS.get(status, status)
    # Where the document stands, and whether it stopped there in error or waits for someone.
    if status == "rejected":
        at, state = _STEP_INDEX["validated"], "error"
    elif status in ("error", "opposition"):
        at, state = _STEP_INDEX["sent"], "error"
    elif status == "held":
        # With deliveries planned, validation and the identity gate are behind it: only the sending waits.
        at, state = (_STEP_INDEX["sent"] if doc.deliveries else _STEP_INDEX["received"]), "waiting"
    elif status == "waiting_identity":
        at, state = _STEP_INDEX["waiting_identity"], "waiting"
    elif status == "sending":
        at, state = _STEP_INDEX["sent"], "current"
    elif status == "sent":
        # Over HL7 the DPI's acknowledgement (ZAM) is still to come; over REST or FHIR, or without a ZAM endpoint,
        # nobody waits for one.
        at, state = _STEP_INDEX["acknowledged"], "current" if doc.context.get("zam") else "skipped"
    elif status == "acknowledged":
        at, state = _STEP_INDEX["acknowledged"], "done"
    else:
        at, state = _STEP_INDEX.get(status, 0), "current"
    delivered = [d.delivered_at for d in doc.deliveries if d.delivered_at]
    times: dict[str, datetime | None] = {
        "received": doc.created_at,
        "validated": min((d.created_at for d in doc.deliveries), default=None),
        "sent": min(delivered, default=None) or (exchanges[-1].at if exchanges and delivered else None),
        "acknowledged": doc.updated_at if status == "acknowledged" else None,
    }
    notes = {
        "waiting": reason,
        "error": reason,
        "skipped": "Sans objet : aucun logiciel n'attend d'accusé métier (ZAM) pour ce document",
        "current": "Envoi en cours" if status == "sending" else None,
    }
    steps = []
    for i, (key, label) in enumerate(STEPS):
        if i < at:
            step_state = "done"
            note = "Identité qualifiée" if key == "waiting_identity" else None
        elif i == at:
            step_state, note = state, notes.get(state)
        else:
            step_state, note = "todo", None
        steps.append(
            {"step": key, "label": label, "state": step_state, "note": note, "at": _iso(times.get(key))}
        )
    return steps


def _exchanges(s: Session, doc_id: int) -> list[Exchange]:
    return list(
        s.scalars(select(Exchange).where(Exchange.document_id == doc_id).order_by(Exchange.at, Exchange.id))
    )


def document_detail(s: Session, doc: Document) -> dict[str, Any]:
    patient = s.get(Patient, doc.patient_id) if doc.patient_id else None
    site = s.get(Structure, doc.structure_id)
    exchanges = _exchanges(s, doc.id)
    out = document_summary(doc, patient, site)
    out.update(
        set_id=doc.set_id,
        version=doc.version,
        replaces=doc.parent_unique_id,
        mime_type=doc.mime_type,
        size=doc.size,
        findings=[
            {
                "severity": f.get("severity"),
                "severity_label": SEVERITY_LABELS.get(str(f.get("severity")), f.get("severity")),
                "source": f.get("source"),
                "code": f.get("code"),
                "message": f.get("message"),
                "location": f.get("location") or None,
            }
            for f in doc.findings or []
        ],
        flags=doc.flags,
        stay={
            "patient_class": doc.context.get("patient_class"),
            "visit_number": doc.context.get("visit_number"),
        },
        deliveries=[
            {
                "id": d.id,
                "destination": d.destination,
                "action": d.action,
                "status": d.status,
                "status_label": DELIVERY_LABELS.get(d.status, d.status),
                "entry_uuid": d.entry_uuid,
                "error": {"code": d.error_code, "message": d.last_error} if d.last_error else None,
                "submitted_at": _iso(d.submitted_at),
                "delivered_at": _iso(d.delivered_at),
            }
            for d in doc.deliveries
        ],
        exchanges=[
            {
                "transaction": e.transaction,
                "endpoint": e.endpoint,
                "http_status": e.http_status,
                "outcome": e.outcome,
                "detail": e.detail,
                "duration_ms": e.duration_ms,
                "at": _iso(e.at),
            }
            for e in exchanges
        ],
        timeline=timeline(doc, exchanges),
        links={"self": f"/api/v1/documents/{doc.id}", "content": f"/api/v1/documents/{doc.id}/content"},
    )
    return out


def search_documents(
    s: Session,
    *,
    status: str | None,
    patient_id: int | None,
    site: int | None,
    q: str | None,
    limit: int,
    offset: int,
    visible: ColumnElement[bool] | None = None,
) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    """One page of documents (newest first), the total, and the count per status for the same site; ``visible``
    (a WHERE clause on Document) keeps only what the reader may see, counts included."""
    stmt = select(Document).options(selectinload(Document.deliveries))
    if site is not None:
        stmt = stmt.where(Document.structure_id == site)
    counted = select(Document.status, func.count()).group_by(Document.status)
    if visible is not None:
        stmt = stmt.where(visible)
        counted = counted.where(visible)
    if site is not None:
        counted = counted.where(Document.structure_id == site)
    if status:
        stmt = stmt.where(Document.status == status)
    if patient_id is not None:
        stmt = stmt.where(Document.patient_id == patient_id)
    if q and q.strip():
        term = f"%{q.strip().upper()}%"
        stmt = stmt.outerjoin(Patient, Patient.id == Document.patient_id).where(
            or_(
                func.upper(Document.title).like(term),
                func.upper(Document.unique_id).like(term),
                func.upper(Document.type_code).like(term),
                func.upper(Patient.birth_name).like(term),
                func.upper(Patient.used_name).like(term),
                func.upper(Patient.first_names).like(term),
            )
        )
    total = s.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    docs = list(s.scalars(stmt.order_by(Document.id.desc()).limit(limit).offset(offset)))
    patient_ids = {d.patient_id for d in docs if d.patient_id}
    patients = (
        {p.id: p for p in s.scalars(select(Patient).where(Patient.id.in_(patient_ids)))}
        if patient_ids
        else {}
    )
    sites = {st.id: st for st in s.scalars(select(Structure).where(Structure.kind == "EG"))}
    counts = {key: 0 for key in STATUS_LABELS}
    for code, n in s.execute(counted).all():
        counts[code] = n
    items = [document_summary(d, patients.get(d.patient_id or 0), sites.get(d.structure_id)) for d in docs]
    return items, total, counts


def audit_list(s: Session, actor: Actor, items: list[dict[str, Any]], reason: str) -> None:
    patients = sorted({i["patient"]["id"] for i in items if i["patient"]["id"]})
    if patients:
        audit.record(s, actor, "list_documents", None, reason, {"patients": patients})


def get_document(s: Session, document_id: int) -> Document:
    doc = s.get(Document, document_id)
    if doc is None:
        raise HTTPException(404, "Document inconnu")
    return doc


# ---- upload ---------------------------------------------------------------------------------------------------


async def limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise TooLarge
        yield chunk


def problem(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "field": field}, status_code=status)


INTAKE_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["pdf", "metadata"],
                    "properties": {
                        "pdf": {"type": "string", "format": "binary", "description": "Le document PDF"},
                        "metadata": {
                            "type": "string",
                            "description": (
                                "JSON : patient {site, ipp | ins, ins_oid?}, author {idnat_ps | rpps, family?, "
                                "given?, specialty?}, type_code (JDV J07), title?, effective_time (ISO 8601), "
                                "stay {visit_number?, authority_oid?, start?, end?, patient_class?}, "
                                "visibility {masque_ps, invisible_patient, invisible_rep_legaux}, replaces?"
                            ),
                        },
                    },
                }
            }
        },
    }
}
