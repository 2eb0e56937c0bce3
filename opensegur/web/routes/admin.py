"""Administration pages in French: the authorisation matrix, the accounts to watch, and the audit trail (filter,
CSV export, chain verification). Every read of the trail is itself traced."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from opensegur.hospital.diff import diff_configs
from opensegur.hospital.loader import ConfigInvalid, load_files
from opensegur.ops.doctor import Verdict, diagnose
from opensegur.security import audit, provisioning
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action, Assignment
from opensegur.store.models import (
    Account,
    AuditEvent,
    AuditSeal,
    ConfigVersion,
    WebauthnCredential,
    WebSession,
)
from opensegur.web.deps import Rt, allow, matrix_of
from opensegur.web.flash import redirect_with_message
from opensegur.web.templating import render

router = APIRouter(include_in_schema=False)

Admin = Annotated[Actor, Depends(allow(Action.ADMIN))]
AuditReader = Annotated[Actor, Depends(allow(Action.AUDIT_READ))]

# An account nobody has used for this long is "dormant": HospiConnect's access reviews ask for them.
DORMANT_AFTER = timedelta(days=90)
AUDIT_PAGE = 200
CSV_MAX_ROWS = 100_000


@router.get("/admin/matrice", response_class=HTMLResponse)
async def page_matrix(request: Request, actor: Admin, rt: Rt) -> HTMLResponse:
    matrix = matrix_of(rt)
    return render(
        request, "admin_matrix.html", {"request": request, "actions": list(Action), "rows": matrix.table()}
    )


def _account_rows(s: Session, now: datetime) -> list[dict[str, Any]]:
    keys = dict(
        s.execute(
            select(WebauthnCredential.account_id, func.count())
            .where(WebauthnCredential.revoked_at.is_(None))
            .group_by(WebauthnCredential.account_id)
        ).all()
    )
    live = dict(
        s.execute(
            select(WebSession.account_id, func.count())
            .where(WebSession.revoked_at.is_(None), WebSession.expires_at > now)
            .group_by(WebSession.account_id)
        ).all()
    )
    rows = []
    for a in s.scalars(select(Account).order_by(Account.login)):
        last = (
            a.last_login_at.replace(tzinfo=UTC)
            if a.last_login_at and not a.last_login_at.tzinfo
            else a.last_login_at
        )
        second = bool(a.totp_secret) or keys.get(a.id, 0) > 0
        rows.append(
            {
                "a": a,
                "assignments": [Assignment.from_json(x) for x in a.assignments],
                "second_factor": ("TOTP" if a.totp_secret else "")
                + (f" · {keys[a.id]} clé(s) FIDO2" if keys.get(a.id) else ""),
                "no_second_factor": a.active and not second and a.psc_sub is None,
                "dormant": a.active and (last is None or now - last > DORMANT_AFTER),
                "departed_active": a.active and a.departed_at is not None,
                "sessions": live.get(a.id, 0),
                "last_login": last,
            }
        )
    return rows


@router.get("/admin/deploiement", response_class=HTMLResponse)
async def page_deployment(request: Request, actor: Admin, rt: Rt) -> HTMLResponse:
    """``opensegur doctor`` as a page: each link tested now, from this server, with what to fix."""
    checks = await diagnose(rt.settings, endpoints=getattr(rt, "endpoints", None))
    failed = sum(c.verdict is Verdict.FAILED for c in checks)
    await asyncio.to_thread(_record_check, rt, actor, failed)
    ctx = {"request": request, "checks": checks, "failed": failed, "at": datetime.now(UTC)}
    return render(request, "admin_deployment.html", ctx)


def _record_check(rt: Any, actor: Actor, failed: int) -> None:
    with rt.db.session() as s:
        audit.record_admin(s, actor, "deployment_check", {"echecs": failed})


@router.get("/admin/comptes", response_class=HTMLResponse)
async def page_accounts(request: Request, actor: Admin, rt: Rt) -> HTMLResponse:
    def _q() -> list[dict[str, Any]]:
        with rt.db.session() as s:
            return _account_rows(s, datetime.now(UTC))

    rows = await asyncio.to_thread(_q)
    ctx = {
        "request": request,
        "rows": rows,
        "without_2fa": [r for r in rows if r["no_second_factor"]],
        "dormant": [r for r in rows if r["dormant"]],
        "departed": [r for r in rows if r["departed_active"]],
    }
    return render(request, "admin_accounts.html", ctx)


@router.post("/admin/comptes/{account_id}/desactiver")
async def deactivate_account(
    account_id: int, actor: Admin, rt: Rt, motif: str = Form("", max_length=200)
) -> RedirectResponse:
    """Departure or compromise: the account is closed and its sessions end at once."""

    def _do() -> str:
        with rt.db.session() as s:
            account = s.get(Account, account_id)
            if account is None:
                raise HTTPException(404, "Compte inconnu")
            # A departure: sessions end and the tokens this person created are revoked, at once.
            provisioning.depart(s, account, motif or "désactivation par l'administration", by=actor)
            return account.login

    login = await asyncio.to_thread(_do)
    return redirect_with_message(
        "/admin/comptes",
        f"Compte « {login} » désactivé : sessions fermées, jetons qu'il a créés révoqués",
        actor,
    )


# ---- configuration versions ----------------------------------------------------------------------------------
def _versions(s: Session) -> list[dict[str, Any]]:
    """Every applied version, newest first, each with what changed since the one before it."""
    rows = s.scalars(select(ConfigVersion).order_by(ConfigVersion.id)).all()
    out: list[dict[str, Any]] = []
    previous = None
    for v in rows:
        try:
            config = load_files(v.files)
        except ConfigInvalid as exc:  # a version applied by an older release that this one reads differently
            out.append({"v": v, "changes": [f"illisible par cette version : {p}" for p in exc.problems]})
            continue
        out.append({"v": v, "changes": diff_configs(previous, config)})
        previous = config
    return out[::-1]


@router.get("/admin/configuration", response_class=HTMLResponse)
async def page_configuration(request: Request, actor: Admin, rt: Rt) -> HTMLResponse:
    def _q() -> list[dict[str, Any]]:
        with rt.db.session() as s:
            return _versions(s)

    ctx = {
        "request": request,
        "versions": await asyncio.to_thread(_q),
        "reloadable": getattr(rt, "reload_config", None) is not None,
        "source": str(rt.settings.config_dir or ""),
    }
    return render(request, "admin_configuration.html", ctx)


@router.post("/admin/configuration/recharger")
async def reload_configuration(actor: Admin, rt: Rt) -> RedirectResponse:
    """Re-read the configuration directory and apply it without restart (as SIGHUP does), in the admin's name."""
    reload = getattr(rt, "reload_config", None)
    if reload is None:
        return redirect_with_message(
            "/admin/configuration", "Aucun répertoire de configuration (--config)", actor
        )
    try:
        result = await reload(actor.name)
    except ConfigInvalid as exc:
        shown = " ; ".join(str(p) for p in exc.problems[:5])
        return redirect_with_message(
            "/admin/configuration", f"Configuration refusée, la précédente reste en vigueur : {shown}", actor
        )
    if result is None or result.version_id is None:
        return redirect_with_message(
            "/admin/configuration", "Aucun changement : la configuration est à jour", actor
        )
    return redirect_with_message(
        "/admin/configuration",
        f"Version {result.version_id} appliquée" + "".join(f" — {w}" for w in result.warnings),
        actor,
    )


