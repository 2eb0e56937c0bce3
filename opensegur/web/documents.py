"""HTTP edge of the document flows: the documents API (list, detail, actions, content, REST intake) and the
flow-view pages in French.

Business rules live in ``flows.dmp_feed`` and ``flows.rest_intake``; this module reads, maps errors to HTTP
statuses and writes the audit trail of every read that shows patient data.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from opensegur.flows import dmp_feed
from opensegur.flows.dmp_feed import STATUS_LABELS
from opensegur.flows.rest_intake import (
    DEFAULT_MAX_PDF_BYTES,
    RestIntakeError,
    accept_rest_document,
    parse_metadata,
)
from opensegur.store.models import AuditEvent, Document, Exchange, Patient, Payload, Structure

__all__ = ["documents_router", "DOC_STATUS_COLOURS", "KIND_LABELS", "timeline"]

DOC_STATUS_COLOURS = {
    "received": "#6b7280",
    "validated": "#7c3aed",
    "waiting_identity": "#b45309",
    "held": "#d97706",
    "sending": "#2563eb",
    "sent": "#0e7490",
    "acknowledged": "#15803d",
    "opposition": "#be185d",
    "rejected": "#b91c1c",
    "error": "#dc2626",
}
KIND_LABELS = {"initial": "Premier envoi", "replacement": "Nouvelle version", "deletion": "Suppression"}
DELIVERY_LABELS = {
    "pending": "En file d'attente",
    "held": "Retenu",
    "waiting": "En attente du document qu'il remplace",
    "sending": "Envoi en cours",
    "delivered": "Remis",
    "failed": "Échec (nouvel essai prévu)",
    "dead": "Échec définitif",
}
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
_ENVELOPE_ALLOWANCE = 256 * 1024
_HOLDABLE = ("received", "validated", "waiting_identity", "error")
_PARIS = ZoneInfo("Europe/Paris")


def _allow(permission: str) -> Callable[[Request], str]:
    """The app's route guard, looked up at request time: web.app imports this module."""

    def check(request: Request) -> str:
        from opensegur.web.app import allow

        return allow(permission)(request)

    return check


Reader = Annotated[str, Depends(_allow("documents:read"))]
Writer = Annotated[str, Depends(_allow("documents:write"))]


class _TooLarge(Exception):
    pass


# ---- read models ----------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    # SQLite gives back naive datetimes; the store writes UTC, so say so in the API.
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


def heure_fr(value: str | None, seconds: bool = False) -> str:
    """An API timestamp as a clinician reads it: Paris wall-clock time, French order."""
    if not value:
        return "—"
    moment = datetime.fromisoformat(value).astimezone(_PARIS)
    return moment.strftime("%d/%m/%Y %H:%M:%S" if seconds else "%d/%m/%Y %H:%M")


def _patient_name(p: Patient | None) -> str | None:
    if p is None:
        return None
    return f"{p.used_name or p.birth_name} {p.first_names}".strip()


def _status(doc: Document) -> dict[str, str]:
    return {"code": doc.status, "label": STATUS_LABELS.get(doc.status, doc.status)}


def _first_send(doc: Document) -> dict[str, Any]:
    return {
        "kind": doc.kind,
        "label": KIND_LABELS.get(doc.kind, doc.kind),
        "first_send": bool(doc.context.get("first_send", doc.kind == "initial")),
    }


def document_summary(doc: Document, patient: Patient | None, site: Structure | None) -> dict[str, Any]:
    return {
        "id": doc.id,
        "uniqueId": doc.unique_id,
        "kind": doc.kind,
        "source": doc.source,
        "type": {"code": doc.type_code, "title": doc.title},
        "patient": {"id": doc.patient_id, "name": _patient_name(patient)},
        "site": {"id": doc.structure_id, "name": site.name if site else None},
        "status": _status(doc),
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
) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    """One page of documents (newest first), the total, and the count per status for the same site."""
    stmt = select(Document).options(selectinload(Document.deliveries))
    if site is not None:
        stmt = stmt.where(Document.structure_id == site)
    counted = select(Document.status, func.count()).group_by(Document.status)
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


