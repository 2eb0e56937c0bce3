"""The HTTP edge: assembles the routers (``web/routes``), the security headers, and the answers to refusals.

Every route declares its policy through ``web.deps`` (``allow(action)`` or ``public(why)``); no router imports
this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DataError

from opensegur import __version__
from opensegur.identity.errors import IdentityError
from opensegur.security import audit
from opensegur.security.matrix import Action
from opensegur.transactions.mhd import FHIR_JSON, FhirError, operation_outcome
from opensegur.web import apidocs, assets
from opensegur.web.deps import AccessRefused, PatientRefused, WebRuntime, grants
from opensegur.web.headers import SecurityHeadersMiddleware
from opensegur.web.routes import (
    admin,
    annuaire,
    dicomweb,
    dmp,
    dmp_imaging,
    documents,
    fhir,
    identities,
    mss_outbound,
    mssante,
    oidc,
    ops,
    readiness,
    scim,
    session,
    viewer,
    webauthn,
)
from opensegur.web.templating import render

ROUTERS = (
    assets.router,
    apidocs.router,
    ops.router,
    session.router,
    oidc.router,
    identities.router,
    dmp.router,
    dmp_imaging.router,
    documents.router,
    fhir.router,
    mssante.router,
    mss_outbound.router,
    annuaire.router,
    admin.router,
    readiness.router,
    scim.router,
    webauthn.router,
    dicomweb.router,
    viewer.router,
    # Last: the viewer's code is built to load from the site's root, after every route of the platform.
    viewer.root_files,
)
# The listener in mutual TLS that other DRIMboxes call.
DRIMBOX_ROUTERS = (dicomweb.router,)


def _wants_page(request: Request) -> bool:
    path = request.url.path
    return not path.startswith(("/api/", "/fhir", "/docs", "/dicom-web/"))


def create_app(runtime: WebRuntime, routers: Sequence[APIRouter] = ROUTERS) -> FastAPI:
    app = FastAPI(
        title="OpenSégur",
        version=__version__,
        description="Plateforme Ségur Vague 2 : identités INS, flux DMP et MSSanté. API REST et pages.",
        # Served from local assets by web/apidocs (hospitals run offline; no CDN script in our origin).
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    base = runtime.settings.public_base_url or ""
    app.add_middleware(SecurityHeadersMiddleware, hsts=base.startswith("https://"))

    @app.exception_handler(IdentityError)
    async def identity_error(request: Request, exc: IdentityError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "message": exc.message, "field": exc.field}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # A path that names no resource (an id that is not a number, or out of range) is not found, not a 422.
        if exc.errors() and all(e.get("loc", ("",))[0] == "path" for e in exc.errors()):
            return JSONResponse({"detail": "Introuvable"}, status_code=404)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(OverflowError)
    async def too_large_id(request: Request, exc: OverflowError) -> JSONResponse:
        # SQLite refuses integers beyond 64 bits: such an id names nothing.
        return JSONResponse({"detail": "Introuvable"}, status_code=404)

    @app.exception_handler(DataError)
    async def out_of_range(request: Request, exc: DataError) -> JSONResponse:
        # PostgreSQL refuses an integer out of its column's range: such an id names nothing either.
        if "out of range" in str(exc.orig):
            return JSONResponse({"detail": "Introuvable"}, status_code=404)
        raise exc

    @app.exception_handler(AccessRefused)
    async def refused(request: Request, exc: AccessRefused) -> Response:
        if isinstance(exc, PatientRefused):
            await asyncio.to_thread(_record_patient_refusal, runtime, request, exc)
        path = request.url.path
        if path.startswith("/fhir"):
            code = "login" if exc.status == 401 else "forbidden"
            return JSONResponse(
                operation_outcome(FhirError(exc.status, code, exc.message)),
                status_code=exc.status,
                media_type=FHIR_JSON,
                headers={"www-authenticate": "Bearer"} if exc.status == 401 else None,
            )
        if not _wants_page(request):
            headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)
        if exc.status == 401 and request.method == "GET":
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/connexion?retour={quote(target, safe='')}", status_code=303)
        actor = getattr(request.state, "actor", None)
        glass = (
            exc.patient_id
            if isinstance(exc, PatientRefused)
            and actor is not None
            and grants(runtime, actor, Action.BREAK_GLASS)
            else None
        )
        return render(
            request,
            "refused.html",
            {
                "request": request,
                "message": exc.message,
                "break_glass_patient": glass,
                # Once the glass is broken, back to the page that was refused (a GET of this patient's record).
                "glass_next": path if glass is not None and request.method == "GET" else None,
            },
            status_code=exc.status,
        )

    for router in routers:
        app.include_router(router)
    return app


def _record_patient_refusal(runtime: WebRuntime, request: Request, exc: PatientRefused) -> None:
    actor = getattr(request.state, "actor", None)
    with runtime.db.session() as s:
        audit.record(
            s,
            actor,
            "access_denied",
            exc.patient_id,
            "refus",
            {"path": request.url.path, "method": request.method, "action": str(exc.action)},
        )
