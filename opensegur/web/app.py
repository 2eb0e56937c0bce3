"""HTTP edge: the REST API under /api/v1 and the clinicians' pages (in French).

Each route declares the permission it needs through ``allow(...)``; today the decision is the bearer token for
system accounts, and the same hook will carry the authorisation matrix and Pro Santé Connect sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from opensegur.flows import qualification
from opensegur.identity.errors import IdentityError
from opensegur.identity.professionals import idnat_struct_from_finess
from opensegur.identity.rniv import HighTrustDocument, IdentityStatus, LowTrustDocument, document_label
from opensegur.identity.traits import StrictTraits
from opensegur.store import jobs
from opensegur.store.models import AuditEvent, IdentityEvent, Job, Patient, Professional, Structure
from opensegur.web import queries
from opensegur.web.annuaire import create_annuaire_web_router
from opensegur.web.auth import bearer_accepted, demo_user
from opensegur.web.documents import documents_router
from opensegur.web.mhd import mhd_router
from opensegur.web.mss_outbound_api import create_mss_outbound_router
from opensegur.web.mssante import create_mssante_router, patient_sections

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))

STATUS_COLOURS = {"PROV": "#b45309", "RECUP": "#2563eb", "VALI": "#7c3aed", "QUAL": "#15803d"}
ALERT_LABELS = {
    "duplicate": "Doublon probable",
    "trait_conflict": "Conflit de traits",
    "status_conflict": "Statut divergent",
    "insi_unavailable": "INSi injoignable",
    "ins_conflict": "INS et traits discordants",
}


def allow(permission: str) -> Callable[[Request], str]:
    """Route guard: returns the actor's name, or refuses with 401."""

    def check(request: Request) -> str:
        accepted = bearer_accepted(request) if request.url.path.startswith("/api/") else None
        if accepted is None:
            return demo_user(request)
        if not accepted:
            raise HTTPException(401, f"Jeton d'accès absent ou invalide (permission {permission})")
        return "api"

    return check


Actor = Annotated[str, Depends(allow("identity:read"))]
Writer = Annotated[str, Depends(allow("identity:write"))]


