"""Logging in through Pro Santé Connect and the hospital's single sign-on (OpenID Connect).

``/connexion/psc`` and ``/connexion/sso`` send the browser to the provider; ``…/retour`` receives it back,
checks everything (``security.oidc``), finds the account and opens a session — strong for PSC at eidas1 and
for an SSO login declaring a second factor. Every refusal is the login page with a French message, audited,
and opens nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from opensegur.security import audit, sessions
from opensegur.security.oidc import (
    FLOW_TTL,
    OidcClient,
    OidcRefused,
    PendingLogins,
    Provider,
    ProviderName,
    browser_digest,
    find_account,
)
from opensegur.web.cookies import set_session_cookie
from opensegur.web.deps import Rt, WebRuntime, client_address, psc_delegation, public
from opensegur.web.safety import local_redirect_target
from opensegur.web.templating import render

__all__ = ["FLOW_COOKIE", "configured_provider", "login_options", "router"]

router = APIRouter(include_in_schema=False)

OidcLogin = Annotated[None, Depends(public("connexion par Pro Santé Connect ou l'authentification unique"))]

# Binds a login under way to the browser that started it; only the digest of its value is kept server-side.
FLOW_COOKIE = "opensegur_oidc"
_FLOW_PATH = "/connexion"
_DEFAULT_TARGET = "/identites"


def configured_provider(runtime: WebRuntime, name: ProviderName) -> Provider | OidcRefused | None:
    """The provider as configured (identity_providers.toml, secret from its environment variable), else for PSC
    the sandbox's when it runs; None when there is none. OidcRefused when configured but unusable."""
    hospital = getattr(runtime, "hospital", None)
    providers = hospital.identity_providers if hospital is not None else None
    entry = getattr(providers, name, None) if providers is not None else None
    if entry is not None:
        secret = os.environ.get(entry.client_secret_env, "")
        if not secret:
            return OidcRefused(
                f"Connexion par {_label(name)} indisponible : le secret du client est absent "
                f"(variable d'environnement {entry.client_secret_env}).",
                "client secret missing",
                503,
            )
        if name == "psc":
            return Provider(
                "psc",
                entry.issuer,
                entry.client_id,
                secret,
                scope="openid scope_all",
                acr_values=entry.acr,
                strong_acr=frozenset({entry.acr}),
            )
        return Provider(
            "sso",
            entry.issuer,
            entry.client_id,
            secret,
            scope="openid profile",
            strong_acr=frozenset(entry.mfa_acr),
            strong_amr=frozenset(entry.mfa_amr),
            login_claim=entry.login_claim,
        )
    sandbox = getattr(runtime, "endpoints", {}).get("psc") if runtime.settings.sandbox_on else None
    if name == "psc" and sandbox is not None:
        return Provider(
            "psc",
            sandbox["issuer"],
            sandbox["client_id"],
            sandbox["client_secret"],
            scope="openid scope_all",
            acr_values="eidas1",
            strong_acr=frozenset({"eidas1"}),
        )
    return None


def login_options(runtime: WebRuntime) -> dict[str, bool]:
    """What the login page offers: the template shows a button for each provider configured."""
    return {
        "psc_login": configured_provider(runtime, "psc") is not None,
        "sso_login": configured_provider(runtime, "sso") is not None,
    }


def _label(name: ProviderName) -> str:
    return "Pro Santé Connect" if name == "psc" else "la connexion établissement"


def _base_url(runtime: WebRuntime) -> str | None:
    """Where the provider sends the browser back: the configured public URL, never the Host header. Without it,
    only a platform listening on loopback (the demo) can name itself."""
    settings = runtime.settings
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    port = getattr(runtime, "http_port", None)
    host = settings.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if port and loopback:
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return None


def _oidc(request: Request, runtime: WebRuntime) -> tuple[OidcClient, PendingLogins]:
    state = request.app.state
    if not hasattr(state, "oidc_client"):
        state.oidc_client = OidcClient()  # its discovery and JWKS caches live as long as the app
    return state.oidc_client, PendingLogins(runtime.db)


def _refusal(request: Request, runtime: WebRuntime, exc: OidcRefused, retour: str = "") -> HTMLResponse:
    response = render(
        request,
        "login.html",
        {
            "request": request,
            "retour": local_redirect_target(retour, _DEFAULT_TARGET),
            "error": exc.message,
            **login_options(runtime),
        },
        status_code=exc.status,
    )
    response.delete_cookie(FLOW_COOKIE, path=_FLOW_PATH)
    return response


def _audit_refusal(runtime: WebRuntime, request: Request, name: ProviderName, exc: OidcRefused) -> None:
    with runtime.db.session() as s:
        audit.record(
            s,
            None,
            "login_refused",
            None,
            "connexion",
            {"method": name, "why": exc.reason[:200], "address": client_address(request)},
            actor_name=f"{name}:inconnu",
        )


