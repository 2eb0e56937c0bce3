"""Logging in and out: local accounts (password, then TOTP or a recovery code), « se déconnecter partout ».

After the password of an account that has a second factor, the browser holds a *pending* session that opens
nothing (``deps`` refuses it) until the code is given; the second step rotates the session secret, so a secret
planted before login (session fixation) is worthless after it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from opensegur.security import accounts, audit, sessions, webauthn
from opensegur.security.errors import LoginRefused
from opensegur.store.models import Account
from opensegur.web.cookies import set_session_cookie
from opensegur.web.deps import (
    PENDING_METHOD,
    SESSION_COOKIE,
    AccessRefused,
    Delegation,
    MaybeActor,
    Rt,
    check_csrf,
    client_address,
    public,
)
from opensegur.web.routes.oidc import login_options
from opensegur.web.safety import local_redirect_target
from opensegur.web.templating import render

router = APIRouter(include_in_schema=False)

LoginPage = Annotated[None, Depends(public("page de connexion"))]


def _login_page(request: Request, retour: str, error: str = "", status: int = 200) -> HTMLResponse:
    return render(
        request,
        "login.html",
        {
            "request": request,
            "retour": local_redirect_target(retour, "/identites"),
            "error": error,
            **login_options(request.app.state.runtime),
        },
        status_code=status,
    )


@router.get("/connexion", response_class=HTMLResponse)
async def login_form(request: Request, _: LoginPage, retour: str = "") -> HTMLResponse:
    return _login_page(request, retour)


@router.post("/connexion")
async def login(
    request: Request,
    rt: Rt,
    _: LoginPage,
    login: str = Form(..., max_length=100),
    password: str = Form(..., max_length=1000),
    retour: str = Form(""),
) -> Response:
    address = client_address(request)
    agent = request.headers.get("user-agent", "")[:300]

    def _do() -> tuple[str, bool]:
        with rt.db.session() as s:
            # A refusal is committed, not rolled back: the failed attempt must count towards the lock-out.
            refusal: LoginRefused | None = None
            try:
                account = accounts.authenticate_password(s, login.strip(), password, address)
            except LoginRefused as exc:
                refusal = exc
        if refusal is not None:
            raise refusal
        with rt.db.session() as s:
            account = s.get_one(Account, account.id)
            pending = bool(account.totp_secret) or webauthn.has_active_credential(s, account.id)
            secret, _ws = sessions.open_session(
                s,
                account,
                method=PENDING_METHOD if pending else "password",
                strong=False,
                address=address,
                user_agent=agent,
                absolute=timedelta(seconds=rt.settings.session_absolute_s),
            )
            if not pending:
                audit.record(
                    s, None, "login", None, "connexion", {"method": "password"}, actor_name=account.login
                )
            return secret, pending

    try:
        secret, pending = await asyncio.to_thread(_do)
    except LoginRefused as exc:
        return _login_page(request, retour, exc.message, 401)
    target = local_redirect_target(retour, "/identites")
    if pending:
        response: Response = render(
            request, "login_second_factor.html", {"request": request, "retour": target, "error": ""}
        )
    else:
        response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, rt, secret)
    return response


@router.post("/connexion/second-facteur")
async def second_factor(
    request: Request,
    rt: Rt,
    _: LoginPage,
    code: str = Form(..., max_length=64),
    retour: str = Form(""),
) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    target = local_redirect_target(retour, "/identites")

    def _do() -> str | LoginRefused:
        now = datetime.now(UTC)
        with rt.db.session() as s:
            ws = sessions.resolve(s, cookie, now, idle=timedelta(seconds=rt.settings.session_idle_s))
            if ws is None or ws.method != PENDING_METHOD:
                raise LoginRefused("Session expirée : reconnectez-vous")
            account = s.get_one(Account, ws.account_id)
            try:
                method = "password+" + accounts.verify_second_factor(s, account, code.strip())
            except LoginRefused as exc:
                return exc  # committed: the wrong code counts towards the brute-force limit
            secret = sessions.upgrade_to_strong(s, ws, method=method)
            audit.record(s, None, "login", None, "connexion", {"method": method}, actor_name=account.login)
            return secret

    try:
        outcome = await asyncio.to_thread(_do)
        if isinstance(outcome, LoginRefused):
            raise outcome
        secret = outcome
    except LoginRefused as exc:
        return render(
            request,
            "login_second_factor.html",
            {"request": request, "retour": target, "error": exc.message},
            status_code=401,
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, rt, secret)
    return response


@router.post("/deconnexion")
async def logout(
    request: Request,
    rt: Rt,
    actor: MaybeActor,
    _: LoginPage,
    delegation: Delegation,
    partout: str = Form(""),
) -> Response:
    """Ends this session, or every session of the account (« se déconnecter partout »)."""
    if actor is not None and actor.session_id is not None:
        await check_csrf(request, actor)
        if delegation is not None:
            delegation.forget(actor.session_id)

        def _do() -> None:
            with rt.db.session() as s:
                if partout and actor.account_id is not None:
                    sessions.revoke_all(s, actor.account_id)
                elif actor.session_id is not None:
                    sessions.revoke(s, actor.session_id)
                audit.record(s, actor, "logout", None, "connexion", {"everywhere": bool(partout)})

        await asyncio.to_thread(_do)
    elif actor is not None:
        raise AccessRefused(400, "Déconnexion : réservée aux sessions du navigateur")
    response = RedirectResponse("/connexion", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