def create_app(runtime: Any) -> FastAPI:
    app = FastAPI(
        title="OpenSégur",
        version="0.1.0",
        description="Plateforme Ségur Vague 2 : identités INS, flux DMP et MSSanté. API REST et pages.",
    )
    app.state.runtime = runtime
    db = runtime.db
    TEMPLATES.env.globals.update(
        STATUS_COLOURS=STATUS_COLOURS,
        ALERT_LABELS=ALERT_LABELS,
        Status=IdentityStatus,
        document_label=document_label,
    )

    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return asyncio.to_thread(fn, *args)

    @app.exception_handler(IdentityError)
    async def identity_error(request: Request, exc: IdentityError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "message": exc.message, "field": exc.field}, status_code=422)

    # ---- health and sandbox -------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        if not runtime.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", "mllp_port": runtime.mllp_port})

    @app.get("/sandbox/endpoints", tags=["sandbox"])
    async def sandbox_endpoints() -> JSONResponse:
        if not runtime.endpoints:
            raise HTTPException(404, "Le bac à sable n'est pas démarré (--no-sandbox)")
        return JSONResponse(runtime.endpoints)

    # ---- REST API -----------------------------------------------------------------------------------
    @app.get("/api/v1/patients", tags=["identity"])
    async def api_patients(
        actor: Actor,
        ins: str | None = Query(None, description="matricule INS (15 caractères)"),
        ipp: str | None = Query(None, description="IPP local"),
        status: IdentityStatus | None = None,
        site: int | None = None,
        q: str | None = Query(None, description="nom ou prénom"),
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict[str, Any]:
        def _q() -> dict[str, Any]:
            with db.session() as s:
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
                    ),
                )
                return {"total": total, "items": [queries.patient_json(p) for p in rows]}

        return await run(_q)

    @app.get("/api/v1/patients/{patient_id}", tags=["identity"])
    async def api_patient(patient_id: int, actor: Actor) -> dict[str, Any]:
        def _q() -> dict[str, Any]:
            with db.session() as s:
                p = s.get(Patient, patient_id)
                if p is None:
                    raise HTTPException(404, "Patient inconnu")
                s.add(AuditEvent(actor=actor, action="read_identity", patient_id=p.id, reason="api"))
                return queries.patient_json(p)

        return await run(_q)

    @app.post("/api/v1/patients/{patient_id}/insi-search", tags=["identity"])
    async def api_insi(patient_id: int, actor: Writer) -> dict[str, Any]:
        await run(_get_patient, db, patient_id)
        return await qualification.search_insi(db, runtime.insi, patient_id, actor)

    @app.post("/api/v1/patients/{patient_id}/document-check", tags=["identity"])
    async def api_document(patient_id: int, actor: Writer, document: str = Form(...)) -> dict[str, Any]:
        await run(_get_patient, db, patient_id)
        status = await run(qualification.record_document_check, db, patient_id, document, actor)
        return {"status": status}

    @app.get("/api/v1/structures", tags=["structures"])
    async def api_structures(actor: Actor) -> list[dict[str, Any]]:
        """The GHT: legal entities (FINESS juridique) with their sites (FINESS géographique) and units."""

        def _q() -> list[dict[str, Any]]:
            with db.session() as s:
                rows = s.scalars(select(Structure).options(selectinload(Structure.units))).all()
                sites = [r for r in rows if r.kind == "EG"]
                return [
                    {
                        "id": ej.id,
                        "finess_juridique": ej.finess,
                        "idnat_struct": idnat_struct_from_finess(ej.finess, check_key=False),
                        "name": ej.name,
                        "sites": [
                            {
                                "id": site.id,
                                "finess_geographique": site.finess,
                                "idnat_struct": idnat_struct_from_finess(site.finess, check_key=False),
                                "name": site.name,
                                "ipp_authority": {
                                    "namespace": site.ipp_authority,
                                    "oid": site.ipp_authority_oid,
                                },
                                "units": [{"code": u.code, "name": u.name} for u in site.units],
                            }
                            for site in sites
                            if site.parent_id == ej.id
                        ],
                    }
                    for ej in rows
                    if ej.kind == "EJ"
                ]

        return await run(_q)

    @app.get("/api/v1/professionals", tags=["structures"])
    async def api_professionals(actor: Actor, site: int | None = None) -> list[dict[str, Any]]:
        def _q() -> list[dict[str, Any]]:
            with db.session() as s:
                stmt = select(Professional).order_by(Professional.family_name)
                if site is not None:
                    stmt = stmt.where(Professional.structure_id == site)
                return [
                    {
                        "id": p.id,
                        "idnat_ps": p.idnat_ps,
                        "id_kind": p.id_kind,
                        "family_name": p.family_name,
                        "given_name": p.given_name,
                        "profession": p.profession,
                        "site_id": p.structure_id,
                    }
                    for p in s.scalars(stmt)
                ]

        return await run(_q)

    @app.get("/api/v1/metrics/ins", tags=["ops"])
    async def api_metrics(actor: Actor) -> dict[str, Any]:
        def _q() -> dict[str, Any]:
            with db.session() as s:
                return queries.ins_metrics(s)

        return await run(_q)

    @app.get("/api/v1/jobs", tags=["ops"])
    async def api_jobs(
        actor: Actor, status: str | None = None, limit: int = Query(100, le=1000)
    ) -> list[dict[str, Any]]:
        def _q() -> list[dict[str, Any]]:
            with db.session() as s:
                stmt = select(Job).order_by(Job.id.desc()).limit(limit)
                if status:
                    stmt = stmt.where(Job.status == status)
                return [
                    {
                        "id": j.id,
                        "kind": j.kind,
                        "status": j.status,
                        "attempts": j.attempts,
                        "last_error": j.last_error,
                        "patient_id": j.patient_id,
                        "run_after": j.run_after.isoformat(),
                    }
                    for j in s.scalars(stmt)
                ]

        return await run(_q)

    @app.post("/api/v1/jobs/{job_id}/retry", tags=["ops"])
    async def api_retry(job_id: int, actor: Writer) -> dict[str, Any]:
        def _q() -> bool:
            with db.session() as s:
                return jobs.retry_dead(s, job_id)

        if not await run(_q):
            raise HTTPException(409, "Seul un travail en échec définitif peut être relancé")
        runtime.workers.wake()
        return {"retried": job_id}

    # ---- pages ----------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/identites", status_code=303)

    @app.get("/identites", response_class=HTMLResponse, include_in_schema=False)
    async def page_list(
        request: Request,
        actor: Actor,
        status: str = "",
        site: str = "",
        q: str = "",
        alertes: str = "",
        page: int = 1,
    ) -> HTMLResponse:
        per_page = 50

        def _q() -> dict[str, Any]:
            with db.session() as s:
                f = queries.PatientFilter(
                    status=status or None,
                    site=int(site) if site.isdigit() else None,
                    q=q or None,
                    alerts_only=bool(alertes),
                    limit=per_page,
                    offset=(max(page, 1) - 1) * per_page,
                )
                rows, total = queries.search_patients(s, f)
                return {
                    "patients": rows,
                    "total": total,
                    "metrics": queries.ins_metrics(s),
                    "alerts": queries.open_alerts(s),
                    "sites": s.scalars(
                        select(Structure).where(Structure.kind == "EG").order_by(Structure.name)
                    ).all(),
                    "alert_patients": {a.patient_id for a in queries.open_alerts(s, limit=1000)},
                }

        ctx = await run(_q)
        ctx.update(
            request=request,
            status=status,
            site=site,
            q=q,
            alertes=alertes,
            page=max(page, 1),
            per_page=per_page,
        )
        return TEMPLATES.TemplateResponse(request, "patients.html", ctx)

    @app.get("/identites/{patient_id}", response_class=HTMLResponse, include_in_schema=False)
    async def page_patient(request: Request, patient_id: int, actor: Actor, msg: str = "") -> HTMLResponse:
        def _q() -> dict[str, Any]:
            with db.session() as s:
                p = s.get(Patient, patient_id)
                if p is None:
                    raise HTTPException(404, "Patient inconnu")
                s.add(
                    AuditEvent(
                        actor=actor, action="read_identity", patient_id=p.id, reason="identitovigilance"
                    )
                )
                insi = p.insi_state or {}
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
                    "candidates": queries.duplicate_candidates(s, p),
                    "pending": qualification.pending_search(s, p.id),
                    **patient_sections(s, p.id),
                }

        ctx = await run(_q)
        ctx.update(
            request=request, msg=msg, high_trust=list(HighTrustDocument), low_trust=list(LowTrustDocument)
        )
        return TEMPLATES.TemplateResponse(request, "patient.html", ctx)

    def back(patient_id: int, msg: str) -> RedirectResponse:
        from urllib.parse import quote

        return RedirectResponse(f"/identites/{patient_id}?msg={quote(msg)}", status_code=303)

    @app.post("/identites/{patient_id}/insi", include_in_schema=False)
    async def page_insi(patient_id: int, actor: Writer) -> RedirectResponse:
        await run(_get_patient, db, patient_id)
        state = await qualification.search_insi(db, runtime.insi, patient_id, actor)
        if state.get("state") == "unavailable":
            runtime.workers.wake()
            return back(patient_id, state["message"])
        if state.get("state") == "invalid_traits":
            return back(patient_id, "Traits locaux invalides : " + state["message"])
        return back(patient_id, f"Réponse INSi : {state.get('code')} — {state.get('label')}")

    @app.post("/identites/{patient_id}/traits-insi", include_in_schema=False)
    async def page_accept(patient_id: int, actor: Writer) -> RedirectResponse:
        try:
            await run(qualification.accept_insi_traits, db, patient_id, actor)
        except IdentityError as exc:
            return back(patient_id, exc.message)
        return back(patient_id, "Traits INSi repris dans l'identité locale")

    @app.post("/identites/{patient_id}/piece", include_in_schema=False)
    async def page_document(patient_id: int, actor: Writer, document: str = Form(...)) -> RedirectResponse:
        try:
            status = await run(qualification.record_document_check, db, patient_id, document, actor)
        except IdentityError as exc:
            return back(patient_id, exc.message)
        return back(
            patient_id,
            f"Pièce enregistrée : {document_label(document)}. Statut : {IdentityStatus(status).label}",
        )

    @app.post("/identites/{patient_id}/traits", include_in_schema=False)
    async def page_traits(
        patient_id: int,
        actor: Writer,
        birth_name: str = Form(...),
        first_names: str = Form(...),
        birth_date: str = Form(...),
        sex: str = Form(...),
        birth_place: str = Form(""),
    ) -> RedirectResponse:
        try:
            traits = StrictTraits.build(birth_name, first_names, birth_date, sex, birth_place or None)
            status = await run(qualification.change_strict_traits, db, patient_id, traits, actor)
        except IdentityError as exc:
            return back(patient_id, exc.message)
        return back(patient_id, f"Traits enregistrés. Statut : {IdentityStatus(status).label}")

    @app.post("/identites/{patient_id}/fusion", include_in_schema=False)
    async def page_merge(patient_id: int, actor: Writer, source_id: int = Form(...)) -> RedirectResponse:
        try:
            await run(qualification.merge, db, patient_id, source_id, actor)
        except IdentityError as exc:
            return back(patient_id, exc.message)
        return back(patient_id, f"Identité n° {source_id} fusionnée dans celle-ci")

    app.include_router(documents_router(runtime))
    app.include_router(mhd_router(runtime))
    app.include_router(create_mssante_router(runtime))
    app.include_router(create_mss_outbound_router(runtime))
    app.include_router(create_annuaire_web_router(lambda: runtime.annuaire))
    return app


def _get_patient(db: Any, patient_id: int) -> None:
    with db.session() as s:
        if s.get(Patient, patient_id) is None:
            raise HTTPException(404, "Patient inconnu")
