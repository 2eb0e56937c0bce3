"""What every page that consults a patient's DMP shares: who asks and in which access mode (normal, bris de glace,
centre 15), the checks of the platform's own data before the DMP is called (qualified INS, consent, RPPS), the
audit entry of each consultation, and the page that says why the DMP was not consulted. Used by the DMP tab's
pages (``routes.dmp``) and the imaging tab (``routes.dmp_imaging``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.connectors.dmp_client import vihf_specialty
from opensegur.flows.dmp_consult import (
    ConsultationRefused,
    Consulter,
    DmpConsultPort,
    consulter_for,
    patient_cx,
    with_specialty,
)
from opensegur.flows.dmp_exchanges import DmpRejectedError, DmpUnavailableError
from opensegur.security import access, audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store.models import AuditEvent, Patient
from opensegur.web.deps import Directory, Dmp, PatientRefused, Rt, WebRuntime, allow, matrix_of
from opensegur.web.templating import render

_T = TypeVar("_T")

Consultant = Annotated[Actor, Depends(allow(Action.DMP_CONSULT))]


@dataclass
class Target:
    patient: Patient
    cx: str
    consulter: Consulter
    last_visit: datetime | None = None  # this professional's previous consultation of this patient's DMP


async def prepare_target(
    rt: WebRuntime, directory: AnnuaireClient | None, actor: Actor, patient_id: int, path: str, what: str
) -> Target:
    """The patient and the professional for one DMP call, or ConsultationRefused with the French reason (also
    written in the audit trail)."""
    target = await asyncio.to_thread(_local_target, rt, actor, patient_id, path, what)
    detail = _mode_detail(target.consulter.purpose_of_use)
    try:
        target.consulter = await with_specialty(target.consulter, partial(vihf_specialty, directory))
    except ConsultationRefused as exc:
        await asyncio.to_thread(audit_dmp, rt, actor, patient_id, what, {**detail, "refus": exc.reason})
        raise
    await asyncio.to_thread(audit_dmp, rt, actor, patient_id, what, detail)
    return target


def audit_dmp(rt: WebRuntime, actor: Actor, patient_id: int, what: str, detail: dict[str, str]) -> None:
    with rt.db.session() as s:
        audit.record(s, actor, what, patient_id, "dmp", detail or None)


def _local_target(rt: WebRuntime, actor: Actor, patient_id: int, path: str, what: str) -> Target:
    """What the platform's own data decide: access, INS, consent, RPPS, profession, and the access mode — centre 15
    for a role granted ``dmp.regulation`` on this patient, bris de glace outside the care relationship, else
    normal. A refusal is audited in the transaction of the access check; a consultation, once the professional's
    specialty is known too."""
    with rt.db.session() as s:
        p = s.get(Patient, patient_id)
        if p is None:
            raise HTTPException(404, "Patient inconnu")
        mode = _mode(s, rt, actor, p.id, path)
        try:
            consulter = consulter_for(actor.roles, actor.rpps, actor.display_name, p, mode)
        except ConsultationRefused as exc:
            audit.record(s, actor, what, p.id, "dmp", {"refus": exc.reason, **_mode_detail(mode)})
            refused = exc
        else:
            assert p.ins_matricule and p.ins_oid
            last_visit = _last_visit(s, actor, p.id) if what == "consult_dmp" else None
            s.expunge(p)
            return Target(p, patient_cx(p.ins_matricule, p.ins_oid), consulter, last_visit)
    # Raised once the transaction committed, so the refusal stays in the audit trail.
    raise refused


def _mode(s: Session, rt: WebRuntime, actor: Actor, patient_id: int, path: str) -> str:
    """The DMP's access mode of this consultation: centre 15 for a role granted ``dmp.regulation`` on this patient
    (no care relationship needed), normal within the ``dmp.consult`` scopes, bris de glace when the actor broke
    the glass on this patient; else PatientRefused (as ``ensure_patient``)."""
    matrix = matrix_of(rt)
    regulation = matrix.scopes(actor.assignments, Action.DMP_REGULATION)
    if regulation and access.patient_allowed(s, regulation, patient_id):
        return "centre_15"
    if access.patient_allowed(s, matrix.scopes(actor.assignments, Action.DMP_CONSULT), patient_id):
        return "normal"
    if access.glass_broken(s, actor, patient_id, datetime.now(UTC)):
        return "bris_de_glace"
    raise PatientRefused(patient_id, Action.DMP_CONSULT, path)


def _mode_detail(mode: str) -> dict[str, str]:
    return {} if mode == "normal" else {"mode": mode}


def _last_visit(s: Session, actor: Actor, patient_id: int) -> datetime | None:
    """When this professional last consulted this DMP, from the audit trail (refusals do not count)."""
    recent = s.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.action == "consult_dmp",
            AuditEvent.patient_id == patient_id,
            AuditEvent.actor == actor.name,
        )
        .order_by(AuditEvent.id.desc())
        .limit(20)
    )
    at = next((e.at for e in recent if not (e.detail or {}).get("refus")), None)
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


ISO_DAY = r"^(\d{4}-\d{2}-\d{2})?$"
_NO_DMP = "Aucun DMP n'est configuré sur cette plateforme (dmp_iti18_url, dmp_td02_url)"
DMP_ERRORS = (DmpRejectedError, DmpUnavailableError)


@dataclass(frozen=True)
class DmpCall:
    """What every DMP page needs: the request, the professional, and the platform's DMP and Annuaire Santé."""

    request: Request
    actor: Actor
    rt: WebRuntime
    dmp: DmpConsultPort | None
    directory: AnnuaireClient | None


async def _call(request: Request, actor: Consultant, rt: Rt, dmp: Dmp, directory: Directory) -> DmpCall:
    # async: a plain function would be run in the thread pool for nothing
    return DmpCall(request, actor, rt, dmp, directory)


Call = Annotated[DmpCall, Depends(_call)]


async def consultation(
    call: DmpCall, page: str, ctx: dict[str, Any], what: str
) -> tuple[Target, DmpConsultPort] | Response:
    """The professional and the DMP for one consultation page, or the page that says why there is none (409: the
    patient's or the account's state; 503: no DMP configured). Fills ``ctx`` with the patient."""
    try:
        target = await prepare_target(
            call.rt, call.directory, call.actor, ctx["patient_id"], call.request.url.path, what
        )
    except ConsultationRefused as exc:
        return render(call.request, page, {**ctx, "refusal": exc.reason}, status_code=409)
    ctx["p"] = target.patient
    ctx["mode"] = target.consulter.purpose_of_use
    if call.dmp is None:
        return render(call.request, page, {**ctx, "error": _NO_DMP}, status_code=503)
    return target, call.dmp


async def consult(
    call: DmpCall,
    page: str,
    ctx: dict[str, Any],
    what: str,
    ask: Callable[[Target, DmpConsultPort], Awaitable[_T]],
) -> _T | Response:
    """``ask`` of the DMP for this consultation page, or the page that says why not: refused or unconfigured (as
    ``_consultation``), or the DMP's refusal or silence (502)."""
    ready = await consultation(call, page, ctx, what)
    if isinstance(ready, Response):
        return ready
    try:
        return await ask(*ready)
    except DMP_ERRORS as exc:
        return render(call.request, page, {**ctx, "error": dmp_error(exc)}, status_code=502)


def dmp_error(exc: Exception) -> str:
    if isinstance(exc, DmpRejectedError):
        return f"Le DMP a refusé la demande ({exc.code}) : {exc.message}"
    return f"Le DMP ne répond pas, réessayez dans un instant ({exc})"
