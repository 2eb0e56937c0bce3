"""Administration pages: the matrix as a French table, the accounts to watch, the audit trail and its export."""

from __future__ import annotations

import csv
import html
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from opensegur.hospital.apply import ApplyResult, load_and_apply
from opensegur.ops.demo import DEMO_CONFIG_DIR
from opensegur.security import accounts, audit, sessions
from opensegur.security.matrix import Action, Assignment, Scope
from opensegur.store.models import Account, AuditEvent, Patient
from opensegur.web.app import create_app
from opensegur.web.deps import SESSION_COOKIE
from tests.ports import free_port
from tests.web.test_rest_intake import Offline

PASSWORD = "mot-de-passe-de-test-2026"


def _login(offline: Offline, login: str, role: str, *, totp: bool = True) -> str:
    with offline.db.session() as s:
        account, _ = accounts.create_account(
            s, login, login.title(), [Assignment(role, Scope("ght"))], PASSWORD, with_totp=totp
        )
        secret, _ = sessions.open_session(s, account, "password+totp", True, "192.0.2.7", "test")
        return secret


@pytest.fixture
async def admin(offline: Offline) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(offline))
    async with httpx.AsyncClient(transport=transport, base_url="http://opensegur.test") as c:
        c.cookies.set(SESSION_COOKIE, _login(offline, "admin", "admin_technique"))
        yield c


async def test_matrix_page_shows_every_role_and_action_in_french(admin: httpx.AsyncClient) -> None:
    r = await admin.get("/admin/matrice")
    assert r.status_code == 200
    for text in ("Matrice d'habilitation", "Secrétaire médicale", "Médecin", "Fusionner des identités", "AF"):
        assert text in r.text, text
    assert r.text.count('class="oui"') > 10
    assert Action.DMP_CONSULT.label in r.text


async def test_accounts_page_flags_missing_second_factor_and_departures(
    offline: Offline, admin: httpx.AsyncClient
) -> None:
    with offline.db.session() as s:
        accounts.create_account(
            s, "sans.facteur", "Sans Facteur", [Assignment("ide", Scope("ght"))], PASSWORD
        )
    r = await admin.get("/admin/comptes")
    assert r.status_code == 200 and "sans.facteur" in r.text and "Comptes sans second facteur" in r.text
    with offline.db.session() as s:
        target = s.scalars(select(Account).where(Account.login == "sans.facteur")).one()
    page = await admin.get("/admin/comptes")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = await admin.post(
        f"/admin/comptes/{target.id}/desactiver", data={"csrf_token": token, "motif": "départ"}
    )
    assert r.status_code == 303
    with offline.db.session() as s:
        assert not s.get_one(Account, target.id).active


async def test_audit_page_filters_exports_and_traces_its_own_reads(
    offline: Offline, admin: httpx.AsyncClient
) -> None:
    with offline.db.session() as s:
        patient = s.scalars(select(Patient.id).limit(1)).one()
        audit.record(s, None, "read_identity", patient, "soins", actor_name="dr.lecteur")
        audit.record(s, None, "read_identity", None, "soins", actor_name="autre")
    audit.seal_pending(offline.db)
    r = await admin.get("/admin/audit", params={"patient": patient})
    assert r.status_code == 200 and "dr.lecteur" in r.text and "autre" not in r.text
    assert "scellées" in r.text
    r = await admin.get("/admin/audit.csv", params={"qui": "dr.lecteur"})
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    rows = list(csv.reader(io.StringIO(r.text.lstrip("\ufeff")), delimiter=";"))
    assert rows[0][:3] == ["n°", "date (UTC)", "qui"] and len(rows) == 2 and rows[1][2] == "dr.lecteur"
    assert len(rows[1][10]) == 64  # the seal's hash
    with offline.db.session() as s:
        actions = set(s.scalars(select(AuditEvent.action).where(AuditEvent.actor == "admin")))
    assert {"read_audit", "export_audit"} <= actions


@pytest.mark.requirement("IMG-DEPLOYMENT-CHECK")
async def test_the_deployment_page_tests_each_link_now_and_is_traced(
    admin: httpx.AsyncClient, offline: Offline
) -> None:
    # A port nothing listens on once its probe is closed.
    offline.settings = offline.settings.model_copy(update={"host": "127.0.0.1", "mllp_port": free_port()})
    page = await admin.get("/admin/deploiement")
    assert page.status_code == 200 and 'id="verifications"' in page.text
    text = html.unescape(page.text)
    # Nothing listens in this test: the MLLP link fails and says what to do; the PACS is not configured.
    assert "Écoute MLLP" in text and "Démarrer `opensegur serve`" in text and "non configuré" in text
    assert "1 lien en échec" in text
    with offline.db.session() as s:
        traced = s.scalars(select(AuditEvent).where(AuditEvent.action == "deployment_check")).one()
        assert traced.actor == "admin" and traced.detail == {"echecs": 1}


async def test_a_doctor_is_refused_the_admin_pages(offline: Offline) -> None:
    transport = httpx.ASGITransport(app=create_app(offline))
    async with httpx.AsyncClient(transport=transport, base_url="http://opensegur.test") as c:
        c.cookies.set(SESSION_COOKIE, _login(offline, "dr.curieux", "medecin"))
        for url in (
            "/admin/matrice",
            "/admin/comptes",
            "/admin/audit",
            "/admin/audit.csv",
            "/admin/deploiement",
        ):
            r = await c.get(url)
            assert r.status_code == 403 and "Votre rôle ne permet pas" in r.text, url
        page = await c.get("/identites")
        assert 'href="/admin/' not in page.text  # the menu does not offer what the role may not do


async def test_configuration_page_lists_versions_with_their_changes_and_reloads(
    offline: Offline, admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    directory = tmp_path / "ght"
    shutil.copytree(DEMO_CONFIG_DIR, directory)
    load_and_apply(offline.db, directory, "installation")

    async def reload(applied_by: str) -> ApplyResult | None:
        return load_and_apply(offline.db, directory, applied_by)[1]

    offline.reload_config = reload  # type: ignore[attr-defined]
    roles = directory / "roles.toml"
    roles.write_text(roles.read_text().replace('label = "Médecin"', 'label = "Médecin senior"'))
    page = await admin.get("/admin/configuration")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = await admin.post("/admin/configuration/recharger", data={"csrf_token": token})
    assert r.status_code == 303
    page = await admin.get("/admin/configuration")
    assert "en vigueur" in page.text and "par admin" in page.text and page.text.count("Version ") >= 2
    assert "Médecin senior" in page.text  # the diff of the new version names what changed
    (directory / "sites.toml").write_text("[[sites]]\nfiness = 'pas-un-finess'\n")
    r = await admin.post("/admin/configuration/recharger", data={"csrf_token": token})
    shown = (await admin.get(r.headers["location"])).text
    assert "Configuration refusée, la précédente reste en vigueur" in shown and "sites.toml" in shown
