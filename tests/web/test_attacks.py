"""The security review's findings, each as an attack that must fail — with real sessions and tokens, no override.

Cross-site form posts, a spoofed acting user, open redirects, the Host header, forged and expired tokens, session
fixation, text from the query string, scripts in documents and in identity traits, ids out of range, and the
data directory's permissions.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from opensegur.config import Settings
from opensegur.security import accounts, sessions, tokens
from opensegur.security.matrix import Assignment, Scope
from opensegur.server import private_data_dir
from opensegur.store.models import AuditEvent, Document, Mail, Patient, Payload
from opensegur.web.app import create_app
from opensegur.web.deps import SESSION_COOKIE
from tests.flows.helpers import hl7, msh, pid
from tests.web.test_rest_intake import Offline

PASSWORD = "mot-de-passe-de-test-2026"


def person(
    offline: Offline, login: str, role: str, scope: str = "ght", *, strong: bool = True
) -> tuple[str, str]:
    """A logged-in person: the session cookie's secret and the session's CSRF token."""
    with offline.db.session() as s:
        account, _ = accounts.create_account(
            s, login, login.title(), [Assignment(role, Scope.parse(scope))], PASSWORD
        )
        secret, ws = sessions.open_session(s, account, "password+totp", strong, "127.0.0.1", "test")
        return secret, ws.csrf_token


@pytest.fixture
def app(offline: Offline) -> FastAPI:
    return create_app(offline)


@pytest.fixture
async def web(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        yield c


def _two_patients(offline: Offline) -> tuple[int, int]:
    with offline.db.session() as s:
        ids = s.scalars(
            select(Patient.id).where(Patient.active.is_(True)).order_by(Patient.id).limit(2)
        ).all()
    return ids[0], ids[1]


async def test_cross_site_form_post_cannot_merge_identities(offline: Offline, web: httpx.AsyncClient) -> None:
    cookie, csrf = person(offline, "idv", "identitovigilant")
    web.cookies.set(SESSION_COOKIE, cookie)
    target, source = _two_patients(offline)
    # What a page on another origin can make the browser send: the cookie, never the session's token.
    for token in (None, "", "jeton-devine"):
        data = {"source_id": str(source)} | ({"csrf_token": token} if token is not None else {})
        r = await web.post(
            f"/identites/{target}/fusion", data=data, headers={"origin": "https://attaquant.example"}
        )
        assert r.status_code == 403 and "CSRF" in r.text
    with offline.db.session() as s:
        assert s.get_one(Patient, source).active  # nothing merged
    r = await web.post(f"/identites/{target}/fusion", data={"source_id": str(source), "csrf_token": csrf})
    assert r.status_code == 303


async def test_the_acting_user_comes_from_the_token_never_from_a_header(
    offline: Offline,
    web: httpx.AsyncClient,
) -> None:
    with offline.db.session() as s:
        secret = tokens.create_token(s, "dpi-urgences", "secretaire_medicale", created_by="test")
    patient, _ = _two_patients(offline)
    r = await web.get(
        f"/api/v1/patients/{patient}",
        headers={"authorization": f"Bearer {secret}", "x-opensegur-user": "dr.innocent"},
    )
    assert r.status_code == 200
    with offline.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "read_identity")).one()
    assert (
        event.actor == "dpi-urgences"
        and event.session_ref is not None
        and event.session_ref.startswith("token:")
    )


async def test_forged_expired_and_revoked_tokens_are_refused(
    offline: Offline, web: httpx.AsyncClient
) -> None:
    with offline.db.session() as s:
        good = tokens.create_token(s, "integration", "secretaire_medicale", created_by="test")
        old = tokens.create_token(s, "ancien", "secretaire_medicale", expires_days=1, created_by="test")
        gone = tokens.create_token(s, "revoque", "secretaire_medicale", created_by="test")
        tokens.revoke_token(s, "revoque")
    with offline.db.session() as s:
        from opensegur.store.models import ApiToken

        row = s.scalars(select(ApiToken).where(ApiToken.name == "ancien")).one()
        row.expires_at = row.created_at - timedelta(seconds=1)
    for bad in (good[:-2] + "xx", "osg_" + "A" * 43, old, gone, "Basic dXNlcjpwYXNz"):
        r = await web.get("/api/v1/documents", headers={"authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", bad
    r = await web.get("/api/v1/documents", headers={"authorization": f"Bearer {good}"})
    assert r.status_code == 200


async def test_login_redirects_only_to_local_paths_and_never_trusts_the_host(
    offline: Offline,
    web: httpx.AsyncClient,
) -> None:
    with offline.db.session() as s:
        accounts.create_account(
            s, "secretariat", "Secrétariat", [Assignment("secretaire_medicale", Scope("ght"))], PASSWORD
        )
    for retour in (
        "/%09/evil.example",
        "//evil.example",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
    ):
        r = await web.post(
            "/connexion", data={"login": "secretariat", "password": PASSWORD, "retour": retour}
        )
        assert r.status_code == 303 and r.headers["location"] == "/identites", (retour, r.text[-800:])
    web.cookies.clear()
    r = await web.get("/identites", headers={"host": "evil.example"})
    assert r.status_code == 303 and r.headers["location"].startswith("/connexion?retour=")
    assert "evil.example" not in r.headers["location"]


async def test_second_factor_rotates_the_session_secret(offline: Offline, web: httpx.AsyncClient) -> None:
    with offline.db.session() as s:
        account, secret = accounts.create_account(
            s, "dr.test", "Dr Test", [Assignment("medecin", Scope("ght"))], PASSWORD, with_totp=True
        )
    assert secret is not None
    r = await web.post("/connexion", data={"login": "dr.test", "password": PASSWORD})
    assert r.status_code == 200 and "Second facteur" in r.text
    pending = web.cookies[SESSION_COOKIE]
    # A pending session (password only, second factor owed) opens nothing.
    assert (await web.get("/api/v1/patients")).status_code == 401
    r = await web.post("/connexion/second-facteur", data={"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 303
    strong = web.cookies[SESSION_COOKIE]
    assert strong != pending
    assert (await web.get("/api/v1/patients")).status_code == 200
    web.cookies.set(SESSION_COOKIE, pending)  # the secret an attacker planted before login
    assert (await web.get("/api/v1/patients")).status_code == 401


async def test_wrong_codes_lock_the_second_factor(offline: Offline, web: httpx.AsyncClient) -> None:
    with offline.db.session() as s:
        _, secret = accounts.create_account(
            s, "dr.force", "Dr Force", [Assignment("medecin", Scope("ght"))], PASSWORD, with_totp=True
        )
    assert secret is not None
    await web.post("/connexion", data={"login": "dr.force", "password": PASSWORD})
    answers = [
        (await web.post("/connexion/second-facteur", data={"code": f"{n:06d}"})).status_code for n in range(8)
    ]
    assert set(answers) == {401}
    r = await web.post("/connexion/second-facteur", data={"code": pyotp.TOTP(secret).now()})
    assert r.status_code == 401 and "Trop de tentatives" in r.text


async def test_departure_ends_sessions_within_one_request(offline: Offline, web: httpx.AsyncClient) -> None:
    cookie, _ = person(offline, "partant", "medecin")
    web.cookies.set(SESSION_COOKIE, cookie)
    assert (await web.get("/api/v1/patients")).status_code == 200
    with offline.db.session() as s:
        from opensegur.store.models import Account

        accounts.deactivate(
            s, s.scalars(select(Account).where(Account.login == "partant")).one(), "départ RH"
        )
    assert (await web.get("/api/v1/patients")).status_code == 401


async def test_a_page_never_prints_text_from_its_query_string(
    offline: Offline, web: httpx.AsyncClient
) -> None:
    cookie, _ = person(offline, "lecteur", "identitovigilant")
    web.cookies.set(SESSION_COOKIE, cookie)
    patient, _ = _two_patients(offline)
    r = await web.get(f"/identites/{patient}", params={"msg": "Appelez le 01 02 03 04 05 PIRATE"})
    assert r.status_code == 200 and "PIRATE" not in r.text


async def test_document_content_is_an_attachment_in_a_sandbox(
    offline: Offline, web: httpx.AsyncClient
) -> None:
    cda = b'<?xml version="1.0"?><ClinicalDocument><script>alert(document.cookie)</script></ClinicalDocument>'
    with offline.db.session() as s:
        import hashlib

        digest = hashlib.sha256(cda).hexdigest()
        s.add(Payload(sha256=digest, size=len(cda), data=cda))
        site = s.scalar(select(Patient.structure_id).limit(1))
        assert site is not None
        doc = Document(
            structure_id=site, source="hl7", kind="initial", unique_id="1.2.3.4", payload_sha256=digest
        )
        s.add(doc)
        s.flush()
        doc_id = doc.id
    cookie, _ = person(offline, "sec", "secretaire_medicale")
    web.cookies.set(SESSION_COOKIE, cookie)
    r = await web.get(f"/api/v1/documents/{doc_id}/content")
    assert r.status_code == 200 and r.content == cda
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in r.headers["content-security-policy"]


async def test_scripts_in_identity_traits_and_mail_headers_are_shown_as_text(
    offline: Offline,
    web: httpx.AsyncClient,
) -> None:
    patient, _ = _two_patients(offline)
    with offline.db.session() as s:
        p = s.get_one(Patient, patient)
        p.used_name = '<script>alert("nom")</script>'
        p.first_names = "<img src=x onerror=alert(1)>"
    cookie, _ = person(offline, "idv2", "identitovigilant")
    web.cookies.set(SESSION_COOKIE, cookie)
    for url in (f"/identites/{patient}", "/identites"):
        r = await web.get(url)
        assert r.status_code == 200
        assert "<script>alert" not in r.text and "<img src=x" not in r.text
        assert "&lt;img src=x onerror=alert(1)&gt;" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]


async def test_ids_out_of_range_are_not_found(offline: Offline, web: httpx.AsyncClient) -> None:
    cookie, _ = person(offline, "idv3", "identitovigilant")
    web.cookies.set(SESSION_COOKIE, cookie)
    for url in (
        "/identites/99999999999999999999999",
        "/identites/abc",
        "/api/v1/patients/9223372036854775808",
    ):
        assert (await web.get(url)).status_code == 404, url


def test_data_directory_and_database_are_private(tmp_path: Path) -> None:
    data = tmp_path / "donnees"
    data.mkdir(mode=0o755)
    (data / "opensegur.db").write_bytes(b"")
    (data / "opensegur.db").chmod(0o644)
    private_data_dir(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "opensegur.db").stat().st_mode) == 0o600
    (data / "nouveau").write_bytes(b"x")  # the umask holds for every file created afterwards
    assert stat.S_IMODE((data / "nouveau").stat().st_mode) == 0o600
    assert Settings().host == "127.0.0.1"  # listeners bind to loopback unless configured
    # The sandbox (test passwords, admin endpoints) runs with --demo only, unless asked for explicitly.
    assert not Settings().sandbox_on and Settings(demo=True).sandbox_on
    assert not Settings(demo=True, sandbox=False).sandbox_on and Settings(sandbox=True).sandbox_on


async def test_pages_offer_only_the_actions_the_role_holds(offline: Offline, web: httpx.AsyncClient) -> None:
    patient, _ = _two_patients(offline)
    cookie, _ = person(offline, "infirmiere", "ide")
    web.cookies.set(SESSION_COOKIE, cookie)
    page = (await web.get(f"/identites/{patient}")).text
    assert f'action="/identites/{patient}/insi"' not in page and "Corriger un trait strict" not in page
    assert "Fusionner" not in page and "Tri MSSanté" not in page
    web.cookies.clear()
    cookie, _ = person(offline, "identito", "identitovigilant")
    web.cookies.set(SESSION_COOKIE, cookie)
    page = (await web.get(f"/identites/{patient}")).text
    assert f'action="/identites/{patient}/insi"' in page and "Corriger un trait strict" in page


async def test_scripts_received_over_hl7_and_in_mail_headers_never_run_in_a_page(
    offline: Offline, web: httpx.AsyncClient
) -> None:
    """What other systems send is data: a PID-5 used name or a mail subject carrying markup is shown as text."""
    payload = "<img src=x onerror=alert(1)>"
    used_name = f"|VERLAINE^JEANNE^JEANNE^^^^L~{payload}^JEANNE^^^^^D|"
    segment = pid("990001").replace("|VERLAINE^JEANNE^JEANNE^^^^L|", used_name, 1)
    assert payload in segment
    ack = offline.intake.handle(hl7(msh("A28", "XSS-1"), "EVN||20240306111154", segment))
    with offline.db.session() as s:
        stored = s.scalars(select(Patient).where(Patient.used_name.is_not(None))).all()
        site = s.scalars(select(Patient.structure_id)).first()
        s.add(
            Mail(
                direction="in",
                key="in:xss:1",
                mailbox="radiologie@hopitalA.mssante.fr",
                sender="attaquant@exemple.mssante.fr",
                recipients=["radiologie@hopitalA.mssante.fr"],
                subject=f"<script>alert('sujet')</script>{payload}",
                structure_id=site,
                status="triage",
                reason="INS inconnu",
            )
        )
    cookie, _ = person(offline, "tri", "secretaire_medicale")
    web.cookies.set(SESSION_COOKIE, cookie)
    pages = [(await web.get("/mssante/triage")).text]
    pages += [(await web.get(f"/identites/{p.id}")).text for p in stored if payload in (p.used_name or "")]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#39;sujet&#39;)&lt;/script&gt;" in pages[0]
    assert ack.ack_code in ("AA", "AE"), ack.ack  # refused by the RNIV rules, or kept and shown as text
    assert len(pages) == 2, "the used name was not stored: the page side is not exercised"
