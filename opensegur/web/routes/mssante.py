"""The MSSanté triage (API and pages) and the patient's documents and biology results API.

Triage shows mails no rule could match to a patient: only GHT- or site-wide assignments holding
``mail.triage`` see them (a unit's care team has no business reading unmatched mail), and the patients it
suggests are limited to those the reader may see.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select

from opensegur.flows.mss_inbound import triage
from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store.db import Database
from opensegur.store.models import Mail
from opensegur.web.biology import LabResults, lab_results, result_json
from opensegur.web.deps import Rt, WebRuntime, allow, ensure_patient, patient_filter, structure_filter
from opensegur.web.flash import redirect_with_message
from opensegur.web.mail_triage import (
    MAIL_STATUS_LABELS,
    AttachRequest,
    RejectRequest,
    TriageList,
    TriageOutcome,
    get_mail,
    mail_detail,
    mail_hints,
    mail_summary,
    raw_mail,
    suggest_patients,
)
from opensegur.web.patient_record import PatientDocuments, document_items, get_patient
from opensegur.web.templating import render

router = APIRouter()


class TriageFlow(Protocol):
    """What triage decisions call: ``flows.mss_inbound.triage`` (tests give a stand-in through the dependency)."""

    def attach(self, db: Database, mail_id: int, patient_id: int, actor: str, reason: str) -> Any: ...
    def reject(self, db: Database, mail_id: int, reason: str, actor: str) -> Any: ...


def triage_flow() -> TriageFlow:
    return triage


Flow = Annotated[TriageFlow, Depends(triage_flow)]
DocumentReader = Annotated[Actor, Depends(allow(Action.DOCUMENTS_READ))]
ResultsReader = Annotated[Actor, Depends(allow(Action.RESULTS_READ))]
Triager = Annotated[Actor, Depends(allow(Action.MAIL_TRIAGE))]


def _triage(
    rt: WebRuntime, actor: Actor, mailbox: str | None, limit: int, offset: int
) -> tuple[list[Mail], int, list[tuple[str, int]]]:
    in_scope = structure_filter(rt, actor, Action.MAIL_TRIAGE, Mail.structure_id)
    with rt.db.session() as s:
        base = select(Mail).where(Mail.direction == "in", Mail.status == "triage", in_scope)
        counts = s.execute(
            select(Mail.mailbox, func.count())
            .where(Mail.direction == "in", Mail.status == "triage", in_scope)
            .group_by(Mail.mailbox)
            .order_by(Mail.mailbox)
        ).all()
        if mailbox:
            base = base.where(Mail.mailbox == mailbox)
        total = s.scalar(select(func.count()).select_from(base.order_by(None).subquery())) or 0
        rows = list(s.scalars(base.order_by(Mail.created_at, Mail.id).limit(limit).offset(offset)))
        return rows, total, [(b, n) for b, n in counts]


def _mail_in_scope(rt: WebRuntime, actor: Actor, mail_id: int) -> Mail:
    in_scope = structure_filter(rt, actor, Action.MAIL_TRIAGE, Mail.structure_id)
    with rt.db.session() as s:
        m = get_mail(s, mail_id)
        if s.scalar(select(Mail.id).where(Mail.id == m.id, in_scope)) is None:
            raise HTTPException(404, "Courriel inconnu")
        return m


async def _act(
    rt: WebRuntime,
    flow: TriageFlow,
    kind: Literal["attach", "reject"],
    mail_id: int,
    actor: Actor,
    reason: str | None,
    patient_id: int | None = None,
) -> dict[str, Any]:
    motif = " ".join((reason or "").split())
    if len(motif) < 3:
        raise HTTPException(422, "Motif obligatoire (3 caractères au moins)")
    if kind == "attach" and patient_id is None:
        raise HTTPException(422, "Patient à rattacher obligatoire (patient_id)")

    def _check() -> None:
        m = _mail_in_scope(rt, actor, mail_id)
        if m.status != "triage":
            label = MAIL_STATUS_LABELS.get(m.status, m.status)
            raise HTTPException(409, f"Ce courriel n'est plus à trier (statut : {label})")
        if patient_id is not None:
            with rt.db.session() as s:
                p = get_patient(s, patient_id)
                ensure_patient(s, rt, actor, Action.IDENTITY_READ, p.id)
                if not p.active:
                    raise HTTPException(
                        409,
                        f"Identité inactive (fusionnée dans n° {p.merged_into_id}) : rattacher à l'active",
                    )

    await asyncio.to_thread(_check)
    try:
        if kind == "attach":
            assert patient_id is not None
            await asyncio.to_thread(flow.attach, rt.db, mail_id, patient_id, actor.name, motif)
        else:
            await asyncio.to_thread(flow.reject, rt.db, mail_id, motif, actor.name)
    except (ValueError, LookupError) as exc:
        raise HTTPException(409, getattr(exc, "message_fr", None) or str(exc)) from exc

    def _after() -> dict[str, Any]:
        with rt.db.session() as s:
            m = get_mail(s, mail_id)
            return {
                "mail_id": m.id,
                "status": {"code": m.status, "label": MAIL_STATUS_LABELS.get(m.status, m.status)},
                "patient_id": m.patient_id,
            }

    return await asyncio.to_thread(_after)


# ---- API ------------------------------------------------------------------------------------------------------
@router.get("/api/v1/patients/{patient_id}/documents", tags=["documents"], response_model=PatientDocuments)
async def api_patient_documents(patient_id: int, actor: DocumentReader, rt: Rt) -> dict[str, Any]:
    """Tous les documents du patient : produits (DPI, dépôt API) et reçus par MSSanté."""

    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            get_patient(s, patient_id)
            ensure_patient(s, rt, actor, Action.DOCUMENTS_READ, patient_id)
            items = document_items(s, patient_id)
            audit.record(s, actor, "list_documents", patient_id, "api")
            return {"patient_id": patient_id, "total": len(items), "items": items}

    return await asyncio.to_thread(_q)


@router.get("/api/v1/patients/{patient_id}/results", tags=["documents"], response_model=LabResults)
async def api_patient_results(
    patient_id: int,
    actor: ResultsReader,
    rt: Rt,
    loinc: str | None = Query(None, description="ne garder qu'une analyse (code LOINC)"),
) -> dict[str, Any]:
    """Résultats de biologie structurés (CR-BIO niveau 3), du plus récent au plus ancien."""

    def _q() -> dict[str, Any]:
        with rt.db.session() as s:
            get_patient(s, patient_id)
            ensure_patient(s, rt, actor, Action.RESULTS_READ, patient_id)
            items = [result_json(r) for r in lab_results(s, patient_id, loinc)]
            audit.record(s, actor, "read_lab_results", patient_id, "api")
            return {"patient_id": patient_id, "total": len(items), "items": items}

    return await asyncio.to_thread(_q)


@router.get("/api/v1/mssante/triage", tags=["mssante"], response_model=TriageList)
async def api_triage(
    actor: Triager,
    rt: Rt,
    mailbox: str | None = Query(None, description="boîte aux lettres de l'établissement"),
    limit: int = Query(50, ge=1, le=200),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    """Courriels reçus qu'aucune règle n'a pu rattacher à un patient, les plus anciens d'abord."""

    def _q() -> dict[str, Any]:
        rows, total, counts = _triage(rt, actor, mailbox, limit, offset)
        now = datetime.now(UTC)
        visible = patient_filter(rt, actor, Action.IDENTITY_READ)
        with rt.db.session() as s:
            items = []
            for m in rows:
                item = mail_summary(m, now)
                item["suggestions"] = suggest_patients(
                    s, mail_hints(raw_mail(s, m), m.subject), visible=visible
                )
                items.append(item)
            audit.record(s, actor, "list_triage_mail", None, "tri MSSanté", {"mails": [m.id for m in rows]})
        return {"total": total, "mailboxes": [{"mailbox": b, "count": n} for b, n in counts], "items": items}

    return await asyncio.to_thread(_q)


