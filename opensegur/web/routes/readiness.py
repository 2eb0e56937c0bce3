"""Readiness pages: the five DICAH conditions of DMP consultation, and the HospiConnect identity-maturity
self-assessment with its PDF, measured on the platform's data."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from opensegur.ops.pdf import html_to_pdf
from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.web.assets import STATIC_DIR
from opensegur.web.deps import Rt, allow, matrix_of
from opensegur.web.hospiconnect import ANSWER_LABELS, AXES, QUESTIONS, Assessment, Measure, assess, measures
from opensegur.web.readiness import Indicator, indicators
from opensegur.web.safety import attachment_headers
from opensegur.web.templating import TEMPLATES, render

router = APIRouter(include_in_schema=False)

# Aggregates only, no patient's data: who follows the platform's operation may read them.
OpsReader = Annotated[Actor, Depends(allow(Action.OPS_READ))]


@router.get("/pilotage/dicah", response_class=HTMLResponse)
async def page_dicah(request: Request, actor: OpsReader, rt: Rt) -> HTMLResponse:
    def _q() -> list[Indicator]:
        with rt.db.session() as s:
            return indicators(s, rt.settings, matrix_of(rt))

    found = await asyncio.to_thread(_q)
    return render(request, "dicah.html", {"request": request, "indicators": found})


async def _measured(rt: Rt) -> list[Measure]:
    def _q() -> list[Measure]:
        with rt.db.session() as s:
            return measures(s)

    return await asyncio.to_thread(_q)


def _hospiconnect_context(
    request: Request, assessment: Assessment | None, found: list[Measure]
) -> dict[str, object]:
    return {
        "request": request,
        "axes": AXES,
        "questions": QUESTIONS,
        "answer_labels": ANSWER_LABELS,
        "measures": found,
        "assessment": assessment,
        "generated": datetime.now(UTC),
    }


@router.get("/pilotage/hospiconnect", response_class=HTMLResponse)
async def page_hospiconnect(request: Request, actor: OpsReader, rt: Rt) -> HTMLResponse:
    return render(request, "hospiconnect.html", _hospiconnect_context(request, None, await _measured(rt)))


async def _answered(request: Request, rt: Rt) -> Assessment:
    form = await request.form()
    answers = {q.id: str(form.get(q.id, "non")) for q in QUESTIONS}
    return assess(await _measured(rt), answers)


@router.post("/pilotage/hospiconnect", response_class=HTMLResponse)
async def page_hospiconnect_result(request: Request, actor: OpsReader, rt: Rt) -> HTMLResponse:
    assessment = await _answered(request, rt)
    return render(
        request, "hospiconnect.html", _hospiconnect_context(request, assessment, assessment.measures)
    )


@router.post("/pilotage/hospiconnect/pdf")
async def page_hospiconnect_pdf(request: Request, actor: OpsReader, rt: Rt) -> Response:
    """The result as a PDF (headless Chromium), for the funding request; the export is traced."""
    assessment = await _answered(request, rt)
    ctx = _hospiconnect_context(request, assessment, assessment.measures)
    page = TEMPLATES.get_template("hospiconnect_pdf.html").render(
        {**ctx, "css": (STATIC_DIR / "opensegur.css").resolve().as_uri()}
    )
    pdf = await asyncio.to_thread(html_to_pdf, page)
    if pdf is None:
        raise HTTPException(503, "Export PDF indisponible : Chromium n'est pas installé sur le serveur")

    def _trace() -> None:
        with rt.db.session() as s:
            audit.record_admin(s, actor, "hospiconnect_pdf", {"scores": assessment.scores})

    await asyncio.to_thread(_trace)
    headers = attachment_headers("autoevaluation-hospiconnect.pdf", "application/pdf")
    return Response(pdf, headers=headers)
