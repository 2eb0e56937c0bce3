"""A security key in a real Chromium: Chrome's virtual FIDO2 authenticator (DevTools protocol) is enrolled on
« Mes clés de sécurité » after a TOTP login, then opens the next login in place of the code — through the real
pages, their script and the platform served over HTTP on http://localhost (a secure context for WebAuthn)."""

from __future__ import annotations

import socket

from sqlalchemy import select

from opensegur.config import Settings
from opensegur.ops.demo_accounts import DemoAccount
from opensegur.security import accounts
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.models import WebauthnCredential, WebSession
from opensegur.web.app import create_app
from tests.browser import browser_page, log_in, screenshot
from tests.oidc_servers import serve
from tests.web.test_rest_intake import Offline, offline  # noqa: F401  (fixture)


def test_enrol_a_key_then_log_in_with_it(offline: Offline) -> None:  # noqa: F811
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://localhost:{sock.getsockname()[1]}"
    offline.settings = Settings(data_dir=offline.settings.data_dir, public_base_url=base)
    login = "dr.navigateur"
    with offline.db.session() as s:
        account, secret = accounts.create_account(
            s,
            login,
            "Dr Navigateur",
            [Assignment("medecin", Scope("ght"))],
            DemoAccount(login, "", "", "", None).password,
            with_totp=True,
        )
        account_id = account.id
    person = DemoAccount(login, "Dr Navigateur", "medecin", "ght", secret)
    app = create_app(offline)

    with serve(app, sock), browser_page() as page:
        cdp = page.context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        authenticator = cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "usb",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                }
            },
        )["authenticatorId"]

        # Password and TOTP code, then the key, on the person's own page.
        log_in(page, base, person, then="/moi/cles")
        page.fill("#nom-cle", "Clé du bureau")
        page.click("#ajouter-cle")
        page.wait_for_selector("td:has-text('Clé du bureau')")
        assert "Aucune clé enregistrée" not in page.content()
        screenshot(page, "webauthn-cle-enregistree.png")
        stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]
        assert len(stored) == 1

        page.click("text=Se déconnecter")
        page.wait_for_url(f"{base}/connexion")

        # Next login: password, then the key instead of the code.
        page.goto(f"{base}/moi/cles")
        page.fill("input[name=login]", person.login)
        page.fill("input[name=password]", person.password)
        page.click("button[type=submit]")
        page.wait_for_selector("#utiliser-cle")
        screenshot(page, "webauthn-second-facteur.png")
        page.click("#utiliser-cle")
        page.wait_for_url(f"{base}/moi/cles")
        page.wait_for_selector("td:has-text('Clé du bureau')")
        screenshot(page, "webauthn-connecte-par-cle.png")

    with offline.db.session() as s:
        last = s.scalars(
            select(WebSession).where(WebSession.account_id == account_id).order_by(WebSession.id.desc())
        ).first()
        assert last is not None and last.strong and last.method == "password+webauthn"
        key = s.scalars(select(WebauthnCredential).where(WebauthnCredential.account_id == account_id)).one()
        assert key.label == "Clé du bureau" and key.sign_count >= 1
