"""Security keys through the real pages and endpoints, with ``soft-webauthn`` as the key: enrol, log in, and the
attacks — a replayed assertion (used challenge, stale signature counter), another origin or RP ID, a revoked
key, another account's key, hostile JSON — each refused with a French message.

The platform is published at https://segur.chu-test.fr (``public_base_url``), as a hospital would: the origin and
RP ID come from there, and the cookies are ``Secure``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from soft_webauthn import SoftWebauthnDevice
from sqlalchemy import select

from opensegur.config import Settings
from opensegur.security import accounts, sessions
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.models import AuditEvent, WebauthnCredential, WebSession
from opensegur.web.app import create_app
from opensegur.web.deps import SESSION_COOKIE
from tests.web.test_rest_intake import Offline, offline  # noqa: F401  (fixture)

BASE = "https://segur.chu-test.fr"
PASSWORD = "mot-de-passe-de-test-2026"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _bytes(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def app(offline: Offline) -> FastAPI:  # noqa: F811
    offline.settings = Settings(data_dir=offline.settings.data_dir, public_base_url=BASE)
    app = create_app(offline)
    return app


@pytest.fixture
async def web(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


@dataclasses.dataclass
class Person:
    login: str
    account_id: int
    cookie: str  # a strong session opened just now (password + TOTP)
    csrf: str


def person(offline: Offline, login: str, role: str = "medecin", *, strong: bool = True) -> Person:  # noqa: F811
    with offline.db.session() as s:
        account, _ = accounts.create_account(
            s, login, login.title(), [Assignment(role, Scope.parse("ght"))], PASSWORD, with_totp=True
        )
        secret, ws = sessions.open_session(
            s, account, "password+totp" if strong else "password", strong, "127.0.0.1", "test"
        )
        return Person(login, account.id, secret, ws.csrf_token)


def _device_options(options: dict[str, Any]) -> dict[str, Any]:
    """The JSON options as ``navigator.credentials`` sees them: binary fields decoded."""
    public_key = json.loads(json.dumps(options))
    public_key["challenge"] = _bytes(public_key["challenge"])
    if "user" in public_key:
        public_key["user"]["id"] = _bytes(public_key["user"]["id"])
    return {"publicKey": public_key}


def _attestation(device: SoftWebauthnDevice, options: dict[str, Any], origin: str = BASE) -> dict[str, Any]:
    made = device.create(_device_options(options), origin)
    return {
        "id": _b64(made["rawId"]),
        "rawId": _b64(made["rawId"]),
        "type": "public-key",
        "response": {
            "clientDataJSON": _b64(made["response"]["clientDataJSON"]),
            "attestationObject": _b64(made["response"]["attestationObject"]),
        },
    }


def _assertion(device: SoftWebauthnDevice, options: dict[str, Any], origin: str = BASE) -> dict[str, Any]:
    made = device.get(_device_options(options), origin)
    return {
        "id": _b64(made["rawId"]),
        "rawId": _b64(made["rawId"]),
        "type": "public-key",
        "response": {
            "clientDataJSON": _b64(made["response"]["clientDataJSON"]),
            "authenticatorData": _b64(made["response"]["authenticatorData"]),
            "signature": _b64(made["response"]["signature"]),
            "userHandle": _b64(made["response"]["userHandle"]),
        },
    }


async def enrol(web: httpx.AsyncClient, who: Person, label: str = "Clé bleue") -> SoftWebauthnDevice:
    device = SoftWebauthnDevice()
    web.cookies.set(SESSION_COOKIE, who.cookie)
    headers = {"x-csrf-token": who.csrf}
    r = await web.post("/api/moi/cles/options", headers=headers, json={})
    assert r.status_code == 200, r.text
    r = await web.post(
        "/api/moi/cles", headers=headers, json={"credential": _attestation(device, r.json()), "label": label}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "detail": f"Clé « {label} » enregistrée : elle vous sera demandée à la connexion",
        "redirect": "/moi/cles",
    }
    web.cookies.clear()
    return device


async def password_step(web: httpx.AsyncClient, login: str) -> str:
    """The real login form; returns the pending session's secret (the cookie now in ``web``)."""
    web.cookies.clear()
    r = await web.post("/connexion", data={"login": login, "password": PASSWORD, "retour": "/identites"})
    assert r.status_code == 200 and "Utiliser ma clé de sécurité" in r.text, r.text
    return web.cookies[SESSION_COOKIE]


