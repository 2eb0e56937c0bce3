"""Security keys (FIDO2 / WebAuthn): « Mes clés de sécurité » (list, add, rename, revoke), the key as second
login factor, and the administrators' view of a person's keys (revoke a lost one).

The browser side is ``static/webauthn.js`` (the CSP allows no inline script): it asks for options, calls
``navigator.credentials``, and posts the answer as JSON. Who may do what:

- a person's own keys: only through their own browser session (not a bearer token); looking needs any session,
  changing one a strong session, adding one a strong session opened less than 15 minutes ago
  (``security.webauthn.enrolment_refusal`` says why);
- the login step works on the *pending* session the password step left in the cookie, exactly like
  ``/connexion/second-facteur``, and rotates its secret when the key holds. It has no CSRF token to check (the
  page of the pending step has none), so it takes ``application/json`` only: a page of another origin cannot
  send that without a CORS preflight, which this platform never grants, and the assertion itself is bound to
  this origin.

The key pages are declared ``public`` because the matrix has no action "manage one's own login means" that every
role holds; ``_holder`` then demands the person's own session, exactly as ``/deconnexion`` does.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.security import audit, sessions
from opensegur.security import webauthn as keys
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.store.models import Account, WebauthnCredential, WebSession
from opensegur.web.cookies import set_session_cookie
from opensegur.web.deps import (
    PENDING_METHOD,
    SESSION_COOKIE,
    AccessRefused,
    MaybeActor,
    Rt,
    WebRuntime,
    allow,
    check_csrf,
    public,
)
from opensegur.web.flash import redirect_with_message
from opensegur.web.safety import local_redirect_target
from opensegur.web.templating import render

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

# A key's answer is a few hundred bytes (RSA attestation: a few kilobytes); anything far larger is not one.
BODY_MAX = 32 * 1024
MY_KEYS = "/moi/cles"
TOO_LARGE = "Réponse de la clé de sécurité trop volumineuse."
JSON_EXPECTED = "Requête JSON attendue."
SESSION_EXPIRED = "Session expirée : reconnectez-vous"
NOT_STRONG = "Modifier vos clés demande une connexion forte : reconnectez-vous avec votre second facteur."
UNKNOWN_KEY = "Clé inconnue"

LoginStep = Annotated[
    None, Depends(public("second facteur par clé de sécurité : la session en attente du cookie est exigée"))
]
Admin = Annotated[Actor, Depends(allow(Action.ADMIN))]


async def _holder(
    request: Request,
    actor: MaybeActor,
    _: Annotated[
        None, Depends(public("clés de sécurité de la personne connectée : sa propre session est exigée"))
    ],
) -> Actor:
    if actor is None:
        raise AccessRefused(401, "Connexion requise")
    if actor.account_id is None or actor.session_id is None:
        raise AccessRefused(403, "Clés de sécurité : réservé aux personnes connectées avec leur navigateur")
    await check_csrf(request, actor)
    return actor


Holder = Annotated[Actor, Depends(_holder)]


def _now() -> datetime:
    return datetime.now(UTC)


def _refused(exc: keys.WebauthnRefused) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read at most BODY_MAX bytes far (a huge body is refused while it streams)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise keys.WebauthnRefused(JSON_EXPECTED, 400)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > BODY_MAX:
        raise keys.WebauthnRefused(TOO_LARGE, 400)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_MAX:
            raise keys.WebauthnRefused(TOO_LARGE, 400)
    return keys.decode_body(bytes(body))


def _own_session(s: Session, actor: Actor) -> tuple[Account, WebSession]:
    assert actor.account_id is not None and actor.session_id is not None  # _holder
    return s.get_one(Account, actor.account_id), s.get_one(WebSession, actor.session_id)


def _own_key(s: Session, actor: Actor, key_id: int) -> WebauthnCredential:
    key = s.get(WebauthnCredential, key_id)
    if key is None or key.account_id != actor.account_id:
        raise HTTPException(404, UNKNOWN_KEY)  # another person's key: as if it did not exist
    return key


# ---- « Mes clés de sécurité » ------------------------------------------------------------------------------


@router.get(MY_KEYS, response_class=HTMLResponse)
async def my_keys(request: Request, actor: Holder, rt: Rt) -> HTMLResponse:
    def _q() -> tuple[list[WebauthnCredential], str | None, bool]:
        with rt.db.session() as s:
            account, ws = _own_session(s, actor)
            rows = list(
                s.scalars(
                    select(WebauthnCredential)
                    .where(WebauthnCredential.account_id == account.id)
                    .order_by(WebauthnCredential.revoked_at.is_not(None), WebauthnCredential.id)
                )
            )
            return rows, keys.enrolment_refusal(ws), bool(account.totp_secret)

    rows, enrol_refusal, has_totp = await asyncio.to_thread(_q)
    return render(
        request,
        "webauthn_keys.html",
        {
            "request": request,
            "keys": rows,
            "enrol_refusal": enrol_refusal,
            "has_totp": has_totp,
            "live": sum(1 for k in rows if k.revoked_at is None),
        },
    )


@router.post(MY_KEYS + "/{key_id}/renommer")
async def rename_key(
    key_id: int, actor: Holder, rt: Rt, label: str = Form(..., max_length=200)
) -> RedirectResponse:
    if not actor.strong:
        raise AccessRefused(403, NOT_STRONG)

    def _do() -> str | keys.WebauthnRefused:
        with rt.db.session() as s:
            key = _own_key(s, actor, key_id)
            try:
                keys.rename(s, key, label, actor)
            except keys.WebauthnRefused as exc:
                return exc
            return key.label

    outcome = await asyncio.to_thread(_do)
    if isinstance(outcome, keys.WebauthnRefused):
        return redirect_with_message(MY_KEYS, outcome.message, actor)
    return redirect_with_message(MY_KEYS, f"Clé renommée « {outcome} »", actor)


@router.post(MY_KEYS + "/{key_id}/revoquer")
async def revoke_own_key(key_id: int, actor: Holder, rt: Rt) -> RedirectResponse:
    """A lost key: revoked at once. The person logs in with another factor (TOTP, recovery code, spare key) to
    enrol the replacement; with none left, an administrator resets their means of identification."""
    if not actor.strong:
        raise AccessRefused(403, NOT_STRONG)

    def _do() -> str:
        with rt.db.session() as s:
            key = _own_key(s, actor, key_id)
            keys.revoke(s, key, actor)
            return key.label

    label = await asyncio.to_thread(_do)
    return redirect_with_message(MY_KEYS, f"Clé « {label} » révoquée : elle n'ouvre plus rien", actor)


@router.post("/api/moi/cles/options")
async def enrol_options(actor: Holder, rt: Rt) -> Response:
    rp = keys.relying_party(rt.settings)

    def _do() -> dict[str, Any]:
        with rt.db.session() as s:
            account, ws = _own_session(s, actor)
            return keys.registration_options(s, rp, account, ws)

    try:
        return JSONResponse(await asyncio.to_thread(_do))
    except keys.WebauthnRefused as exc:
        return _refused(exc)


@router.post("/api/moi/cles")
async def enrol(request: Request, actor: Holder, rt: Rt) -> Response:
    rp = keys.relying_party(rt.settings)

    def _do(body: dict[str, Any]) -> str | keys.WebauthnRefused:
        label = body.get("label")
        with rt.db.session() as s:
            account, ws = _own_session(s, actor)
            try:
                key = keys.register(
                    s, rp, actor, account, ws, body.get("credential"), label if isinstance(label, str) else ""
                )
            except keys.WebauthnRefused as exc:
                return exc  # committed: the challenge it used up stays used
            return key.label

    try:
        outcome = await asyncio.to_thread(_do, await _json_body(request))
    except keys.WebauthnRefused as exc:
        return _refused(exc)
    if isinstance(outcome, keys.WebauthnRefused):
        return _refused(outcome)
    return JSONResponse(
        {
            "detail": f"Clé « {outcome} » enregistrée : elle vous sera demandée à la connexion",
            "redirect": MY_KEYS,
        }
    )


# ---- the login step --------------------------------------------------------------------------------------


def _pending(s: Session, rt: WebRuntime, cookie: str) -> tuple[Account, WebSession]:
    ws = sessions.resolve(s, cookie, _now(), idle=timedelta(seconds=rt.settings.session_idle_s))
    if ws is None or ws.method != PENDING_METHOD:
        raise keys.WebauthnRefused(SESSION_EXPIRED, 401)
    return s.get_one(Account, ws.account_id), ws


@router.post("/connexion/cle/options")
async def login_options(request: Request, rt: Rt, _: LoginStep) -> Response:
    rp = keys.relying_party(rt.settings)
    cookie = request.cookies.get(SESSION_COOKIE, "")

    def _do() -> dict[str, Any]:
        with rt.db.session() as s:
            account, ws = _pending(s, rt, cookie)
            return keys.authentication_options(s, rp, account, ws)

    try:
        await _json_body(request)  # nothing to read, but only a same-origin script can send JSON
        return JSONResponse(await asyncio.to_thread(_do))
    except keys.WebauthnRefused as exc:
        return _refused(exc)


@router.post("/connexion/cle/verifier")
async def login_verify(request: Request, rt: Rt, _: LoginStep) -> Response:
    rp = keys.relying_party(rt.settings)
    cookie = request.cookies.get(SESSION_COOKIE, "")

    def _do(body: dict[str, Any]) -> str | keys.WebauthnRefused:
        with rt.db.session() as s:
            account, ws = _pending(s, rt, cookie)
            try:
                key = keys.authenticate(s, rp, account, ws, body.get("credential"))
            except keys.WebauthnRefused as exc:
                return exc  # committed: the refusal counts towards the brute-force limit
            method = "password+webauthn"
            secret = sessions.upgrade_to_strong(s, ws, method=method)
            audit.record(
                s,
                None,
                "login",
                None,
                "connexion",
                {"method": method, "key": key.id},
                actor_name=account.login,
            )
            return secret

    try:
        body = await _json_body(request)
        outcome = await asyncio.to_thread(_do, body)
    except keys.WebauthnRefused as exc:
        return _refused(exc)
    if isinstance(outcome, keys.WebauthnRefused):
        return _refused(outcome)
    retour = body.get("retour")
    target = local_redirect_target(retour if isinstance(retour, str) else "", "/identites")
    response = JSONResponse({"redirect": target})
    set_session_cookie(response, rt, outcome)
    return response


# ---- administration: a person's keys -----------------------------------------------------------------------


@router.get("/admin/comptes/{account_id}/cles", response_class=HTMLResponse)
async def admin_keys(request: Request, account_id: int, actor: Admin, rt: Rt) -> HTMLResponse:
    def _q() -> tuple[Account, list[WebauthnCredential]]:
        with rt.db.session() as s:
            account = s.get(Account, account_id)
            if account is None:
                raise HTTPException(404, "Compte inconnu")
            rows = list(
                s.scalars(
                    select(WebauthnCredential)
                    .where(WebauthnCredential.account_id == account_id)
                    .order_by(WebauthnCredential.id)
                )
            )
            return account, rows

    account, rows = await asyncio.to_thread(_q)
    return render(request, "admin_webauthn_keys.html", {"request": request, "account": account, "keys": rows})


@router.post("/admin/comptes/{account_id}/cles/{key_id}/revoquer")
async def admin_revoke_key(account_id: int, key_id: int, actor: Admin, rt: Rt) -> RedirectResponse:
    """A key reported lost or stolen to the help desk, when its holder has no other factor to log in with."""

    def _do() -> str:
        with rt.db.session() as s:
            key = s.get(WebauthnCredential, key_id)
            if key is None or key.account_id != account_id:
                raise HTTPException(404, UNKNOWN_KEY)
            keys.revoke(s, key, actor)
            return key.label

    label = await asyncio.to_thread(_do)
    return redirect_with_message(
        f"/admin/comptes/{account_id}/cles", f"Clé « {label} » révoquée : elle n'ouvre plus rien", actor
    )