def _audit_list(s: Session, actor: str, items: list[dict[str, Any]], reason: str) -> None:
    patients = sorted({i["patient"]["id"] for i in items if i["patient"]["id"]})
    if patients:
        s.add(
            AuditEvent(
                actor=actor,
                action="list_documents",
                patient_id=None,
                reason=reason,
                detail={"patients": patients},
            )
        )


def _get_document(s: Session, document_id: int) -> Document:
    doc = s.get(Document, document_id)
    if doc is None:
        raise HTTPException(404, "Document inconnu")
    return doc


# ---- upload ---------------------------------------------------------------------------------------------------


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _TooLarge
        yield chunk


def _problem(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "field": field}, status_code=status)


_INTAKE_SCHEMA: dict[str, Any] = {
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


# ---- router ---------------------------------------------------------------------------------------------------


def documents_router(runtime: Any, *, max_pdf_bytes: int | None = None) -> APIRouter:
    """Routes of the documents API and pages. ``max_pdf_bytes`` overrides ``settings.rest_max_upload_bytes``."""
    from opensegur.web.app import TEMPLATES

    TEMPLATES.env.filters["heure_fr"] = heure_fr
    router = APIRouter()
    db = runtime.db
    pdf_limit = int(
        max_pdf_bytes or getattr(runtime.settings, "rest_max_upload_bytes", None) or DEFAULT_MAX_PDF_BYTES
    )
    body_limit = pdf_limit + _ENVELOPE_ALLOWANCE

    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return asyncio.to_thread(fn, *args)

    # ---- API: read --------------------------------------------------------------------------------------
    @router.get("/api/v1/documents", tags=["documents"])
    async def api_documents(
        actor: Reader,
        status: str | None = Query(None, description="statut du flux (received, validated, sent…)"),
        patient_id: int | None = None,
        site: int | None = Query(None, description="identifiant du site (structure EG)"),
        q: str | None = Query(None, description="titre, identifiant unique, type ou nom du patient"),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        def _q() -> dict[str, Any]:
            with db.session() as s:
                items, total, counts = search_documents(
                    s, status=status, patient_id=patient_id, site=site, q=q, limit=limit, offset=offset
                )
                _audit_list(s, actor, items, "api")
                return {"total": total, "counts": counts, "items": items}

        return await run(_q)

    @router.get("/api/v1/documents/{document_id}", tags=["documents"])
    async def api_document(document_id: int, actor: Reader) -> dict[str, Any]:
        def _q() -> dict[str, Any]:
            with db.session() as s:
                doc = _get_document(s, document_id)
                s.add(
                    AuditEvent(
                        actor=actor,
                        action="read_document_status",
                        patient_id=doc.patient_id,
                        reason="api",
                        detail={"document_id": doc.id},
                    )
                )
                return document_detail(s, doc)

        return await run(_q)

    @router.get(
        "/api/v1/documents/{document_id}/content",
        tags=["documents"],
        response_class=Response,
        responses={200: {"content": {"application/xml": {}}, "description": "Le CDA tel que stocké"}},
    )
    async def api_content(document_id: int, actor: Reader) -> Response:
        def _q() -> tuple[bytes, str]:
            with db.session() as s:
                doc = _get_document(s, document_id)
                if not doc.payload_sha256:
                    raise HTTPException(404, "Ce document n'a pas de contenu (demande de suppression)")
                s.add(
                    AuditEvent(
                        actor=actor,
                        action="read_document",
                        patient_id=doc.patient_id,
                        reason="api",
                        detail={"document_id": doc.id, "unique_id": doc.unique_id},
                    )
                )
                return s.get_one(Payload, doc.payload_sha256).data, doc.unique_id

        data, unique_id = await run(_q)
        safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in unique_id)
        return Response(
            data,
            media_type="application/xml",
            headers={"content-disposition": f'inline; filename="{safe}.xml"'},
        )

    # ---- API: actions -----------------------------------------------------------------------------------
    def _hold(document_id: int, actor: str) -> None:
        with db.session() as s:
            doc = _get_document(s, document_id)
            if doc.held:
                raise HTTPException(409, "Document déjà retenu")
            if doc.status not in _HOLDABLE:
                label = STATUS_LABELS.get(doc.status, doc.status)
                raise HTTPException(409, f"Document au statut « {label} » : il ne peut plus être retenu")
        try:
            dmp_feed.hold(db, document_id, actor)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc

    def _release(document_id: int, actor: str) -> None:
        with db.session() as s:
            if not _get_document(s, document_id).held:
                raise HTTPException(409, "Le document n'est pas retenu : rien à libérer")
        dmp_feed.release(db, document_id, actor)

    def _retry(document_id: int, actor: str) -> int:
        with db.session() as s:
            _get_document(s, document_id)
        n = dmp_feed.retry(db, document_id, actor)
        if n == 0:
            raise HTTPException(409, "Aucun envoi en échec à relancer pour ce document")
        return n

    async def _state(document_id: int) -> dict[str, Any]:
        def _q() -> dict[str, Any]:
            with db.session() as s:
                doc = _get_document(s, document_id)
                return {"id": doc.id, "status": _status(doc), "held": doc.held}

        return await run(_q)

    @router.post("/api/v1/documents/{document_id}/hold", tags=["documents"])
    async def api_hold(document_id: int, actor: Writer) -> dict[str, Any]:
        await run(_hold, document_id, actor)
        return await _state(document_id)

    @router.post("/api/v1/documents/{document_id}/release", tags=["documents"])
    async def api_release(document_id: int, actor: Writer) -> dict[str, Any]:
        await run(_release, document_id, actor)
        runtime.workers.wake()
        return await _state(document_id)

    @router.post("/api/v1/documents/{document_id}/retry", tags=["documents"])
    async def api_retry(document_id: int, actor: Writer) -> dict[str, Any]:
        n = await run(_retry, document_id, actor)
        runtime.workers.wake()
        return {**await _state(document_id), "retried": n}

    # ---- API: intake ------------------------------------------------------------------------------------
    @router.post(
        "/api/v1/documents",
        tags=["documents"],
        status_code=202,
        openapi_extra=_INTAKE_SCHEMA,
        summary="Déposer un PDF : la plateforme construit le CDA R2 N1 et l'envoie au DMP",
    )
    async def api_intake(request: Request, actor: Writer) -> JSONResponse:
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return _problem(
                415,
                "MULTIPART_EXPECTED",
                "Corps multipart/form-data attendu (champs « pdf » et « metadata »)",
            )
        declared = request.headers.get("content-length", "")
        too_large = _problem(
            413,
            "TOO_LARGE",
            f"Fichier trop volumineux : {pdf_limit // (1024 * 1024)} Mo au plus",
            "pdf",
        )
        if declared.isdigit() and int(declared) > body_limit:
            return too_large
        parser = MultiPartParser(
            request.headers,
            _limited(request, body_limit),
            max_files=2,
            max_fields=4,
            max_part_size=_ENVELOPE_ALLOWANCE,
        )
        try:
            form = await parser.parse()
        except _TooLarge:
            return too_large
        except MultiPartException as exc:
            return _problem(400, "MULTIPART_INVALID", f"Corps multipart illisible : {exc.message}")
        try:
            upload = form.get("pdf")
            if not isinstance(upload, UploadFile):
                return _problem(400, "PDF_MISSING", "Champ « pdf » absent (fichier attendu)", "pdf")
            pdf = await upload.read(pdf_limit + 1)
            if len(pdf) > pdf_limit:
                return too_large
            raw_meta = form.get("metadata")
            if isinstance(raw_meta, UploadFile):
                raw_meta = (await raw_meta.read(_ENVELOPE_ALLOWANCE)).decode("utf-8", "replace")
            if not raw_meta:
                return _problem(
                    400, "METADATA_MISSING", "Champ « metadata » absent (JSON attendu)", "metadata"
                )
        finally:
            await form.close()
        try:
            meta = json.loads(raw_meta)
        except ValueError as exc:
            return _problem(400, "METADATA_JSON", f"Métadonnées : JSON invalide ({exc})", "metadata")
        try:
            req = parse_metadata(meta)
        except RestIntakeError as exc:
            return _problem(422, exc.code, exc.message, exc.field)

        def _store() -> Any:
            with db.session() as s:
                return accept_rest_document(s, req, pdf, oid_root=runtime.settings.oid_root, actor=actor)

        try:
            accepted = await run(_store)
        except RestIntakeError as exc:
            return _problem(409 if exc.kind == "conflict" else 422, exc.code, exc.message, exc.field)
        runtime.workers.wake()
        url = f"/api/v1/documents/{accepted.document_id}"
        return JSONResponse(
            {
                "id": accepted.document_id,
                "uniqueId": accepted.unique_id,
                "kind": accepted.kind,
                "version": accepted.version,
                "status": {"code": "received", "label": STATUS_LABELS["received"]},
                "url": url,
                "page": f"/documents/{accepted.document_id}",
            },
            status_code=202,
            headers={"location": url},
        )

    # ---- pages ------------------------------------------------------------------------------------------
    @router.get("/documents", response_class=HTMLResponse, include_in_schema=False)
    async def page_documents(
        request: Request,
        actor: Reader,
        statut: str = "",
        site: str = "",
        q: str = "",
        page: int = 1,
        msg: str = "",
    ) -> HTMLResponse:
        per_page = 50

        def _q() -> dict[str, Any]:
            with db.session() as s:
                items, total, counts = search_documents(
                    s,
                    status=statut or None,
                    patient_id=None,
                    site=int(site) if site.isdigit() else None,
                    q=q or None,
                    limit=per_page,
                    offset=(max(page, 1) - 1) * per_page,
                )
                _audit_list(s, actor, items, "suivi des flux documentaires")
                return {
                    "documents": items,
                    "total": total,
                    "counts": counts,
                    "sites": s.scalars(
                        select(Structure).where(Structure.kind == "EG").order_by(Structure.name)
                    ).all(),
                }

        ctx = await run(_q)
        ctx.update(
            request=request,
            msg=msg,
            statut=statut,
            site=site,
            q=q,
            page=max(page, 1),
            per_page=per_page,
            STATUS_LABELS=STATUS_LABELS,
            DOC_COLOURS=DOC_STATUS_COLOURS,
        )
        return TEMPLATES.TemplateResponse(request, "documents.html", ctx)

    @router.get("/documents/{document_id}", response_class=HTMLResponse, include_in_schema=False)
    async def page_document(request: Request, document_id: int, actor: Reader, msg: str = "") -> HTMLResponse:
        def _q() -> dict[str, Any]:
            with db.session() as s:
                doc = _get_document(s, document_id)
                s.add(
                    AuditEvent(
                        actor=actor,
                        action="read_document_status",
                        patient_id=doc.patient_id,
                        reason="suivi des flux documentaires",
                        detail={"document_id": doc.id},
                    )
                )
                detail = document_detail(s, doc)
                return {"d": detail, "holdable": doc.status in _HOLDABLE and not doc.held}

        ctx = await run(_q)
        ctx.update(
            request=request,
            msg=msg,
            STATUS_LABELS=STATUS_LABELS,
            DOC_COLOURS=DOC_STATUS_COLOURS,
            ACTION_LABELS=ACTION_LABELS,
            DESTINATION_LABELS=DESTINATION_LABELS,
        )
        return TEMPLATES.TemplateResponse(request, "document.html", ctx)

    def back(document_id: int, msg: str) -> RedirectResponse:
        return RedirectResponse(f"/documents/{document_id}?msg={quote(msg)}", status_code=303)

    async def _action(
        document_id: int, fn: Callable[[int, str], Any], actor: str, done: str
    ) -> RedirectResponse:
        try:
            await run(fn, document_id, actor)
        except HTTPException as exc:
            if exc.status_code == 404:
                raise
            return back(document_id, str(exc.detail))
        runtime.workers.wake()
        return back(document_id, done)

    @router.post("/documents/{document_id}/retenir", include_in_schema=False)
    async def page_hold(document_id: int, actor: Writer) -> RedirectResponse:
        return await _action(
            document_id, _hold, actor, "Document retenu : il ne partira pas avant libération"
        )

    @router.post("/documents/{document_id}/liberer", include_in_schema=False)
    async def page_release(document_id: int, actor: Writer) -> RedirectResponse:
        return await _action(document_id, _release, actor, "Document libéré : le traitement reprend")

    @router.post("/documents/{document_id}/relancer", include_in_schema=False)
    async def page_retry(document_id: int, actor: Writer) -> RedirectResponse:
        return await _action(document_id, _retry, actor, "Nouvel essai d'envoi programmé")

    return router
