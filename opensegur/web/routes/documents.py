"""The documents API (list, detail, actions, content, REST intake) and the flow-view pages in French.

Business rules live in ``flows.dmp_feed`` and ``flows.rest_intake``; this module reads, maps errors to HTTP
statuses, keeps each reader to the documents of the patients in their scope and audits every read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from opensegur.documents.lifecycle import HOLDABLE, STATUS_LABELS
from opensegur.flows import dmp_feed
from opensegur.flows.rest_intake import (
    DEFAULT_MAX_PDF_BYTES,
    RestIntakeError,
    accept_rest_document,
    parse_metadata,
)
from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store.models import Document, Payload, Structure
from opensegur.web.deps import (
    Rt,
    WebRuntime,
    allow,
    document_filter,
    ensure_document,
    grants,
    structure_filter,
)
from opensegur.web.documents import (
    ACTION_LABELS,
    DESTINATION_LABELS,
    ENVELOPE_ALLOWANCE,
    INTAKE_SCHEMA,
    TooLarge,
    audit_list,
    document_detail,
    get_document,
    limited_stream,
    problem,
    search_documents,
    status_of,
)
from opensegur.web.flash import redirect_with_message
from opensegur.web.safety import attachment_headers
from opensegur.web.templating import render

router = APIRouter()

Reader = Annotated[Actor, Depends(allow(Action.DOCUMENTS_READ))]
Controller = Annotated[Actor, Depends(allow(Action.DOCUMENTS_CONTROL))]
Sender = Annotated[Actor, Depends(allow(Action.DOCUMENTS_SEND))]


def readable_document(s: Session, rt: WebRuntime, actor: Actor, document_id: int, action: Action) -> Document:
    """The document, if the actor may act on it: its patient in scope, or, before its identity is known, its
    site in a site- or GHT-wide scope."""
    doc = get_document(s, document_id)
    ensure_document(s, rt, actor, action, doc)
    return doc


# ---- API: read ------------------------------------------------------------------------------------------------
@router.get("/api/v1/documents", tags=["documents"])
async def api_documents(
    actor: Reader,
    rt: Rt,
    status: str | None = Query(None, description="statut du flux (received, validated, sent…)"),
    patient_id: int | None = None,
    site: int | None = Query(None, description="identifiant du site (structure EG)"),
    q: str | None = Query(None, description="titre, identifiant unique, type ou nom du patient"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            items, total, counts = search_documents(
                s,
                status=status,
                patient_id=patient_id,
                site=site,
                q=q,
                limit=limit,
                offset=offset,
                visible=document_filter(rt, actor, Action.DOCUMENTS_READ),
            )
            audit_list(s, actor, items, "api")
            return {"total": total, "counts": counts, "items": items}

    return await asyncio.to_thread(_q)


@router.get("/api/v1/documents/{document_id}", tags=["documents"])
async def api_document(document_id: int, actor: Reader, rt: Rt) -> dict[str, Any]:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            doc = readable_document(s, rt, actor, document_id, Action.DOCUMENTS_READ)
            audit.record(s, actor, "read_document_status", doc.patient_id, "api", {"document_id": doc.id})
            return document_detail(s, doc)

    return await asyncio.to_thread(_q)


@router.get(
    "/api/v1/documents/{document_id}/content",
    tags=["documents"],
    response_class=Response,
    responses={
        200: {"content": {"application/xml": {}}, "description": "Le CDA tel que stocké (pièce jointe)"}
    },
)
async def api_content(document_id: int, actor: Reader, rt: Rt) -> Response:
    def _q() -> tuple[bytes, str]:
        with rt.db.session() as s:
            doc = readable_document(s, rt, actor, document_id, Action.DOCUMENTS_READ)
            if not doc.payload_sha256:
                raise HTTPException(404, "Ce document n'a pas de contenu (demande de suppression)")
            audit.record(
                s,
                actor,
                "read_document",
                doc.patient_id,
                "api",
                {"document_id": doc.id, "unique_id": doc.unique_id},
            )
            return s.get_one(Payload, doc.payload_sha256).data, doc.unique_id

    data, unique_id = await asyncio.to_thread(_q)
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in unique_id)
    # Never inline in our origin: a script inside a CDA would run with the reader's session.
    return Response(
        data, media_type="application/xml", headers=attachment_headers(f"{safe}.xml", "application/xml")
    )


# ---- API: actions ---------------------------------------------------------------------------------------------
def _hold(rt: WebRuntime, document_id: int, actor: Actor) -> None:
    with rt.db.session() as s:
        doc = readable_document(s, rt, actor, document_id, Action.DOCUMENTS_CONTROL)
        if doc.held:
            raise HTTPException(409, "Document déjà retenu")
    try:
        dmp_feed.hold(rt.db, document_id, actor.name)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc


def _release(rt: WebRuntime, document_id: int, actor: Actor) -> None:
    with rt.db.session() as s:
        if not readable_document(s, rt, actor, document_id, Action.DOCUMENTS_CONTROL).held:
            raise HTTPException(409, "Le document n'est pas retenu : rien à libérer")
    dmp_feed.release(rt.db, document_id, actor.name)


def _retry(rt: WebRuntime, document_id: int, actor: Actor) -> int:
    with rt.db.session() as s:
        readable_document(s, rt, actor, document_id, Action.DOCUMENTS_CONTROL)
    n = dmp_feed.retry(rt.db, document_id, actor.name)
    if n == 0:
        raise HTTPException(409, "Aucun envoi en échec à relancer pour ce document")
    return n


async def _state(rt: WebRuntime, document_id: int) -> dict[str, Any]:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            doc = get_document(s, document_id)
            return {"id": doc.id, "status": status_of(doc), "held": doc.held}

    return await asyncio.to_thread(_q)


@router.post("/api/v1/documents/{document_id}/hold", tags=["documents"])
async def api_hold(document_id: int, actor: Controller, rt: Rt) -> dict[str, Any]:
    await asyncio.to_thread(_hold, rt, document_id, actor)
    return await _state(rt, document_id)


@router.post("/api/v1/documents/{document_id}/release", tags=["documents"])
async def api_release(document_id: int, actor: Controller, rt: Rt) -> dict[str, Any]:
    await asyncio.to_thread(_release, rt, document_id, actor)
    return await _state(rt, document_id)


@router.post("/api/v1/documents/{document_id}/retry", tags=["documents"])
async def api_retry(document_id: int, actor: Controller, rt: Rt) -> dict[str, Any]:
    n = await asyncio.to_thread(_retry, rt, document_id, actor)
    return {**await _state(rt, document_id), "retried": n}


# ---- API: intake ----------------------------------------------------------------------------------------------
@router.post(
    "/api/v1/documents",
    tags=["documents"],
    status_code=202,
    openapi_extra=INTAKE_SCHEMA,
    summary="Déposer un PDF : la plateforme construit le CDA R2 N1 et l'envoie au DMP",
)
async def api_intake(request: Request, actor: Sender, rt: Rt) -> JSONResponse:
    pdf_limit = int(getattr(rt.settings, "rest_max_upload_bytes", None) or DEFAULT_MAX_PDF_BYTES)
    body_limit = pdf_limit + ENVELOPE_ALLOWANCE
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return problem(
            415, "MULTIPART_EXPECTED", "Corps multipart/form-data attendu (champs « pdf » et « metadata »)"
        )
    declared = request.headers.get("content-length", "")
    too_large = problem(
        413, "TOO_LARGE", f"Fichier trop volumineux : {pdf_limit // (1024 * 1024)} Mo au plus", "pdf"
    )
    if declared.isdigit() and int(declared) > body_limit:
        return too_large
    parser = MultiPartParser(
        request.headers,
        limited_stream(request, body_limit),
        max_files=2,
        max_fields=4,
        max_part_size=ENVELOPE_ALLOWANCE,
    )
    try:
        form = await parser.parse()
    except TooLarge:
        return too_large
    except MultiPartException as exc:
        return problem(400, "MULTIPART_INVALID", f"Corps multipart illisible : {exc.message}")
    try:
        upload = form.get("pdf")
        if not isinstance(upload, UploadFile):
            return problem(400, "PDF_MISSING", "Champ « pdf » absent (fichier attendu)", "pdf")
        pdf = await upload.read(pdf_limit + 1)
        if len(pdf) > pdf_limit:
            return too_large
        raw_meta = form.get("metadata")
        if isinstance(raw_meta, UploadFile):
            raw_meta = (await raw_meta.read(ENVELOPE_ALLOWANCE)).decode("utf-8", "replace")
        if not raw_meta:
            return problem(400, "METADATA_MISSING", "Champ « metadata » absent (JSON attendu)", "metadata")
    finally:
        await form.close()
    try:
        meta = json.loads(raw_meta)
    except ValueError as exc:
        return problem(400, "METADATA_JSON", f"Métadonnées : JSON invalide ({exc})", "metadata")
    try:
        req = parse_metadata(meta)
    except RestIntakeError as exc:
        return problem(422, exc.code, exc.message, exc.field)

    def _store() -> Any:
        with rt.db.session() as s:
            return accept_rest_document(s, req, pdf, oid_root=rt.settings.oid_root, actor=actor.name)

    try:
        accepted = await asyncio.to_thread(_store)
    except RestIntakeError as exc:
        return problem(409 if exc.kind == "conflict" else 422, exc.code, exc.message, exc.field)
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


# ---- pages ----------------------------------------------------------------------------------------------------
@router.get("/documents", response_class=HTMLResponse, include_in_schema=False)
async def page_documents(
    request: Request, actor: Reader, rt: Rt, statut: str = "", site: str = "", q: str = "", page: int = 1
) -> HTMLResponse:
    per_page = 50
    page = min(max(page, 1), 100_000)

    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            items, total, counts = search_documents(
                s,
                status=statut or None,
                patient_id=None,
                site=int(site) if site.isdigit() and len(site) < 10 else None,
                q=q or None,
                limit=per_page,
                offset=(page - 1) * per_page,
                visible=document_filter(rt, actor, Action.DOCUMENTS_READ),
            )
            audit_list(s, actor, items, "suivi des flux documentaires")
            return {
                "documents": items,
                "total": total,
                "counts": counts,
                "sites": s.scalars(
                    select(Structure)
                    .where(
                        Structure.kind == "EG",
                        structure_filter(rt, actor, Action.DOCUMENTS_READ, Structure.id),
                    )
                    .order_by(Structure.name)
                ).all(),
            }

    ctx = await asyncio.to_thread(_q)
    ctx.update(
        request=request,
        statut=statut,
        site=site,
        q=q,
        page=page,
        per_page=per_page,
        STATUS_LABELS=STATUS_LABELS,
    )
    return render(request, "documents.html", ctx)


@router.get("/documents/{document_id}", response_class=HTMLResponse, include_in_schema=False)
async def page_document(request: Request, document_id: int, actor: Reader, rt: Rt) -> HTMLResponse:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            doc = readable_document(s, rt, actor, document_id, Action.DOCUMENTS_READ)
            audit.record(
                s,
                actor,
                "read_document_status",
                doc.patient_id,
                "suivi des flux documentaires",
                {"document_id": doc.id},
            )
            detail = document_detail(s, doc)
            may_control = grants(rt, actor, Action.DOCUMENTS_CONTROL)
            return {
                "d": detail,
                "holdable": may_control and doc.status in HOLDABLE and not doc.held,
                "may_control": may_control,
            }

    ctx = await asyncio.to_thread(_q)
    ctx.update(
        request=request,
        STATUS_LABELS=STATUS_LABELS,
        ACTION_LABELS=ACTION_LABELS,
        DESTINATION_LABELS=DESTINATION_LABELS,
    )
    return render(request, "document.html", ctx)


async def _action(
    rt: WebRuntime, document_id: int, fn: Callable[[WebRuntime, int, Actor], Any], actor: Actor, done: str
) -> RedirectResponse:
    back = f"/documents/{document_id}"
    try:
        await asyncio.to_thread(fn, rt, document_id, actor)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise
        return redirect_with_message(back, str(exc.detail), actor)
    return redirect_with_message(back, done, actor)


@router.post("/documents/{document_id}/retenir", include_in_schema=False)
async def page_hold(document_id: int, actor: Controller, rt: Rt) -> RedirectResponse:
    return await _action(
        rt, document_id, _hold, actor, "Document retenu : il ne partira pas avant libération"
    )


@router.post("/documents/{document_id}/liberer", include_in_schema=False)
async def page_release(document_id: int, actor: Controller, rt: Rt) -> RedirectResponse:
    return await _action(rt, document_id, _release, actor, "Document libéré : le traitement reprend")


@router.post("/documents/{document_id}/relancer", include_in_schema=False)
async def page_retry(document_id: int, actor: Controller, rt: Rt) -> RedirectResponse:
    return await _action(rt, document_id, _retry, actor, "Nouvel essai d'envoi programmé")