# ---- audit trail ----------------------------------------------------------------------------------------------
def _audit_query(
    patient: int | None, who: str, action: str, start: date | None, end: date | None
) -> Select[AuditEvent, AuditSeal]:
    stmt = select(AuditEvent, AuditSeal).outerjoin(AuditSeal, AuditSeal.event_id == AuditEvent.id)
    if patient is not None:
        stmt = stmt.where(AuditEvent.patient_id == patient)
    if who.strip():
        stmt = stmt.where(AuditEvent.actor == who.strip())
    if action.strip():
        stmt = stmt.where(AuditEvent.action == action.strip())
    if start is not None:
        stmt = stmt.where(AuditEvent.at >= datetime(start.year, start.month, start.day, tzinfo=UTC))
    if end is not None:
        stmt = stmt.where(
            AuditEvent.at < datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        )
    return stmt.order_by(AuditEvent.id.desc())


Filters = dict[str, Any]


def _filters(
    patient: int | None = Query(None, ge=1, le=2**31 - 1),
    qui: str = Query("", max_length=100),
    action: str = Query("", max_length=64),
    du: date | None = None,
    au: date | None = None,
) -> Filters:
    return {"patient": patient, "who": qui, "action": action, "start": du, "end": au}


@router.get("/admin/audit", response_class=HTMLResponse)
async def page_audit(
    request: Request, actor: AuditReader, rt: Rt, f: Annotated[Filters, Depends(_filters)]
) -> HTMLResponse:
    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            rows = s.execute(_audit_query(**f).limit(AUDIT_PAGE)).all()
            sealed = s.scalar(select(func.count()).select_from(AuditSeal)) or 0
            total = s.scalar(select(func.count()).select_from(AuditEvent)) or 0
            audit.record(s, actor, "read_audit", f["patient"], "administration", _json(f))
            return {"rows": rows, "sealed": sealed, "total": total}

    ctx = await asyncio.to_thread(_q)
    ctx.update(request=request, f=f, query=request.url.query)
    return render(request, "admin_audit.html", ctx)


def _json(f: Filters) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in f.items() if v not in (None, "")}


@router.get("/admin/audit.csv")
async def export_audit(
    actor: AuditReader, rt: Rt, f: Annotated[Filters, Depends(_filters)]
) -> StreamingResponse:
    def _rows() -> list[Any]:
        with rt.db.session() as s:
            audit.record(s, actor, "export_audit", f["patient"], "administration", _json(f))
            return list(s.execute(_audit_query(**f).limit(CSV_MAX_ROWS)).all())

    rows = await asyncio.to_thread(_rows)

    def _csv() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=";")
        writer.writerow(
            [
                "n°",
                "date (UTC)",
                "qui",
                "rôle",
                "RPPS",
                "action",
                "patient",
                "motif",
                "adresse",
                "session",
                "sceau",
            ]
        )
        for event, seal in rows:
            writer.writerow(
                [
                    event.id,
                    event.at.isoformat(),
                    event.actor,
                    event.role or "",
                    event.rpps or "",
                    event.action,
                    event.patient_id or "",
                    event.reason or "",
                    event.address or "",
                    event.session_ref or "",
                    seal.hash if seal else "",
                ]
            )
            yield out.getvalue()
            out.seek(0)
            out.truncate()

    # The BOM lets a spreadsheet open the French accents right.
    return StreamingResponse(
        iter(["\ufeff", *_csv()]),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="trace-audit.csv"'},
    )