@router.post("/api/v1/mssante/triage/{mail_id}/attach", tags=["mssante"], response_model=TriageOutcome)
async def api_attach(mail_id: int, body: AttachRequest, actor: Triager, rt: Rt, flow: Flow) -> dict[str, Any]:
    """Rattacher un courriel en attente de tri à un patient local (motif obligatoire, tracé)."""
    return await _act(rt, flow, "attach", mail_id, actor, body.reason, body.patient_id)


@router.post("/api/v1/mssante/triage/{mail_id}/reject", tags=["mssante"], response_model=TriageOutcome)
async def api_reject(mail_id: int, body: RejectRequest, actor: Triager, rt: Rt, flow: Flow) -> dict[str, Any]:
    """Rejeter un courriel en attente de tri : l'expéditeur reçoit le motif (accusé MDN de refus)."""
    return await _act(rt, flow, "reject", mail_id, actor, body.reason)


# ---- pages ----------------------------------------------------------------------------------------------------
@router.get("/mssante/triage", response_class=HTMLResponse, include_in_schema=False)
async def page_triage(request: Request, actor: Triager, rt: Rt, bal: str = "") -> HTMLResponse:
    rows, total, counts = await asyncio.to_thread(_triage, rt, actor, bal or None, 500, 0)
    now = datetime.now(UTC)
    ctx = {
        "request": request,
        "mails": [mail_summary(m, now) for m in rows],
        "total": total,
        "mailboxes": counts,
        "all_count": sum(n for _, n in counts),
        "bal": bal,
    }
    return render(request, "mss_triage.html", ctx)


