"""The whole platform as a user starts it: `opensegur serve --demo`, over real sockets, then SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from opensegur.ops.demo_accounts import DEMO_ACCOUNTS, DemoAccount
from opensegur.transport.mllp import send_message
from tests.browser import CHROMIUM, FLAGS, browser_page, fresh_totp, log_in, screenshot
from tests.conftest import EXAMPLES
from tests.flows.helpers import hl7, msh, pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    http: str
    mllp_port: int
    data_dir: Path
    web: httpx.Client = field(default_factory=httpx.Client)  # logged in by login() for the pages and the API

    def mllp(self, payload: bytes) -> bytes:
        import asyncio

        return asyncio.run(send_message("127.0.0.1", self.mllp_port, payload))


def start(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    http_port, mllp_port = free_port(), free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    log = log_path.open("ab")
    full_env = {
        **os.environ,
        "OPENSEGUR_JOB_BACKOFF_BASE_S": "0.2",
        "OPENSEGUR_JOB_BACKOFF_MAX_S": "0.5",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opensegur.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http_port),
            "--mllp-port",
            str(mllp_port),
            *extra,
        ],
        env=full_env,
        # A file, not a pipe: nobody reads a pipe while the test runs, and a full pipe would block the server.
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text(errors="replace")[-5000:])
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return Served(proc, base, mllp_port, data_dir)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server not ready in 60 s")


def stop(served: Served) -> int:
    served.proc.send_signal(signal.SIGTERM)
    try:
        return served.proc.wait(timeout=30)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()


def system_token(data_dir: Path, role: str, name: str) -> dict[str, str]:
    """A bearer token made by the operators' command (``opensegur token create``), as an integration gets one."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "opensegur.cli",
            "token",
            "create",
            "--data-dir",
            str(data_dir),
            "--name",
            name,
            "--role",
            role,
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    token = re.search(r"osg_\S+", out)
    assert token is not None, out
    return {"authorization": f"Bearer {token.group(0)}"}


