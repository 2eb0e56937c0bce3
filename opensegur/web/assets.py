"""``/static/{name}``: the pages' style sheet and scripts, which the Content-Security-Policy requires to be files
of the platform's own origin (no inline ``<style>`` or ``<script>``).

A route rather than a ``StaticFiles`` mount so that it declares its policy like every other route, and serves
only the files of ``web/static`` itself (no sub-directory, no other type).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response

from opensegur.web.deps import public

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).with_name("static")
_MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript"}
# An hour: short enough that an upgrade's new style sheet shows without a forced reload.
_CACHE = "public, max-age=3600"

router = APIRouter(include_in_schema=False)


@router.get("/static/{name}")
async def static_file(
    name: str, _: Annotated[None, Depends(public("feuille de style et scripts des pages, sans donnée"))]
) -> Response:
    path = STATIC_DIR / name
    media_type = _MEDIA_TYPES.get(path.suffix)
    if media_type is None or path.parent != STATIC_DIR or not path.is_file():
        return Response("Fichier inconnu", status_code=404, media_type="text/plain; charset=utf-8")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": _CACHE})
