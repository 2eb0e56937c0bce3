"""The DICAH readiness page: the five conditions of DMP consultation measured on the platform's data."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.web.deps import Rt, allow, matrix_of
from opensegur.web.readiness import Indicator, indicators
from opensegur.web.templating import render

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
