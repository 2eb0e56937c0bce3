"""Operations: health probe, sandbox addresses, the GHT's structures and professionals, figures and jobs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from opensegur.identity.professionals import idnat_struct_from_finess
from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store import jobs
from opensegur.store.models import Job, Professional, Structure
from opensegur.web import queries
from opensegur.web.deps import Rt, allow, public

router = APIRouter()

OpsReader = Annotated[Actor, Depends(allow(Action.OPS_READ))]
Admin = Annotated[Actor, Depends(allow(Action.ADMIN))]


@router.get("/healthz", tags=["ops"])
async def healthz(
    rt: Rt, _: Annotated[None, Depends(public("sonde de supervision, sans donnée"))]
) -> JSONResponse:
    if not getattr(rt, "ready", True):
        return JSONResponse({"status": "starting"}, status_code=503)
    warm = getattr(rt, "validation_warm", None)
    validation = "none" if warm is None else "warm" if warm else "warming"
    return JSONResponse(
        {"status": "ok", "mllp_port": getattr(rt, "mllp_port", None), "validation": validation}
    )


@router.get("/sandbox/endpoints", tags=["sandbox"])
async def sandbox_endpoints(
    rt: Rt, _: Annotated[None, Depends(public("bac à sable de démonstration : adresses des simulateurs"))]
) -> JSONResponse:
    endpoints = getattr(rt, "endpoints", None)
    if not endpoints:
        raise HTTPException(404, "Le bac à sable n'est pas démarré (--no-sandbox)")
    return JSONResponse(endpoints)


@router.get("/", include_in_schema=False)
async def home(_: Annotated[None, Depends(public("renvoi vers la liste des identités"))]) -> RedirectResponse:
    return RedirectResponse("/identites", status_code=303)


@router.get("/api/v1/structures", tags=["structures"])
async def api_structures(actor: OpsReader, rt: Rt) -> list[dict[str, Any]]:
    """The GHT: legal entities (FINESS juridique) with their sites (FINESS géographique) and units."""

    def _q() -> list[dict[str, Any]]:
        with rt.db.session() as s:
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
                            "ipp_authority": {"namespace": site.ipp_authority, "oid": site.ipp_authority_oid},
                            "units": [{"code": u.code, "name": u.name} for u in site.units],
                        }
                        for site in sites
                        if site.parent_id == ej.id
                    ],
                }
                for ej in rows
                if ej.kind == "EJ"
            ]

    return await asyncio.to_thread(_q)


@router.get("/api/v1/professionals", tags=["structures"])
async def api_professionals(
    actor: Annotated[Actor, Depends(allow(Action.DIRECTORY_READ))], rt: Rt, site: int | None = None
) -> list[dict[str, Any]]:
    def _q() -> list[dict[str, Any]]:
        with rt.db.session() as s:
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

    return await asyncio.to_thread(_q)


@router.get("/api/v1/metrics/ins", tags=["ops"])
async def api_metrics(actor: OpsReader, rt: Rt) -> dict[str, Any]:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            return queries.ins_metrics(s)

    return await asyncio.to_thread(_q)


@router.get("/api/v1/jobs", tags=["ops"])
async def api_jobs(
    actor: OpsReader, rt: Rt, status: str | None = None, limit: int = Query(100, ge=1, le=1000)
) -> list[dict[str, Any]]:
    def _q() -> list[dict[str, Any]]:
        with rt.db.session() as s:
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

    return await asyncio.to_thread(_q)


@router.post("/api/v1/jobs/{job_id}/retry", tags=["ops"])
async def api_retry(job_id: int, actor: Admin, rt: Rt) -> dict[str, Any]:
    def _q() -> bool:
        with rt.db.session() as s:
            retried = jobs.retry_dead(s, job_id)
            if retried:
                audit.record(s, actor, "retry_job", None, "administration", {"job_id": job_id})
            return retried

    if not await asyncio.to_thread(_q):
        raise HTTPException(409, "Seul un travail en échec définitif peut être relancé")
    return {"retried": job_id}