async def _start(request: Request, runtime: WebRuntime, name: ProviderName, retour: str) -> Response:
    provider = configured_provider(runtime, name)
    if provider is None:
        return _refusal(
            request, runtime, OidcRefused(f"{_label(name)} n'est pas configuré ici.", "not configured", 404)
        )
    if isinstance(provider, OidcRefused):
        return _refusal(request, runtime, provider, retour)
    base = _base_url(runtime)
    if base is None:
        refusal = OidcRefused(
            "Connexion impossible : l'adresse publique de la plateforme (public_base_url) n'est pas configurée.",
            "public_base_url missing",
            503,
        )
        return _refusal(request, runtime, refusal, retour)
    client, pending_logins = _oidc(request, runtime)
    browser = request.cookies.get(FLOW_COOKIE, "")
    if not (20 <= len(browser) <= 100 and browser.isascii()):
        browser = secrets.token_urlsafe(32)
    try:
        url, pending = await client.begin(
            provider,
            f"{base}/connexion/{name}/retour",
            local_redirect_target(retour, _DEFAULT_TARGET),
            browser,
        )
    except OidcRefused as exc:
        return _refusal(request, runtime, exc, retour)
    await asyncio.to_thread(pending_logins.put, pending)
    response = RedirectResponse(url, status_code=303)
    # Lax: the provider's redirect back is a top-level GET from another site, which Lax lets the cookie ride.
    response.set_cookie(
        FLOW_COOKIE,
        browser,
        max_age=FLOW_TTL,
        path=_FLOW_PATH,
        httponly=True,
        secure=base.startswith("https://"),
        samesite="lax",
    )
    return response


async def _finish(request: Request, runtime: WebRuntime, name: ProviderName) -> Response:
    query = request.query_params
    client, pending_logins = _oidc(request, runtime)
    pending = await asyncio.to_thread(pending_logins.take, query.get("state", "")[:200])
    browser = request.cookies.get(FLOW_COOKIE, "")
    provider = configured_provider(runtime, name)
    try:
        if pending is None:
            raise OidcRefused(
                "Demande de connexion inconnue, expirée ou déjà utilisée : recommencez la connexion.",
                "unknown or replayed state",
            )
        if pending.provider != name or not secrets.compare_digest(
            pending.browser_digest, browser_digest(browser)
        ):
            raise OidcRefused(
                "Cette connexion n'a pas été commencée depuis ce navigateur : recommencez la connexion.",
                "state bound to another browser",
                403,
            )
        if not isinstance(provider, Provider):
            raise OidcRefused(f"{_label(name)} n'est plus configuré ici.", "not configured", 404)
        if "error" in query:
            raise OidcRefused(
                f"Connexion par {provider.label} interrompue ou refusée par le fournisseur d'identité.",
                f"provider error: {query['error'][:100]}",
            )
        # RFC 9207: an answer naming another issuer comes from a provider mixed up with this one.
        if "iss" in query and query["iss"] != provider.issuer:
            raise OidcRefused(
                f"Connexion par {provider.label} refusée : réponse d'un autre fournisseur d'identité.",
                "iss parameter mismatch",
            )
        code = query.get("code", "")
        if not code or len(code) > 2000:
            raise OidcRefused(f"Connexion par {provider.label} refusée : code absent.", "no code")
        identity = await client.finish(provider, pending, code)
    except OidcRefused as exc:
        await asyncio.to_thread(_audit_refusal, runtime, request, name, exc)
        return _refusal(request, runtime, exc, pending.retour if pending is not None else "")

    address = client_address(request)
    agent = request.headers.get("user-agent", "")[:300]

    def _open() -> tuple[str, int] | OidcRefused:
        with runtime.db.session() as s:
            try:
                account = find_account(s, identity)
            except OidcRefused as exc:
                audit.record(
                    s,
                    None,
                    "login_refused",
                    None,
                    "connexion",
                    {"method": name, "why": exc.reason, "sub": identity.sub, "address": address},
                    actor_name=f"{name}:{identity.sub}"[:100],
                )
                return exc
            secret, row = sessions.open_session(
                s,
                account,
                method=name,
                strong=identity.strong,
                address=address,
                user_agent=agent,
                absolute=timedelta(seconds=runtime.settings.session_absolute_s),
            )
            detail: dict[str, Any] = {"method": name, "strong": identity.strong}
            if identity.acr:
                detail["acr"] = identity.acr
            if identity.amr:
                detail["amr"] = list(identity.amr)
            audit.record(s, None, "login", None, "connexion", detail, actor_name=account.login)
            return secret, row.id

    outcome = await asyncio.to_thread(_open)
    if isinstance(outcome, OidcRefused):
        return _refusal(request, runtime, outcome, pending.retour)
    secret, session_id = outcome
    delegation = psc_delegation(request)
    if name == "psc" and identity.access_token and delegation is not None:
        # PSC's own lifetime, else a minute: the token is only ever used soon after the login.
        delegation.keep(session_id, identity.access_token, identity.expires_in or 60.0)
    response = RedirectResponse(local_redirect_target(pending.retour, _DEFAULT_TARGET), status_code=303)
    set_session_cookie(response, runtime, secret)
    response.delete_cookie(FLOW_COOKIE, path=_FLOW_PATH)
    return response


@router.get("/connexion/psc")
async def psc_start(request: Request, rt: Rt, _: OidcLogin, retour: str = "") -> Response:
    return await _start(request, rt, "psc", retour)


@router.get("/connexion/sso")
async def sso_start(request: Request, rt: Rt, _: OidcLogin, retour: str = "") -> Response:
    return await _start(request, rt, "sso", retour)


@router.get("/connexion/psc/retour")
async def psc_return(request: Request, rt: Rt, _: OidcLogin) -> Response:
    return await _finish(request, rt, "psc")


@router.get("/connexion/sso/retour")
async def sso_return(request: Request, rt: Rt, _: OidcLogin) -> Response:
    return await _finish(request, rt, "sso")
