"""Patient identities (INS, RNIV): the API and the identitovigilance pages, filtered to the reader's scope."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.flows import qualification
from opensegur.flows.dmp_consult import CONSENT_LABELS
from opensegur.identity.errors import IdentityError
from opensegur.identity.rniv import HighTrustDocument, IdentityStatus, LowTrustDocument, document_label
from opensegur.identity.traits import StrictTraits
from opensegur.security import access, audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store.models import AuditEvent, IdentityEvent, Patient, Structure
from opensegur.web import queries
from opensegur.web.deps import Rt, WebRuntime, allow, ensure_patient, grants, patient_filter, structure_filter
from opensegur.web.flash import redirect_with_message
from opensegur.web.patient_record import patient_sections
from opensegur.web.templating import render

router = APIRouter()

Reader = Annotated[Actor, Depends(allow(Action.IDENTITY_READ))]
Qualifier = Annotated[Actor, Depends(allow(Action.IDENTITY_QUALIFY))]
Merger = Annotated[Actor, Depends(allow(Action.IDENTITY_MERGE))]
# Who looked at this record: the access log the patient page shows (the "qui a consulté").
ACCESS_LOG_SIZE = 20


def _patient(s: Session, rt: WebRuntime, actor: Actor, action: Action, patient_id: int) -> Patient:
    p = s.get(Patient, patient_id)
    if p is None:
        raise HTTPException(404, "Patient inconnu")
    ensure_patient(s, rt, actor, action, p.id)
    return p


def _check_patient(rt: WebRuntime, actor: Actor, action: Action, patient_id: int) -> None:
    with rt.db.session() as s:
        _patient(s, rt, actor, action, patient_id)


# ---- API ------------------------------------------------------------------------------------------------------
@router.get("/api/v1/patients", tags=["identity"])
async def api_patients(
    actor: Reader,
    rt: Rt,
    ins: str | None = Query(None, description="matricule INS (15 caractères)"),
    ipp: str | None = Query(None, description="IPP local"),
    status: IdentityStatus | None = None,
    site: int | None = None,
    q: str | None = Query(None, description="nom ou prénom"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            rows, total = queries.search_patients(
                s,
                queries.PatientFilter(
                    ins=ins,
                    ipp=ipp,
                    status=status.value if status else None,
                    site=site,
                    q=q,
                    limit=limit,
                    offset=offset,
                    visible=patient_filter(rt, actor, Action.IDENTITY_READ),
                ),
            )
            if rows:
                audit.record(s, actor, "list_identities", None, "api", {"patients": [p.id for p in rows]})
            return {"total": total, "items": [queries.patient_json(p) for p in rows]}

    return await asyncio.to_thread(_q)


@router.get("/api/v1/patients/{patient_id}", tags=["identity"])
async def api_patient(patient_id: int, actor: Reader, rt: Rt) -> dict[str, Any]:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            p = _patient(s, rt, actor, Action.IDENTITY_READ, patient_id)
            audit.record(s, actor, "read_identity", p.id, "api")
            return queries.patient_json(p)

    return await asyncio.to_thread(_q)


@router.post("/api/v1/patients/{patient_id}/insi-search", tags=["identity"])
async def api_insi(patient_id: int, actor: Qualifier, rt: Rt) -> dict[str, Any]:
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_QUALIFY, patient_id)
    return await qualification.search_insi(rt.db, rt.insi, patient_id, actor.name)  # type: ignore[attr-defined]


@router.post("/api/v1/patients/{patient_id}/document-check", tags=["identity"])
async def api_document(
    patient_id: int, actor: Qualifier, rt: Rt, document: str = Form(...)
) -> dict[str, Any]:
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_QUALIFY, patient_id)
    status = await asyncio.to_thread(
        qualification.record_document_check, rt.db, patient_id, document, actor.name
    )
    return {"status": status}


# ---- pages ----------------------------------------------------------------------------------------------------
@router.get("/identites", response_class=HTMLResponse, include_in_schema=False)
async def page_list(
    request: Request,
    actor: Reader,
    rt: Rt,
    status: str = "",
    site: str = "",
    q: str = "",
    alertes: str = "",
    page: int = 1,
) -> HTMLResponse:
    per_page = 50
    page = min(max(page, 1), 100_000)

    def _q() -> dict[str, Any]:
        visible = patient_filter(rt, actor, Action.IDENTITY_READ)
        with rt.db.session() as s:
            f = queries.PatientFilter(
                status=status or None,
                site=int(site) if site.isdigit() and len(site) < 10 else None,
                q=q or None,
                alerts_only=bool(alertes),
                limit=per_page,
                offset=(page - 1) * per_page,
                visible=visible,
            )
            rows, total = queries.search_patients(s, f)
            if rows:
                audit.record(
                    s, actor, "list_identities", None, "identitovigilance", {"patients": [p.id for p in rows]}
                )
            alerts = queries.open_alerts(s, visible=visible)
            return {
                "patients": rows,
                "total": total,
                "metrics": queries.ins_metrics(s, visible=visible),
                "alerts": alerts,
                "sites": s.scalars(
                    select(Structure)
                    .where(
                        Structure.kind == "EG",
                        structure_filter(rt, actor, Action.IDENTITY_READ, Structure.id),
                    )
                    .order_by(Structure.name)
                ).all(),
                "alert_patients": {a.patient_id for a in queries.open_alerts(s, limit=1000, visible=visible)},
            }

    ctx = await asyncio.to_thread(_q)
    ctx.update(request=request, status=status, site=site, q=q, alertes=alertes, page=page, per_page=per_page)
    return render(request, "patients.html", ctx)


@router.get("/identites/{patient_id}", response_class=HTMLResponse, include_in_schema=False)
async def page_patient(request: Request, patient_id: int, actor: Reader, rt: Rt) -> HTMLResponse:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            p = _patient(s, rt, actor, Action.IDENTITY_READ, patient_id)
            audit.record(s, actor, "read_identity", p.id, "identitovigilance")
            insi = p.insi_state or {}
            sections = patient_sections(s, p.id)
            if not grants(rt, actor, Action.DOCUMENTS_READ):
                sections["patient_documents"] = None
            if not grants(rt, actor, Action.RESULTS_READ):
                sections["lab_results"], sections["lab_charts"] = None, None
            return {
                "p": p,
                "identifiers": list(p.identifiers),
                "site": p.structure,
                "events": s.scalars(
                    select(IdentityEvent)
                    .where(IdentityEvent.patient_id == p.id)
                    .order_by(IdentityEvent.at.desc(), IdentityEvent.id.desc())
                ).all(),
                "alerts": queries.open_alerts(s, p.id),
                "insi": insi,
                "differences": set(insi.get("differences") or []),
                "candidates": queries.duplicate_candidates(s, p)
                if grants(rt, actor, Action.IDENTITY_MERGE)
                else [],
                "pending": qualification.pending_search(s, p.id),
                "accesses": s.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.patient_id == p.id)
                    .order_by(AuditEvent.id.desc())
                    .limit(ACCESS_LOG_SIZE)
                ).all(),
                **sections,
            }

    ctx = await asyncio.to_thread(_q)
    ctx.update(
        request=request,
        high_trust=list(HighTrustDocument),
        low_trust=list(LowTrustDocument),
        may_qualify=grants(rt, actor, Action.IDENTITY_QUALIFY),
        may_merge=grants(rt, actor, Action.IDENTITY_MERGE),
        may_consult_dmp=grants(rt, actor, Action.DMP_CONSULT),
        CONSENT_LABELS=CONSENT_LABELS,
    )
    return render(request, "patient.html", ctx)


def _back(patient_id: int, msg: str, actor: Actor) -> RedirectResponse:
    return redirect_with_message(f"/identites/{patient_id}", msg, actor)


@router.post("/identites/{patient_id}/insi", include_in_schema=False)
async def page_insi(patient_id: int, actor: Qualifier, rt: Rt) -> RedirectResponse:
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_QUALIFY, patient_id)
    state = await qualification.search_insi(rt.db, rt.insi, patient_id, actor.name)  # type: ignore[attr-defined]
    if state.get("state") == "unavailable":
        return _back(patient_id, state["message"], actor)
    if state.get("state") == "invalid_traits":
        return _back(patient_id, "Traits locaux invalides : " + state["message"], actor)
    return _back(patient_id, f"Réponse INSi : {state.get('code')} — {state.get('label')}", actor)


@router.post("/identites/{patient_id}/traits-insi", include_in_schema=False)
async def page_accept(patient_id: int, actor: Qualifier, rt: Rt) -> RedirectResponse:
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_QUALIFY, patient_id)
    try:
        await asyncio.to_thread(qualification.accept_insi_traits, rt.db, patient_id, actor.name)
    except IdentityError as exc:
        return _back(patient_id, exc.message, actor)
    return _back(patient_id, "Traits INSi repris dans l'identité locale", actor)


@router.post("/identites/{patient_id}/piece", include_in_schema=False)
async def page_document(
    patient_id: int, actor: Qualifier, rt: Rt, document: str = Form(...)
) -> RedirectResponse:
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_QUALIFY, patient_id)
    try:
        status = await asyncio.to_thread(
            qualification.record_document_check, rt.db, patient_id, document, actor.name
        )
    except IdentityError as exc:
        return _back(patient_id, exc.message, actor)
    return _back(
        patient_id,
        f"Pièce enregistrée : {document_label(document)}. Statut : {IdentityStatus(status).label}",
        actor,
    )


@router.post("/identites/{patient_id}/traits", include_in_schema=False)
async def page_traits(
    patient_id: int,
    actor: Qualifier,
    rt: Rt,
    birth_name: str = Form(...),
    first_names: str = Form(...),
    birth_date: str = Form(...),
    sex: str = Form(...),
    birth_place: str = Form(""),
) -> RedirectResponse:
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_QUALIFY, patient_id)
    try:
        traits = StrictTraits.build(birth_name, first_names, birth_date, sex, birth_place or None)
        status = await asyncio.to_thread(
            qualification.change_strict_traits, rt.db, patient_id, traits, actor.name
        )
    except IdentityError as exc:
        return _back(patient_id, exc.message, actor)
    return _back(patient_id, f"Traits enregistrés. Statut : {IdentityStatus(status).label}", actor)


@router.post("/identites/{patient_id}/fusion", include_in_schema=False)
async def page_merge(patient_id: int, actor: Merger, rt: Rt, source_id: int = Form(...)) -> RedirectResponse:
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_MERGE, patient_id)
    await asyncio.to_thread(_check_patient, rt, actor, Action.IDENTITY_MERGE, source_id)
    try:
        await asyncio.to_thread(qualification.merge, rt.db, patient_id, source_id, actor.name)
    except IdentityError as exc:
        return _back(patient_id, exc.message, actor)
    return _back(patient_id, f"Identité n° {source_id} fusionnée dans celle-ci", actor)


@router.post("/identites/{patient_id}/bris-de-glace", include_in_schema=False)
async def page_break_glass(
    patient_id: int,
    actor: Annotated[Actor, Depends(allow(Action.BREAK_GLASS))],
    rt: Rt,
    motif: str = Form(""),
    suite: str = Form("", max_length=200),
) -> RedirectResponse:
    """Emergency access outside one's scope: a motif is mandatory and the access is traced and time-bound. Then
    back to ``suite``, the refused page, when it is a page of this patient's record (never another address)."""

    def _do() -> None:
        with rt.db.session() as s:
            if s.get(Patient, patient_id) is None:
                raise HTTPException(404, "Patient inconnu")
            access.break_glass(s, actor, patient_id, motif)

    try:
        await asyncio.to_thread(_do)
    except ValueError as exc:
        return redirect_with_message("/identites", str(exc), actor)
    record = f"/identites/{patient_id}"
    own_page = suite.startswith(record + "/") and not (
        {"", ".", ".."} & set(suite[len(record) + 1 :].split("/"))
    )
    target = suite if suite == record or own_page else record
    return redirect_with_message(target, "Bris de glace tracé : accès ouvert pour 4 heures", actor)