@router.get("/mssante/triage/{mail_id}", response_class=HTMLResponse, include_in_schema=False)
async def page_mail(request: Request, mail_id: int, actor: Triager, rt: Rt) -> HTMLResponse:
    def _q() -> dict[str, Any]:
        _mail_in_scope(rt, actor, mail_id)
        with rt.db.session() as s:
            m = get_mail(s, mail_id)
            audit.record(s, actor, "read_mail", m.patient_id, "tri MSSanté", {"mail_id": m.id})
            return mail_detail(s, m, visible=patient_filter(rt, actor, Action.IDENTITY_READ))

    detail = await asyncio.to_thread(_q)
    for sug in detail["suggestions"]:
        sug["birth_fr"] = sug["birth_date"].strftime("%d/%m/%Y") if sug["birth_date"] else "—"
    return render(request, "mss_mail.html", {"request": request, "m": detail})


async def _page_act(
    rt: WebRuntime,
    flow: TriageFlow,
    kind: Literal["attach", "reject"],
    mail_id: int,
    actor: Actor,
    motif: str,
    patient_id: int | None = None,
) -> RedirectResponse:
    try:
        outcome = await _act(rt, flow, kind, mail_id, actor, motif, patient_id)
    except HTTPException as exc:
        if exc.detail == "Courriel inconnu":
            raise
        return redirect_with_message(f"/mssante/triage/{mail_id}", str(exc.detail), actor)
    if kind == "attach":
        done = f"Courriel rattaché au patient n° {patient_id} ({outcome['status']['label'].lower()})"
    else:
        done = "Courriel rejeté : l'expéditeur est informé du motif"
    return redirect_with_message("/mssante/triage", done, actor)


@router.post("/mssante/triage/{mail_id}/rattacher", include_in_schema=False)
async def page_attach(
    mail_id: int, actor: Triager, rt: Rt, flow: Flow, patient_id: int = Form(...), motif: str = Form("")
) -> RedirectResponse:
    return await _page_act(rt, flow, "attach", mail_id, actor, motif, patient_id)


@router.post("/mssante/triage/{mail_id}/rejeter", include_in_schema=False)
async def page_reject(
    mail_id: int, actor: Triager, rt: Rt, flow: Flow, motif: str = Form("")
) -> RedirectResponse:
    return await _page_act(rt, flow, "reject", mail_id, actor, motif)