async def key_options(web: httpx.AsyncClient) -> dict[str, Any]:
    r = await web.post("/connexion/cle/options", json={})
    assert r.status_code == 200, r.text
    options: dict[str, Any] = r.json()
    return options


async def verify(web: httpx.AsyncClient, assertion: Any, retour: str = "/identites") -> httpx.Response:
    return await web.post("/connexion/cle/verifier", json={"credential": assertion, "retour": retour})


def _sign_count(offline: Offline, device: SoftWebauthnDevice) -> int:  # noqa: F811
    with offline.db.session() as s:
        key = s.scalars(
            select(WebauthnCredential).where(WebauthnCredential.credential_id == _b64(device.credential_id))
        ).one()
        return key.sign_count


async def test_enrol_then_log_in_with_the_key(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    dr = person(offline, "dr.cle")
    device = await enrol(web, dr)
    web.cookies.set(SESSION_COOKIE, dr.cookie)
    page = await web.get("/moi/cles")
    assert page.status_code == 200 and "Clé bleue" in page.text and "active" in page.text
    assert '<script src="/static/webauthn.js">' in page.text

    pending = await password_step(web, "dr.cle")
    assert (await web.get("/identites")).status_code in (303, 401)  # the pending session opens nothing
    options = await key_options(web)
    assert options["rpId"] == "segur.chu-test.fr"
    assert [c["id"] for c in options["allowCredentials"]] == [_b64(device.credential_id)]
    r = await verify(web, _assertion(device, options), retour="//evil.example/")
    assert r.status_code == 200 and r.json() == {"redirect": "/identites"}  # never off-site
    set_cookie = r.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "Secure" in set_cookie and "samesite=lax" in set_cookie.lower()
    strong = web.cookies[SESSION_COOKIE]
    assert strong != pending  # rotated: a secret planted before login opens nothing after it
    assert (await web.get("/identites")).status_code == 200
    with offline.db.session() as s:
        ws = s.scalars(
            select(WebSession).where(WebSession.account_id == dr.account_id).order_by(WebSession.id)
        )
        last = list(ws)[-1]
        assert last.strong and last.method == "password+webauthn"
        login = s.scalars(select(AuditEvent).where(AuditEvent.action == "login")).all()[-1]
        assert login.actor == "dr.cle" and login.detail["method"] == "password+webauthn"
        assert s.scalar(select(AuditEvent.id).where(AuditEvent.action == "webauthn_enrol")) is not None
    assert _sign_count(offline, device) == 1
    web.cookies.set(SESSION_COOKIE, pending)  # the secret of before the key: worthless now
    r = await web.post("/connexion/cle/options", json={})
    assert r.status_code == 401 and r.json()["detail"] == "Session expirée : reconnectez-vous"


async def test_replayed_assertion_is_refused(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    dr = person(offline, "dr.rejeu")
    device = await enrol(web, dr)
    await password_step(web, "dr.rejeu")
    captured = _assertion(device, await key_options(web))
    assert (await verify(web, captured)).status_code == 200

    # The same assertion again, in a new login: its challenge was used up.
    await password_step(web, "dr.rejeu")
    await key_options(web)
    r = await verify(web, captured)
    assert r.status_code == 401 and "Clé de sécurité refusée" in r.json()["detail"]

    # A fresh challenge signed with a counter that did not move (a cloned key): refused, counter kept.
    for stale in (1, 0):
        await password_step(web, "dr.rejeu")
        options = await key_options(web)
        device.sign_count = stale - 1  # the device adds one before signing
        r = await verify(web, _assertion(device, options))
        assert r.status_code == 401 and "Clé de sécurité refusée" in r.json()["detail"], stale
    assert _sign_count(offline, device) == 1
    device.sign_count = 5
    await password_step(web, "dr.rejeu")
    assert (await verify(web, _assertion(device, await key_options(web)))).status_code == 200
    assert _sign_count(offline, device) == 6


async def test_a_challenge_is_used_once(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    dr = person(offline, "dr.defi")
    device = await enrol(web, dr)
    await password_step(web, "dr.defi")
    options = await key_options(web)
    wrong = await verify(web, _assertion(device, options, origin="https://evil.example"))
    assert wrong.status_code == 401
    # The right answer to the same challenge comes too late: one try per challenge.
    r = await verify(web, _assertion(device, options))
    assert r.status_code == 400 and r.json()["detail"] == "Demande expirée ou déjà utilisée : recommencez."
    # Only the latest options of a session count: an answer to earlier ones does not match the live challenge.
    first = await key_options(web)
    await key_options(web)
    r = await verify(web, _assertion(device, first))
    assert r.status_code == 401 and "Clé de sécurité refusée" in r.json()["detail"]

    # Enrolment: a second key answering options already used is refused as well.
    web.cookies.set(SESSION_COOKIE, dr.cookie)
    headers = {"x-csrf-token": dr.csrf}
    options = (await web.post("/api/moi/cles/options", headers=headers, json={})).json()
    ok = await web.post(
        "/api/moi/cles",
        headers=headers,
        json={"credential": _attestation(SoftWebauthnDevice(), options), "label": "A"},
    )
    assert ok.status_code == 200
    again = await web.post(
        "/api/moi/cles",
        headers=headers,
        json={"credential": _attestation(SoftWebauthnDevice(), options), "label": "B"},
    )
    assert again.status_code == 400 and "expirée" in again.json()["detail"]


async def test_another_origin_or_rp_id_is_refused(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    dr = person(offline, "dr.origine")
    device = await enrol(web, dr)
    # A phishing proxy relays the options to the victim's browser: the browser reports the proxy's origin.
    for origin in (
        "https://segur.chu-test.fr.evil.example",
        "http://segur.chu-test.fr",
        "https://segur.chu-test.fr:8443",
    ):
        await password_step(web, "dr.origine")
        r = await verify(web, _assertion(device, await key_options(web), origin=origin))
        assert r.status_code == 401 and "sur ce site" in r.json()["detail"], origin
    # A key answering for another RP ID (its authenticator data hashes another name).
    await password_step(web, "dr.origine")
    options = await key_options(web)
    device.rp_id = options["rpId"] = "evil.example"
    r = await verify(web, _assertion(device, options))
    assert r.status_code == 401
    with offline.db.session() as s:
        assert all(
            ws.method != "password+webauthn"
            for ws in s.scalars(select(WebSession).where(WebSession.account_id == dr.account_id))
        )

    # Enrolment from another origin stores nothing.
    web.cookies.set(SESSION_COOKIE, dr.cookie)
    headers = {"x-csrf-token": dr.csrf}
    options = (await web.post("/api/moi/cles/options", headers=headers, json={})).json()
    credential = _attestation(SoftWebauthnDevice(), options, origin="https://evil.example")
    r = await web.post("/api/moi/cles", headers=headers, json={"credential": credential, "label": "Piège"})
    assert r.status_code == 401 and "enregistrement non valide pour ce site" in r.json()["detail"]
    with offline.db.session() as s:
        labels = s.scalars(
            select(WebauthnCredential.label).where(WebauthnCredential.account_id == dr.account_id)
        )
        assert list(labels) == ["Clé bleue"]


async def test_revoked_key_is_refused(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    dr = person(offline, "dr.perdue")
    lost = await enrol(web, dr, "Perdue")
    spare = await enrol(web, dr, "Secours")
    with offline.db.session() as s:
        lost_id = s.scalars(select(WebauthnCredential.id).where(WebauthnCredential.label == "Perdue")).one()
    web.cookies.set(SESSION_COOKIE, dr.cookie)
    r = await web.post(f"/moi/cles/{lost_id}/revoquer", data={"csrf_token": dr.csrf})
    assert r.status_code == 303 and r.headers["location"] == "/moi/cles"
    await password_step(web, "dr.perdue")
    options = await key_options(web)
    assert [c["id"] for c in options["allowCredentials"]] == [_b64(spare.credential_id)]
    r = await verify(web, _assertion(lost, options))
    assert r.status_code == 401 and "Clé de sécurité refusée" in r.json()["detail"]
    await password_step(web, "dr.perdue")
    assert (await verify(web, _assertion(spare, await key_options(web)))).status_code == 200


async def test_key_of_another_account_is_refused(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    alice = person(offline, "dr.alice")
    bob = person(offline, "dr.bob")
    alice_key = await enrol(web, alice)
    await enrol(web, bob)
    await password_step(web, "dr.bob")
    r = await verify(web, _assertion(alice_key, await key_options(web)))
    assert r.status_code == 401 and "Clé de sécurité refusée" in r.json()["detail"]
    # Nor may Bob rename or revoke Alice's key: it does not exist for him.
    with offline.db.session() as s:
        alice_key_id = s.scalars(
            select(WebauthnCredential.id).where(WebauthnCredential.account_id == alice.account_id)
        ).one()
    web.cookies.set(SESSION_COOKIE, bob.cookie)
    for action in ("revoquer", "renommer"):
        r = await web.post(f"/moi/cles/{alice_key_id}/{action}", data={"csrf_token": bob.csrf, "label": "x"})
        assert r.status_code == 404, action
    with offline.db.session() as s:
        assert s.get_one(WebauthnCredential, alice_key_id).revoked_at is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            b'{"credential": {"id": "!!!", "rawId": "!!!", "type": "public-key", "response": '
            b'{"clientDataJSON": "%%%", "authenticatorData": "***", "signature": "@@@"}}}',
            "application/json",
        ),
        (b'{"credential": "pas un objet"}', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"{pas du json", "application/json"),
        (b"[" * 20_000 + b"]" * 20_000, "application/json"),
        (b'{"credential": {"id": "' + b"A" * 2_000_000 + b'"}}', "application/json"),
        (b"credential=x", "application/x-www-form-urlencoded"),
    ],
    ids=["bad-base64", "not-an-object", "array", "not-json", "deep-nesting", "huge", "form"],
)
async def test_hostile_json_is_a_400_in_french(
    offline: Offline,  # noqa: F811
    web: httpx.AsyncClient,
    body: bytes,
    content_type: str,
) -> None:
    dr = person(offline, "dr.hostile")
    await enrol(web, dr)
    await password_step(web, "dr.hostile")
    await key_options(web)
    r = await web.post("/connexion/cle/verifier", content=body, headers={"content-type": content_type})
    assert r.status_code == 400
    assert r.json()["detail"] in {
        "Réponse de la clé de sécurité illisible.",
        "Réponse de la clé de sécurité trop volumineuse.",
        "Requête JSON attendue.",
    }
    web.cookies.set(SESSION_COOKIE, dr.cookie)
    await web.post("/api/moi/cles/options", headers={"x-csrf-token": dr.csrf}, json={})
    r = await web.post(
        "/api/moi/cles", content=body, headers={"content-type": content_type, "x-csrf-token": dr.csrf}
    )
    assert r.status_code == 400 and r.json()["detail"].startswith(("Réponse de la clé", "Requête JSON"))


async def test_enrolment_needs_a_recent_strong_session(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    weak = person(offline, "dr.faible", strong=False)
    web.cookies.set(SESSION_COOKIE, weak.cookie)
    r = await web.post("/api/moi/cles/options", headers={"x-csrf-token": weak.csrf}, json={})
    assert r.status_code == 403 and "connexion forte" in r.json()["detail"]
    page = await web.get("/moi/cles")
    assert page.status_code == 200 and "connexion forte" in page.text and 'id="ajouter-cle"' not in page.text

    with offline.db.session() as s:
        account, _ = accounts.create_account(
            s, "dr.ancienne", "Ancienne", [Assignment("medecin", Scope("ght"))], PASSWORD, with_totp=True
        )
        old, ws = sessions.open_session(
            s, account, "password+totp", True, None, None, now=datetime.now(UTC) - timedelta(minutes=20)
        )
        csrf = ws.csrf_token
    web.cookies.set(SESSION_COOKIE, old)
    r = await web.post("/api/moi/cles/options", headers={"x-csrf-token": csrf}, json={})
    assert r.status_code == 403 and "moins de 15 minutes" in r.json()["detail"]

    # A page of another origin can make the browser send the cookie, never the session's token.
    dr = person(offline, "dr.csrf")
    web.cookies.set(SESSION_COOKIE, dr.cookie)
    for headers in ({}, {"x-csrf-token": "jeton-devine"}):
        r = await web.post("/api/moi/cles/options", headers=headers, json={})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    web.cookies.clear()
    r = await web.post("/api/moi/cles/options", json={})
    assert r.status_code == 401


async def test_wrong_keys_count_towards_the_second_factor_limit(
    offline: Offline,  # noqa: F811
    web: httpx.AsyncClient,
) -> None:
    dr = person(offline, "dr.force")
    device = await enrol(web, dr)
    await password_step(web, "dr.force")
    for _ in range(5):
        r = await verify(web, _assertion(device, await key_options(web), origin="https://evil.example"))
        assert r.status_code == 401
    r = await web.post("/connexion/cle/options", json={})
    assert r.status_code == 429 and r.json()["detail"] == "Trop de tentatives : réessayez dans 15 minutes."


async def test_admin_revokes_a_lost_key(offline: Offline, web: httpx.AsyncClient) -> None:  # noqa: F811
    dr = person(offline, "dr.distraite")
    await enrol(web, dr, "Clé oubliée dans le train")
    admin = person(offline, "admin.cles", "admin_technique")
    web.cookies.set(SESSION_COOKIE, admin.cookie)
    page = await web.get(f"/admin/comptes/{dr.account_id}/cles")
    assert page.status_code == 200 and "Clé oubliée dans le train" in page.text
    with offline.db.session() as s:
        key_id = s.scalars(
            select(WebauthnCredential.id).where(WebauthnCredential.account_id == dr.account_id)
        ).one()
    r = await web.post(
        f"/admin/comptes/{dr.account_id}/cles/{key_id}/revoquer", data={"csrf_token": admin.csrf}
    )
    assert r.status_code == 303
    with offline.db.session() as s:
        assert s.get_one(WebauthnCredential, key_id).revoked_at is not None
        entry = s.scalars(select(AuditEvent).where(AuditEvent.action == "webauthn_revoke")).one()
        assert entry.actor == "admin.cles" and entry.reason == "administration"
    # The doctor cannot use the admin routes, and a key id out of range names nothing.
    web.cookies.set(SESSION_COOKIE, dr.cookie)
    assert (await web.get(f"/admin/comptes/{dr.account_id}/cles")).status_code == 403
    r = await web.post(f"/moi/cles/{2**70}/revoquer", data={"csrf_token": dr.csrf})
    assert r.status_code == 404


async def test_second_factor_page_renders_without_the_key_routes(offline: Offline) -> None:  # noqa: F811
    person(offline, "dr.seule")
    app = create_app(offline)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        r = await c.post("/connexion", data={"login": "dr.seule", "password": PASSWORD})
    assert r.status_code == 200 and "Utiliser ma clé de sécurité" in r.text and 'name="code"' in r.text
