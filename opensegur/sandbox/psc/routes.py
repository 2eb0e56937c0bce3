"""The sandbox Pro Santé Connect's HTTP side, mounted under ``/psc``: the paths of PSC's Keycloak realm
(``/protocol/openid-connect/…``), discovery under both names PSC publishes, a French login form for the
fictitious professionals in place of the e-CPS application."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from opensegur.sandbox.psc.provider import ACR_EIDAS1, PscSandbox

__all__ = ["create_psc_router"]

_PAGES = Environment(
    loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["html"]), auto_reload=False
)
# RFC 7636: a S256 challenge is the base64url of a SHA-256, 43 characters.
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "acr_values",
)
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="psc"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    """client_secret_basic (RFC 6749 §2.3.1: form-urlencoded then base64) or client_secret_post."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except ValueError:
            return None
        client_id, sep, secret = decoded.partition(":")
        return (unquote(client_id), unquote(secret)) if sep else None
    if "client_id" in form and "client_secret" in form:
        return form["client_id"], form["client_secret"]
    return None


def create_psc_router(psc: PscSandbox) -> APIRouter:
    router = APIRouter(tags=["sandbox Pro Santé Connect"])
    auth_path = "/protocol/openid-connect/auth"

    def error_page(message: str, status: int = 400) -> HTMLResponse:
        return HTMLResponse(
            f"<!doctype html><html lang=fr><meta charset=utf-8><title>Pro Santé Connect</title>"
            f"<h1>Demande refusée</h1><p>{html.escape(message)}</p></html>",
            status_code=status,
        )

    def check_request(params: dict[str, str]) -> Response | None:
        """None when the authorization request is acceptable, else what to answer. Until the client and its
        redirect URI are known, errors are shown here: redirecting to an unchecked URI would hand the error,
        and later codes, to whoever wrote it."""
        if params.get("client_id") != psc.client_id:
            return error_page("Client inconnu (client_id).")
        redirect_uri = params.get("redirect_uri", "")
        if not psc.redirect_uri_allowed(redirect_uri):
            return error_page("Adresse de retour (redirect_uri) non enregistrée pour ce client.")

        def back(error: str, description: str) -> Response:
            query = {"error": error, "error_description": description, "iss": psc.issuer}
            if params.get("state"):
                query["state"] = params["state"]
            return RedirectResponse(f"{redirect_uri}?{urlencode(query)}", status_code=303)

        if params.get("response_type") != "code":
            return back("unsupported_response_type", "seul le flux « code » est proposé")
        if "openid" not in params.get("scope", "").split():
            return back("invalid_scope", "la portée « openid » est requise")
        if params.get("code_challenge_method") != "S256" or not _CHALLENGE.match(
            params.get("code_challenge", "")
        ):
            return back("invalid_request", "PKCE requis : code_challenge avec la méthode S256")
        if not params.get("nonce"):
            return back("invalid_request", "nonce requis")
        return None

    def login_page(params: dict[str, str], error: str = "", status: int = 200) -> HTMLResponse:
        page = _PAGES.get_template("login.html").render(
            action=f"{psc.issuer}{auth_path}", params=params, error=error, acr=ACR_EIDAS1
        )
        return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})

    @router.get("/.well-known/openid-configuration")
    @router.get("/.well-known/wallet-openid-configuration")
    async def discovery() -> dict[str, Any]:
        return psc.metadata()

    @router.get("/protocol/openid-connect/certs")
    async def jwks() -> dict[str, Any]:
        return psc.jwks()

    @router.get(auth_path, response_class=HTMLResponse)
    async def authorize_form(request: Request) -> Response:
        params = {k: request.query_params[k] for k in _AUTHORIZE_PARAMS if k in request.query_params}
        return check_request(params) or login_page(params)

    @router.post(auth_path, response_class=HTMLResponse)
    async def authorize(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        params = {k: form[k] for k in _AUTHORIZE_PARAMS if k in form}
        refusal = check_request(params)
        if refusal is not None:
            return refusal
        professional = psc.authenticate(form.get("login", ""), form.get("password", ""))
        if professional is None:
            return login_page(params, "Identifiant ou mot de passe incorrect.", 401)
        # PSC authenticates every e-CPS at eidas1: the level asked for is the level given.
        code = psc.issue_code(
            professional,
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            code_challenge=params["code_challenge"],
            nonce=params["nonce"],
            acr=ACR_EIDAS1,
            scope=params["scope"],
        )
        query = {"code": code, "iss": psc.issuer} | ({"state": params["state"]} if "state" in params else {})
        return RedirectResponse(f"{params['redirect_uri']}?{urlencode(query)}", status_code=303)

    @router.post("/protocol/openid-connect/token")
    async def token(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        credentials = _client_credentials(request, form)
        if credentials is None or not psc.client_authenticated(*credentials):
            return _oauth_error("invalid_client", "authentification du client refusée", 401)
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "seul authorization_code est proposé")
        if not form.get("code") or not form.get("code_verifier"):
            return _oauth_error("invalid_request", "code et code_verifier (PKCE) requis")
        grant = psc.redeem(form["code"], credentials[0], form.get("redirect_uri", ""), form["code_verifier"])
        if isinstance(grant, str):
            return _oauth_error(grant, "code inconnu, expiré, déjà utilisé, ou vérificateur PKCE faux")
        return JSONResponse(psc.issue_tokens(grant), headers=_NO_STORE)

    @router.api_route("/protocol/openid-connect/userinfo", methods=["GET", "POST"])
    async def userinfo(request: Request) -> Response:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        found = psc.access_token(value.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            return JSONResponse(
                {"error": "invalid_token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return JSONResponse(psc.userinfo(found), headers=_NO_STORE)

    @router.post("/protocol/openid-connect/token/introspect")
    async def introspect(request: Request) -> Response:
        """RFC 7662, for resource servers such as the DRIMbox: any client of the sandbox may ask."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        credentials = _client_credentials(request, form)
        if credentials is None or not psc.client_authenticated(*credentials):
            return _oauth_error("invalid_client", "authentification du client refusée", 401)
        return JSONResponse(psc.introspect(form.get("token", "")), headers=_NO_STORE)

    return router