def login(served: Served, account: DemoAccount) -> None:
    """Logs ``served.web`` in through the real pages: password, then the TOTP code; keeps the CSRF token."""
    web = served.web
    r = web.post(f"{served.http}/connexion", data={"login": account.login, "password": account.password})
    assert r.status_code == 200 and "Second facteur" in r.text, r.text[:500]
    assert account.totp_secret is not None
    code = fresh_totp(account.totp_secret)
    r = web.post(f"{served.http}/connexion/second-facteur", data={"code": code, "retour": "/identites"})
    assert r.status_code == 303 and r.headers["location"] == "/identites", r.text[:500]
    page = web.get(f"{served.http}/identites").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None, "no CSRF token on the page"
    web.headers["x-csrf-token"] = token.group(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start(tmp_path_factory.mktemp("serve"), "--demo")
    login(s, next(a for a in DEMO_ACCOUNTS if a.login == "idv"))
    yield s
    s.web.close()
    assert stop(s) == 0


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_health_sandbox_and_openapi(served: Served) -> None:
    assert served.web.get(f"{served.http}/healthz").json()["status"] == "ok"
    endpoints = served.web.get(f"{served.http}/sandbox/endpoints").json()
    assert endpoints["insi"]["url"].startswith("http://127.0.0.1:")
    schema = served.web.get(f"{served.http}/openapi.json").json()
    assert "/api/v1/patients" in schema["paths"] and "/api/v1/metrics/ins" in schema["paths"]


def test_ans_identity_examples_over_mllp_get_aa(served: Served) -> None:
    paths = sorted((EXAMPLES / "SGL").glob("*.er7")) + sorted(
        (EXAMPLES / "Vague 2" / "Consentement_DMP_PAMFR").glob("*.er7")
    )
    for path in paths:
        ack = served.mllp(path.read_bytes()).decode()
        assert "MSA|AA|" in ack, (path.name, ack)
    found = served.web.get(f"{served.http}/api/v1/patients", params={"ins": "279035121518989"}).json()
    assert found["total"] == 1
    patient = found["items"][0]
    assert patient["status"]["code"] == "QUAL"
    assert patient["ins"] == {"matricule": "279035121518989", "oid": "1.2.250.1.213.1.4.10"}
    assert {"system": "000897406", "value": "000003", "type": "PI"} in patient["identifiers"]
    by_ipp = served.web.get(f"{served.http}/api/v1/patients", params={"ipp": "000003"}).json()
    assert by_ipp["items"][0]["id"] == patient["id"]


def test_malformed_frame_and_bad_nir_over_mllp(served: Served) -> None:
    ack = served.mllp(
        hl7(msh("A28", "SRV-BAD"), "EVN||2024", pid("5001", ins="279035121518988", status="VALI"))
    ).decode()
    assert "MSA|AE|SRV-BAD" in ack and "ERR|" in ack and "PID^1^3|" in ack
    with socket.create_connection(("127.0.0.1", served.mllp_port), timeout=5) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|truncated")  # no end block, then close
    assert served.web.get(f"{served.http}/healthz").status_code == 200


def test_metrics_and_pages(served: Served) -> None:
    metrics = served.web.get(f"{served.http}/api/v1/metrics/ins").json()
    assert metrics["active_identities"] >= 50 and 0 < metrics["qualified_rate"] < 1
    assert len(metrics["sites"]) == 2
    page = served.web.get(f"{served.http}/identites")
    assert (
        page.status_code == 200 and "Identités qualifiées" in page.text and "Identité qualifiée" in page.text
    )
    filtered = served.web.get(f"{served.http}/identites", params={"status": "PROV"}).text
    assert "Identité provisoire" in filtered


def _patient(served: Served, name: str) -> dict:  # type: ignore[type-arg]
    items = served.web.get(f"{served.http}/api/v1/patients", params={"q": name}).json()["items"]
    return next(p for p in items if p["traits"]["birth_name"] == name)


def test_qualification_assistant_with_sandbox_insi(served: Served) -> None:
    zoe = _patient(served, "ADRUN")  # validated locally (document checked), unknown to INSi so far
    assert zoe["status"]["code"] == "VALI"
    r = served.web.post(f"{served.http}/identites/{zoe['id']}/insi", follow_redirects=True)
    assert r.status_code == 200 and "Réponse INSi : 00" in r.text
    zoe = _patient(served, "ADRUN")
    assert zoe["status"]["code"] == "QUAL" and zoe["ins"]["matricule"] == "275126322074974"


def test_insi_outage_keeps_status_and_retries(served: Served) -> None:
    admin = served.web.get(f"{served.http}/sandbox/endpoints").json()["insi"]["admin"]
    corse = _patient(served, "CORSE")
    assert corse["status"]["code"] == "PROV"
    assert httpx.post(f"{admin}/faults", json={"http_status": 503, "count": 3}).status_code == 200
    r = served.web.post(f"{served.http}/identites/{corse['id']}/insi", follow_redirects=True)
    assert "injoignable" in r.text
    assert _patient(served, "CORSE")["status"]["code"] == "PROV"
    # The job retries with backoff until the sandbox answers again, then the identity is retrieved.
    wait_for(lambda: _patient(served, "CORSE")["status"]["code"] == "RECUP", timeout=30)
    page = served.web.get(f"{served.http}/identites/{corse['id']}").text
    assert "Réponse INSi" in page or "Dernière réponse INSi : code 00" in page


def test_document_check_then_qualified(served: Served) -> None:
    nessi = _patient(served, "TCHITCHI")
    r = served.web.post(
        f"{served.http}/identites/{nessi['id']}/piece", data={"document": "PASSEPORT"}, follow_redirects=True
    )
    assert r.status_code == 200 and "Identité validée" in r.text
    r = served.web.post(f"{served.http}/identites/{nessi['id']}/insi", follow_redirects=True)
    assert "Réponse INSi : 00" in r.text
    assert _patient(served, "TCHITCHI")["status"]["code"] == "QUAL"


def test_config_prints_without_secrets(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opensegur.cli", "config", "--data-dir", str(tmp_path)],
        env={
            **os.environ,
            "OPENSEGUR_ANNUAIRE_API_KEY": "tres-secret",
            "OPENSEGUR_DB": "postgresql://u:motdepasse@db/opensegur",
        },
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    cfg = json.loads(out)
    assert cfg["annuaire_api_key"] == "***" and "tres-secret" not in out and "motdepasse" not in out
    assert cfg["data_dir"] == str(tmp_path)


def test_sigterm_during_a_burst_loses_no_acknowledged_message(tmp_path: Path) -> None:
    s = start(tmp_path, "--demo", "--no-sandbox")
    acked: list[str] = []
    stop_flag = threading.Event()

    def burst() -> None:
        import asyncio

        async def run() -> None:
            from opensegur.transport.mllp import MllpFramingError

            for i in range(2000):
                if stop_flag.is_set():
                    return
                cid = f"BURST-{i}"
                try:
                    ack = await send_message(
                        "127.0.0.1", s.mllp_port, hl7(msh("A28", cid), "EVN||2024", pid(f"B{i}")), timeout=5
                    )
                except (OSError, MllpFramingError, TimeoutError):
                    return
                if b"MSA|AA|" + cid.encode() in ack:
                    acked.append(cid)

        asyncio.run(run())

    t = threading.Thread(target=burst)
    t.start()
    wait_for(lambda: len(acked) >= 30)
    assert stop(s) == 0
    stop_flag.set()
    t.join(timeout=30)
    with sqlite3.connect(tmp_path / "opensegur.db") as conn:
        stored = {
            r[0] for r in conn.execute("select control_id from inbound_message where status='accepted'")
        }
    assert acked and set(acked) <= stored


def test_structures_and_professionals(served: Served) -> None:
    ght = served.web.get(f"{served.http}/api/v1/structures").json()
    assert len(ght) == 1 and len(ght[0]["sites"]) == 2
    assert ght[0]["idnat_struct"] == "1" + ght[0]["finess_juridique"]
    site = next(s for s in ght[0]["sites"] if s["ipp_authority"]["namespace"] == "CHU-X")
    assert {"code": "6268", "name": "Chirurgie viscérale"} in site["units"]
    pros = served.web.get(f"{served.http}/api/v1/professionals").json()
    assert pros and all(p["idnat_ps"].startswith("8") and len(p["idnat_ps"]) == 12 for p in pros)


CHROMIUM_FLAGS = ["--headless", *FLAGS]


def chromium(tmp: Path, *args: str) -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium must be installed in CI (.ci/run installs it)")
        pytest.skip("chromium not installed")
    out = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout


def test_identity_page_renders_in_a_real_browser(served: Served, tmp_path: Path) -> None:
    idv = next(a for a in DEMO_ACCOUNTS if a.login == "idv")
    with browser_page() as page:
        log_in(page, served.http, idv)
        dom = page.content()
        assert 'lang="fr"' in dom and "Identitovigilance" in dom
        assert dom.count("<rect") == 4  # one bar per RNIV status in the distribution chart
        assert "Identité qualifiée" in dom and "Filtrer" in dom and idv.name in dom
        shot = screenshot(page, tmp_path / "identites.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def _in_care(served: Served, unit: str) -> int:
    """Patients with a current stay in this unit of the demo's first site (the demo's and any ADT's)."""
    with sqlite3.connect(served.data_dir / "opensegur.db") as conn:
        (n,) = conn.execute(
            "select count(distinct patient_id) from stay join structure on structure.id = stay.structure_id "
            "where structure.finess = '750000028' and unit_code = ? and ended_at is null and not cancelled",
            (unit,),
        ).fetchone()
    return int(n)


def _rows(page: Page) -> int:
    return page.locator("table tbody tr td a[href^='/identites/']").count()


def test_a_doctor_and_a_secretary_see_what_the_matrix_gives_them(served: Served) -> None:
    """In a real browser: the unit's doctor sees the patients in care in his unit and nothing else; the site's
    secretary sees the site's patients but neither biology nor the triage of another site; both log in with
    their password and TOTP code. Screenshots are kept under test-artefacts/."""
    doctor = next(a for a in DEMO_ACCOUNTS if a.login == "dr.reault")
    secretary = next(a for a in DEMO_ACCOUNTS if a.login == "secretariat")
    everyone = served.web.get(f"{served.http}/api/v1/patients", params={"limit": 1000}).json()["items"]
    site1 = [p for p in everyone if p["site"]["name"].startswith("CHU-X")]
    site2 = [p for p in everyone if not p["site"]["name"].startswith("CHU-X")]
    with browser_page() as page:
        log_in(page, served.http, doctor)
        assert _rows(page) == _in_care(served, "6268") >= 4  # the demo admits four patients into each unit
        assert "Tri MSSanté" not in page.content() and "Habilitations" not in page.content()
        screenshot(page, "medecin-liste.png")
        page.goto(f"{served.http}/identites/{site2[0]['id']}")
        assert "Accès refusé" in page.content() and "Bris de glace" in page.content()
        screenshot(page, "medecin-refus-bris-de-glace.png")
        page.fill("input[name=motif]", "Patient transféré en urgence au bloc")
        page.click("form[action$='bris-de-glace'] button")
        page.wait_for_url(f"{served.http}/identites/{site2[0]['id']}")
        assert "Bris de glace tracé" in page.content() and "Bris de glace" in page.content()
        screenshot(page, "medecin-apres-bris-de-glace.png")
    with browser_page() as page:
        log_in(page, served.http, secretary)
        shown = page.locator("text=/\\d+ identité\\(s\\)/").first.inner_text()
        assert shown.startswith(f"{len(site1)} "), shown
        assert (
            "Tri MSSanté" in page.content()
            and "Hôpital Saint-Vincent" not in page.locator("table").inner_text()
        )
        screenshot(page, "secretaire-liste.png")
        page.goto(f"{served.http}/identites/{site1[0]['id']}")
        assert "Résultats de biologie" not in page.content() and "Documents" in page.content()
        page.goto(f"{served.http}/identites/{site2[0]['id']}")
        assert "Accès refusé" in page.content() and "Bris de glace" not in page.content()


def test_audit_trail_of_a_real_run_verifies_then_a_changed_entry_is_caught(tmp_path: Path) -> None:
    """The serving process seals and anchors what it audits; `opensegur audit verify` passes on the untouched
    trail, and names the first broken link once someone with the database file rewrites an entry."""
    served = start(tmp_path, "--demo")
    try:
        login(served, next(a for a in DEMO_ACCOUNTS if a.login == "idv"))
        patients = served.web.get(f"{served.http}/api/v1/patients", params={"limit": 3}).json()["items"]
        for p in patients:
            assert served.web.get(f"{served.http}/identites/{p['id']}").status_code == 200
    finally:
        served.web.close()
        assert stop(served) == 0  # SIGTERM: a last seal and anchor
    verify = [sys.executable, "-m", "opensegur.cli", "audit", "verify", "--data-dir", str(tmp_path)]
    ok = subprocess.run(verify, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "audit-anchors.jsonl").read_text().strip()
    with sqlite3.connect(tmp_path / "opensegur.db") as conn:
        # The attacker bypasses the database's refusal (triggers) with write access to the file.
        for (name,) in conn.execute("select name from sqlite_master where type='trigger'").fetchall():
            conn.execute(f'drop trigger "{name}"')
        target = conn.execute(
            "select id from audit_event where action='read_identity' order by id limit 1"
        ).fetchone()[0]
        conn.execute(
            "update audit_event set reason='soins' , actor='quelqu-un-d-autre' where id=?", (target,)
        )
    broken = subprocess.run(verify, capture_output=True, text=True)
    assert broken.returncode == 1
    assert str(target) in broken.stderr, broken.stderr


def test_a_doctor_logs_in_with_pro_sante_connect_in_a_real_browser(served: Served) -> None:
    """The sandbox PSC's own login form, in Chromium: the e-CPS of Dr RÉAULT opens a strong session on his
    account (linked by RPPS), which may then do what needs one."""
    psc = served.web.get(f"{served.http}/sandbox/endpoints").json()["psc"]
    reault = next(u for u in psc["users"] if u["login"] == "pierre.reault")
    with browser_page() as page:
        page.goto(f"{served.http}/identites")
        page.click("text=Se connecter avec Pro Santé Connect")
        page.wait_for_selector("input[name=login]")
        assert page.url.startswith(psc["issuer"])  # the provider's own page, not ours
        screenshot(page, "psc-formulaire.png")
        page.fill("input[name=login]", reault["login"])
        page.fill("input[name=password]", reault["password"])
        page.click("button[type=submit]")
        page.wait_for_url(f"{served.http}/identites")
        assert "Dr Pierre RÉAULT" in page.content()
        screenshot(page, "psc-connecte.png")
    with sqlite3.connect(served.data_dir / "opensegur.db") as conn:
        method, strong = conn.execute(
            "select method, strong from web_session join account on account.id = web_session.account_id "
            "where account.login = 'dr.reault' order by web_session.id desc limit 1"
        ).fetchone()
    assert method == "psc" and strong == 1
