"""``/docs``: the API documentation (Swagger UI) served from local files.

Hospitals run offline, and FastAPI's own page loads unpinned scripts from a CDN and starts them with an inline
script that the Content-Security-Policy forbids. Here the Swagger UI 5 files (5 reads the OpenAPI 3.1 that
FastAPI writes; 4 does not) come from the ``fastapi-swagger`` package, whose app patching is not used, and a small
local script (``static/apidocs.js``) starts them. Wire with ``FastAPI(docs_url=None, redoc_url=None)`` and
``app.include_router(apidocs.router)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import fastapi_swagger
from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, HTMLResponse, Response

from opensegur.web.deps import public

__all__ = ["ASSETS_PREFIX", "router"]

ASSETS_PREFIX = "/docs-assets"
_SWAGGER_DIR = Path(fastapi_swagger.__file__).with_name("resources")
# Only what the page loads, nothing else of the package.
_ASSETS = {
    "swagger-ui.css": (_SWAGGER_DIR / "swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": (_SWAGGER_DIR / "swagger-ui-bundle.js", "text/javascript"),
    "favicon-32x32.png": (_SWAGGER_DIR / "favicon-32x32.png", "image/png"),
    "apidocs.js": (Path(__file__).with_name("static") / "apidocs.js", "text/javascript"),
}
# A day: the files only change when the package is upgraded, and the documentation is not patient data.
_ASSET_CACHE = "public, max-age=86400"

_PAGE = f"""<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OpenSégur — documentation de l'API</title>
<link rel="stylesheet" href="{ASSETS_PREFIX}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_PREFIX}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="/openapi.json"></div>
<script src="{ASSETS_PREFIX}/swagger-ui-bundle.js"></script>
<script src="{ASSETS_PREFIX}/apidocs.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
async def docs_page(
    _: Annotated[None, Depends(public("documentation de l'API, sans donnée"))],
) -> HTMLResponse:
    return HTMLResponse(_PAGE)


@router.get(ASSETS_PREFIX + "/{name}")
async def docs_asset(
    name: str, _: Annotated[None, Depends(public("fichiers de la documentation de l'API"))]
) -> Response:
    asset = _ASSETS.get(name)
    if asset is None:
        return Response("Fichier inconnu", status_code=404, media_type="text/plain; charset=utf-8")
    path, media_type = asset
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": _ASSET_CACHE})
