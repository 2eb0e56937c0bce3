"""Logging in through Pro Santé Connect (the sandbox provider) and the hospital SSO (the certified npm
``oidc-provider``), end to end over real HTTP on loopback, and the attacks on both flows: forged, replayed or
misdirected answers open no session."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import func, select

from opensegur.config import Settings
from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.hospital.model import HospitalSso, IdentityProvidersFile
from opensegur.ops.demo import demo_config, load_demo, luhn_complete
from opensegur.sandbox.psc import PscSandbox, create_psc_router
from opensegur.sandbox.psc.provider import Grant
from opensegur.security import accounts
from opensegur.security.matrix import Assignment, Scope
from opensegur.security.oidc import Provider
from opensegur.store.db import Database
from opensegur.store.models import Account, AuditEvent, WebSession
from opensegur.web.app import create_app
from opensegur.web.routes.oidc import configured_provider, login_options
from opensegur.web.routes.oidc import router as oidc_router
from tests.browser import browser_page, screenshot
from tests.oidc_servers import Browser, loopback_socket, oidc_provider, serve, url_of
from tests.web.test_rest_intake import Offline

REAULT_RPPS = luhn_complete("1000000001")
PASSWORD = "mot-de-passe-de-test-2026"


@dataclass
class Setup:
    platform: str
    sandbox: str
    psc: PscSandbox
    runtime: Offline
    db: Database

    def sessions(self) -> list[WebSession]:
        with self.db.session() as s:
            return list(s.scalars(select(WebSession).order_by(WebSession.id)))

    def account(self, login: str) -> Account:
        with self.db.session() as s:
            return s.scalars(select(Account).where(Account.login == login)).one()

    def audit(self, action: str) -> list[AuditEvent]:
        with self.db.session() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _account(db: Database, login: str, *, rpps: str | None = None, role: str = "medecin") -> None:
    with db.session() as s:
        accounts.create_account(
            s, login, login.title(), [Assignment(role, Scope.parse("ght"))], PASSWORD, rpps=rpps, by="rh"
        )


def _platform_app(runtime: Offline) -> FastAPI:
    app = create_app(runtime)
    app.include_router(oidc_router)
    return app


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    sandbox_sock, platform_sock = loopback_socket(), loopback_socket()
    psc = PscSandbox(tmp_path / "sandbox" / "psc", f"{url_of(sandbox_sock)}/psc")
    sandbox_app = FastAPI()
    sandbox_app.include_router(create_psc_router(psc), prefix="/psc")
    db = Database(f"sqlite:///{tmp_path / 'oidc.db'}")
    db.migrate()
    load_demo(db)
    _account(db, "dr.reault", rpps=REAULT_RPPS)
    settings = Settings(data_dir=tmp_path, public_base_url=url_of(platform_sock), sandbox=True)
    runtime = Offline(settings, db, Hl7Intake(db), endpoints={"psc": psc.endpoints()})
    with (
        serve(sandbox_app, sandbox_sock) as sandbox,
        serve(_platform_app(runtime), platform_sock) as platform,
    ):
        yield Setup(platform, sandbox, psc, runtime, db)
    db.dispose()


@pytest.fixture
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


def _password(psc: PscSandbox, login: str) -> str:
    return psc.professionals[login].password


def to_callback(b: Browser, setup: Setup, login: str = "pierre.reault", retour: str = "/identites") -> str:
    """From the platform to the PSC form and back: the callback URL the provider sends the browser to."""
    page = b.go(f"{setup.platform}/connexion/psc?retour={quote(retour, safe='')}")
    assert page.status_code == 200 and "Pro Santé Connect" in page.text
    answer = b.submit(
        page,
        {"login": login, "password": _password(setup.psc, login)},
        stop_at=f"{setup.platform}/connexion/psc/retour",
    )
    assert answer.status_code == 303
    return str(answer.url.join(answer.headers["location"]))


def assert_refused(setup: Setup, response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert text in unescape(response.text)
    assert "opensegur_session" not in response.headers.get("set-cookie", "")
    assert setup.sessions() == []


# ---- Pro Santé Connect, end to end


def test_psc_login_end_to_end(setup: Setup, browser: Browser) -> None:
    assert login_options(setup.runtime) == {"psc_login": True, "sso_login": False}
    callback = to_callback(browser, setup, retour="/identites?q=MARTIN")
    authorize = parse_qs(urlsplit(str(browser.hops[0].headers["location"])).query)
    assert authorize["code_challenge_method"] == ["S256"] and authorize["acr_values"] == ["eidas1"]
    assert authorize["nonce"] and authorize["state"] and "code_verifier" not in authorize
    assert authorize["redirect_uri"] == [f"{setup.platform}/connexion/psc/retour"]

    landed = browser.go(callback)
    assert landed.status_code == 200 and str(landed.url) == f"{setup.platform}/identites?q=MARTIN"
    [session] = setup.sessions()
    assert session.method == "psc" and session.strong
    account = setup.account("dr.reault")
    assert account.psc_sub == setup.psc.professionals["pierre.reault"].sub
    assert [e.actor for e in setup.audit("identity_link")] == ["dr.reault"]
    [login] = setup.audit("login")
    assert login.detail == {"method": "psc", "strong": True, "acr": "eidas1"}
    # PSC's access token stays in memory for the session, to ask other DRIMboxes in the doctor's name; it is
    # PSC's own, active at its introspection endpoint, and written nowhere.
    token = setup.runtime.psc_delegation.token(session.id)
    assert token is not None and token not in repr(session.__dict__) and token not in repr(login.detail)
    psc = setup.psc.endpoints()
    answer = httpx.post(
        psc["introspection"], data={"token": token}, auth=(psc["client_id"], psc["client_secret"])
    )
    assert answer.json()["active"] is True

    # The next login finds the account by its linked sub; a new session, no new link.
    browser.http.cookies.clear()
    browser.go(to_callback(browser, setup))
    assert len(setup.sessions()) == 2 and len(setup.audit("identity_link")) == 1


def test_unknown_professional_refused_and_no_account_created(setup: Setup, browser: Browser) -> None:
    before = len(setup.audit("login_refused"))
    refused = browser.go(to_callback(browser, setup, login="julie.marchand"))
    assert_refused(setup, refused, 403, "aucun compte actif")
    with setup.db.session() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(Account).where(Account.rpps == luhn_complete("1000000099"))
            )
            == 0
        )
    assert len(setup.audit("login_refused")) == before + 1


def test_departed_account_refused(setup: Setup, browser: Browser) -> None:
    with setup.db.session() as s:
        accounts.deactivate(
            s, s.scalars(select(Account).where(Account.login == "dr.reault")).one(), "départ", by="rh"
        )
    assert_refused(setup, browser.go(to_callback(browser, setup)), 403, "aucun compte actif")


def test_open_redirect_in_retour_stays_on_site(setup: Setup, browser: Browser) -> None:
    for evil in ("//attaquant.example/x", "https://attaquant.example", "/%09/attaquant.example"):
        browser.http.cookies.clear()
        landed = browser.go(to_callback(browser, setup, retour=evil))
        assert str(landed.url) == f"{setup.platform}/identites"


# ---- attacks on the PSC flow


def test_wrong_state_refused(setup: Setup, browser: Browser) -> None:
    callback = to_callback(browser, setup)
    parts = urlsplit(callback)
    query = parse_qs(parts.query)
    forged = f"{setup.platform}{parts.path}?code={query['code'][0]}&state={secrets.token_urlsafe(32)}"
    assert_refused(setup, browser.go(forged), 401, "Demande de connexion inconnue, expirée ou déjà utilisée")


def test_replayed_state_refused(setup: Setup, browser: Browser) -> None:
    callback = to_callback(browser, setup)
    assert browser.go(callback).status_code == 200
    assert len(setup.sessions()) == 1
    replay = browser.go(callback)
    assert replay.status_code == 401 and "déjà utilisée" in unescape(replay.text)
    assert len(setup.sessions()) == 1


def test_callback_from_another_browser_refused(setup: Setup, browser: Browser) -> None:
    callback = to_callback(browser, setup)
    victim = Browser()
    try:
        refused = victim.go(callback)
    finally:
        victim.close()
    assert_refused(setup, refused, 403, "pas été commencée depuis ce navigateur")


def _forge_claims(
    monkeypatch: pytest.MonkeyPatch, psc: PscSandbox, change: Callable[[dict[str, Any]], None]
) -> None:
    original = psc.id_token_claims

    def forged(grant: Grant, now: int) -> dict[str, Any]:
        claims = original(grant, now)
        change(claims)
        return claims

    monkeypatch.setattr(psc, "id_token_claims", forged)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: c.update(aud="un-autre-client", azp="un-autre-client"), id="wrong-aud"),
        pytest.param(
            lambda c: c.update(aud=["un-autre-client", "opensegur-plateforme"], azp="un-autre-client"),
            id="aud-azp-other",
        ),
        pytest.param(lambda c: c.update(iss="https://faux-psc.example/psc"), id="wrong-iss"),
        pytest.param(lambda c: c.update(exp=c["iat"] - 3600, iat=c["iat"] - 7200), id="expired"),
        pytest.param(lambda c: c.pop("nonce"), id="no-nonce"),
        pytest.param(lambda c: c.update(nonce="un-autre-nonce"), id="wrong-nonce"),
    ],
)
def test_forged_id_token_claims_refused(
    setup: Setup, browser: Browser, monkeypatch: pytest.MonkeyPatch, change: Callable[[dict[str, Any]], None]
) -> None:
    _forge_claims(monkeypatch, setup.psc, change)
    refused = browser.go(to_callback(browser, setup))
    assert_refused(setup, refused, 401, "la réponse du fournisseur d'identité n'est pas valide")
    assert setup.audit("login_refused")[-1].detail["why"].startswith("id_token")


def test_replayed_nonce_refused(setup: Setup, browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    _forge_claims(monkeypatch, setup.psc, lambda c: seen.append(c["nonce"]))
    assert browser.go(to_callback(browser, setup)).status_code == 200
    # A later login is answered with an ID token carrying the first login's nonce.
    _forge_claims(monkeypatch, setup.psc, lambda c: c.update(nonce=seen[0]))
    browser.http.cookies.clear()
    refused = browser.go(to_callback(browser, setup))
    assert refused.status_code == 401 and "n'est pas valide" in unescape(refused.text)
    assert len(setup.sessions()) == 1


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_unsigned_id_token_refused(setup: Setup, browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        setup.psc, "id_token", lambda claims: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    )
    assert_refused(setup, browser.go(to_callback(browser, setup)), 401, "n'est pas valide")


def test_id_token_signed_by_another_key_refused(
    setup: Setup, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = RSAKey.generate_key(2048, private=True)
    kid = setup.psc.kid  # the provider's key id, an attacker's key
    monkeypatch.setattr(
        setup.psc, "id_token", lambda claims: jwt.encode({"alg": "RS256", "kid": kid}, claims, other)
    )
    assert_refused(setup, browser.go(to_callback(browser, setup)), 401, "n'est pas valide")


def test_hs256_with_client_secret_refused(
    setup: Setup, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    from joserfc.jwk import OctKey

    secret = OctKey.import_key(setup.psc.client_secret.encode())
    monkeypatch.setattr(setup.psc, "id_token", lambda claims: jwt.encode({"alg": "HS256"}, claims, secret))
    assert_refused(setup, browser.go(to_callback(browser, setup)), 401, "n'est pas valide")


def test_provider_error_and_unconfigured_sso(setup: Setup, browser: Browser) -> None:
    start = browser.go(f"{setup.platform}/connexion/psc", stop_at=setup.sandbox)
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    refused = browser.go(f"{setup.platform}/connexion/psc/retour?error=access_denied&state={state}")
    assert_refused(setup, refused, 401, "interrompue ou refusée")
    assert_refused(setup, browser.go(f"{setup.platform}/connexion/sso"), 404, "n'est pas configuré")


# ---- the hospital SSO: a certified OpenID Provider nobody here wrote

SSO_SECRET = "secret-client-sso-de-test-" + "x" * 20


def _sso_platform(
    tmp_path: Path, name: str, issuer: str, platform: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Database, Offline]:
    """The demo hospital whose identity_providers.toml declares ``issuer`` as its SSO (MFA: acr urn:chu:mfa or
    amr otp), with the account ide.morel."""
    db = Database(f"sqlite:///{tmp_path / name}")
    db.migrate()
    load_demo(db)
    _account(db, "ide.morel", role="ide")
    monkeypatch.setenv("OPENSEGUR_TEST_SSO_SECRET", SSO_SECRET)
    sso = HospitalSso(
        issuer=issuer,
        client_id="opensegur",
        client_secret_env="OPENSEGUR_TEST_SSO_SECRET",
        mfa_acr=["urn:chu:mfa"],
        mfa_amr=["otp"],
    )
    runtime = Offline(Settings(data_dir=tmp_path, public_base_url=platform), db, Hl7Intake(db))
    runtime.hospital = demo_config().model_copy(  # type: ignore[attr-defined]
        update={"identity_providers": IdentityProvidersFile(sso=sso)}
    )
    return db, runtime


def test_sso_login_with_real_openid_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    platform_sock = loopback_socket()
    platform = url_of(platform_sock)
    users = {
        "ide.morel": {"password": "sso-morel-2026", "otp": "424242", "name": "Sophie MOREL"},
        "inconnu.sso": {"password": "sso-inconnu-2026", "otp": "424242", "name": "Personne"},
    }
    with oidc_provider("opensegur", SSO_SECRET, f"{platform}/connexion/sso/retour", users) as issuer:
        db, runtime = _sso_platform(tmp_path, "sso.db", issuer, platform, monkeypatch)
        assert login_options(runtime) == {"psc_login": False, "sso_login": True}
        with serve(_platform_app(runtime), platform_sock):

            def log_in(login: str, otp: str) -> httpx.Response:
                b = Browser()
                try:
                    page = b.go(f"{platform}/connexion/sso?retour=/identites")
                    assert page.status_code == 200 and "Authentification unique du CHU" in page.text, (
                        page.text
                    )
                    return b.submit(page, {"login": login, "password": users[login]["password"], "otp": otp})
                finally:
                    b.close()

            landed = log_in("ide.morel", "424242")
            assert landed.status_code == 200 and str(landed.url) == f"{platform}/identites"
            with db.session() as s:
                [session] = s.scalars(select(WebSession)).all()
                assert session.method == "sso" and session.strong
                account = s.scalars(select(Account).where(Account.login == "ide.morel")).one()
                assert account.sso_sub == "ide.morel"
                login = s.scalars(select(AuditEvent).where(AuditEvent.action == "login")).one()
                assert login.detail["amr"] == ["pwd", "otp"] and login.detail["acr"] == "urn:chu:mfa"

            # Password alone at the SSO: a session, not a strong one.
            assert log_in("ide.morel", "").status_code == 200
            with db.session() as s:
                latest = s.scalars(select(WebSession).order_by(WebSession.id.desc())).first()
                assert latest is not None and latest.method == "sso" and not latest.strong

            refused = log_in("inconnu.sso", "424242")
            assert refused.status_code == 403 and "aucun compte actif" in unescape(refused.text)
            with db.session() as s:
                assert s.scalar(select(func.count()).select_from(WebSession)) == 2
        db.dispose()


def test_sso_login_in_a_real_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chromium through the certified OpenID Provider's own login page (password and one-time code), back to
    the platform with a strong session."""
    platform_sock = loopback_socket()
    platform = url_of(platform_sock)
    users = {"ide.morel": {"password": "sso-morel-2026", "otp": "424242", "name": "Sophie MOREL"}}
    with oidc_provider("opensegur", SSO_SECRET, f"{platform}/connexion/sso/retour", users) as issuer:
        db, runtime = _sso_platform(tmp_path, "sso-browser.db", issuer, platform, monkeypatch)
        with serve(_platform_app(runtime), platform_sock), browser_page() as page:
            page.goto(f"{platform}/identites")
            page.click("text=Connexion établissement (SSO)")
            page.wait_for_selector("input[name=otp]")
            assert page.url.startswith(issuer)
            screenshot(page, "sso-formulaire.png")
            page.fill("input[name=login]", "ide.morel")
            page.fill("input[name=password]", users["ide.morel"]["password"])
            page.fill("input[name=otp]", users["ide.morel"]["otp"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{platform}/identites")
            screenshot(page, "sso-connecte.png")
        with db.session() as s:
            [session] = s.scalars(select(WebSession)).all()
            assert session.method == "sso" and session.strong
        db.dispose()


def test_the_sso_login_claim_comes_from_identity_providers_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENSEGUR_TEST_SSO_SECRET", SSO_SECRET)
    db = Database(f"sqlite:///{tmp_path / 'claim.db'}")
    db.migrate()
    try:
        runtime = Offline(
            Settings(data_dir=tmp_path, public_base_url="https://segur.chu.test"), db, Hl7Intake(db)
        )
        for claim in ("preferred_username", "upn"):
            sso = HospitalSso(
                issuer="https://sso.chu.test",
                client_id="opensegur",
                client_secret_env="OPENSEGUR_TEST_SSO_SECRET",
                **({} if claim == "preferred_username" else {"login_claim": claim}),
            )
            runtime.hospital = demo_config().model_copy(  # type: ignore[attr-defined]
                update={"identity_providers": IdentityProvidersFile(sso=sso)}
            )
            provider = configured_provider(runtime, "sso")
            assert isinstance(provider, Provider) and provider.login_claim == claim
    finally:
        db.dispose()
