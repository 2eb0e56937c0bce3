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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from opensegur.flows.dmp_consult import patient_cx
from opensegur.identity.ins import OID_NIR_TEST
from opensegur.ops.demo_accounts import DEMO_ACCOUNTS, DemoAccount
from opensegur.ops.viewer_install import viewer_dir
from opensegur.security.pki import ensure_test_pki
from opensegur.transport.mllp import send_message
from tests.browser import CHROMIUM, FLAGS, browser_page, fresh_totp, log_in, screenshot
from tests.conftest import EXAMPLES
from tests.flows.helpers import hl7, msh, pid
from tests.ports import free_port
from tests.sandbox_dmp import helpers as dmp_helpers


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
    health = served.web.get(f"{served.http}/healthz").json()
    assert health["status"] == "ok" and health["validation"] in ("warming", "warm")
    # The supervision sees when the schematrons are compiled: the first document will not wait for them.
    # Polled as a supervisor polls: on a loaded machine (CI) a probe may time out, or find its kept-alive
    # connection closed (reset once in CI); it is asked again.

    def warm() -> bool:
        try:
            return bool(served.web.get(f"{served.http}/healthz", timeout=30).json()["validation"] == "warm")
        except httpx.TransportError:
            return False

    wait_for(warm, timeout=180)
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


def sandbox_endpoints(served: Served) -> Any:
    """/sandbox/endpoints on a connection of its own, patiently: a few seconds after it says ready, the server
    compiles its schematrons and may not answer at once (a kept-alive connection is then reset)."""
    return httpx.get(f"{served.http}/sandbox/endpoints", timeout=60).json()


def log_in_with_psc(page: Page, served: Served, form_screenshot: str | None = None) -> None:
    """Dr RÉAULT logs in with his e-CPS on the sandbox Pro Santé Connect's own login form (a strong session)."""
    psc = sandbox_endpoints(served)["psc"]
    reault = next(u for u in psc["users"] if u["login"] == "pierre.reault")
    page.goto(f"{served.http}/identites")
    page.click("text=Se connecter avec Pro Santé Connect")
    page.wait_for_selector("input[name=login]")
    assert page.url.startswith(psc["issuer"])  # the provider's own page, not ours
    if form_screenshot:
        screenshot(page, form_screenshot)
    page.fill("input[name=login]", reault["login"])
    page.fill("input[name=password]", reault["password"])
    page.click("button[type=submit]")
    page.wait_for_url(f"{served.http}/identites")
    assert "Dr Pierre RÉAULT" in page.content()


def test_a_doctor_logs_in_with_pro_sante_connect_in_a_real_browser(served: Served) -> None:
    """The sandbox PSC's own login form, in Chromium: the e-CPS of Dr RÉAULT opens a strong session on his
    account (linked by RPPS), which may then do what needs one."""
    with browser_page() as page:
        log_in_with_psc(page, served, form_screenshot="psc-formulaire.png")
        screenshot(page, "psc-connecte.png")
    with sqlite3.connect(served.data_dir / "opensegur.db") as conn:
        method, strong = conn.execute(
            "select method, strong from web_session join account on account.id = web_session.account_id "
            "where account.login = 'dr.reault' order by web_session.id desc limit 1"
        ).fetchone()
    assert method == "psc" and strong == 1


def _feed_dmp(served: Served, matricule: str, title: str) -> str:
    """A producer feeds one document into the patient's sandbox DMP (a signed ITI-41, as the DMP client sends it),
    created now (UTC, to the next whole second: after any consultation already made); its uniqueId."""
    dmp = sandbox_endpoints(served)["dmp"]
    pki = ensure_test_pki(Path(dmp["test_pki"]["client_cert"]).parent)  # the sandbox's own, already made
    cx = patient_cx(matricule, OID_NIR_TEST)
    created = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y%m%d%H%M%S")
    uid = dmp_helpers.new_oid()
    doc = dmp_helpers.metadata(
        uid,
        cx,
        creation_time=created,
        service_start_time=created,
        service_stop_time=created,
        title=title,
        source_patient_info=[],
    )
    submission = dmp_helpers.iti41(pki, patient=cx, docs=[(doc, dmp_helpers.cda(uid))])
    r = httpx.post(
        dmp["iti41"],
        content=submission.request.body,
        headers={"content-type": submission.request.content_type},
        timeout=60,
    )
    assert dmp_helpers.registry_result(r).status == "Success"
    while datetime.now(UTC).strftime("%Y%m%d%H%M%S") <= created:  # "now" has come for the DMP's creationTime
        time.sleep(0.1)
    return uid


def _glass_patient(served: Served) -> tuple[int, str]:
    """A patient of the doctor's site with a qualified INS (hence a DMP in the sandbox) and the consent, in
    another unit than his: out of his care. On his own site, so never the other site's patient the matrix test
    breaks the glass on."""
    with sqlite3.connect(served.data_dir / "opensegur.db") as conn:
        row = conn.execute(
            "select patient.id, patient.birth_name from patient "
            "join structure on structure.id = patient.structure_id "
            "join stay on stay.patient_id = patient.id and stay.ended_at is null and not stay.cancelled "
            "where structure.finess = '750000028' and patient.status = 'QUAL' "
            "and patient.dmp_consent like '%\"IC\"%' and stay.unit_code != '6268' "
            "and patient.id not in (select patient_id from stay where unit_code = '6268' and ended_at is null) "
            "order by patient.id limit 1"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def test_a_doctor_consults_the_dmp_in_a_real_browser_and_a_secretary_may_not(served: Served) -> None:
    """The DMP consultation as a doctor goes through it in Chromium: Pro Santé Connect, the patient in his care,
    the DMP's status and documents (a document fed since his last visit marked « Nouveau »), a PDF and a CR-BIO
    of level 3, the carnet de vaccination, the DMP's access history, then a patient outside his care by bris de
    glace with its reason. The site's secretary is refused the DMP. Screenshots are kept under test-artefacts/."""
    secretary = next(a for a in DEMO_ACCOUNTS if a.login == "secretariat")
    with browser_page() as page:
        log_in_with_psc(page, served)
        # The demo patient in his care, found by name as he would: one DE LA TOUR in his unit (two in the GHT).
        page.fill("input[name=q]", "DE LA TOUR")
        page.click("button:has-text('Filtrer')")
        page.wait_for_url(re.compile(r"/identites\?q="))
        assert _rows(page) == 1
        page.click("table tbody a[href^='/identites/']")
        page.wait_for_url(re.compile(r"/identites/\d+$"))
        patient_id = int(page.url.rsplit("/", 1)[1])
        with sqlite3.connect(served.data_dir / "opensegur.db") as conn:
            name, status, matricule = conn.execute(
                "select birth_name, status, ins_matricule from patient where id = ?", (patient_id,)
            ).fetchone()
        assert name == "DE LA TOUR" and status == "QUAL" and matricule in page.content()
        assert "Consentement à la consultation recueilli" in page.locator("#consentement-dmp").inner_text()

        # The DMP tab: its status, then the documents of the last two years, none new on a first visit.
        page.click("#raccourcis-documentaires >> text=Accéder au DMP du patient")
        page.wait_for_url(f"{served.http}/identites/{patient_id}/dmp")
        status = page.locator("#statut-dmp").inner_text()
        assert "DMP ouvert" in status and "Vous êtes autorisé(e) à consulter ce DMP" in status
        documents = page.locator("#documents-dmp tbody tr")
        listed = documents.all_inner_texts()
        assert any("Compte rendu d'examens biologiques" in d for d in listed), listed
        assert any("CR d’imagerie médicale" in d for d in listed), listed
        assert any("Lettre de liaison à la sortie de l'établissement de santé" in d for d in listed), listed
        assert page.locator("#filtre-deux-ans").is_visible()
        assert page.locator("#documents-dmp .badge.nouveau").count() == 0
        assert page.locator("#bris-de-glace").count() == 0
        screenshot(page, "dmp-statut-et-liste.png")

        # A level-1 CDA carrying a PDF (the imaging report): served as the PDF itself.
        imaging = documents.filter(has_text="CR d’imagerie médicale").locator("a", has_text="Ouvrir")
        pdf = page.request.get(f"{served.http}{imaging.get_attribute('href')}")
        assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
        assert pdf.body().startswith(b"%PDF-")
        # The CR-BIO, structured (level 3): opened in a new tab, its results read as French HTML.
        biology = documents.filter(has_text="Compte rendu d'examens biologiques").locator(
            "a", has_text="Ouvrir"
        )
        with page.expect_popup() as popup_info:
            biology.click()
        report = popup_info.value
        report.wait_for_load_state()
        assert report.locator("h1").inner_text() == "Compte rendu d'examens biologiques"
        tsh = report.locator("tr", has_text="Thyréostimuline (TSH)").inner_text()
        assert "1.950 mUI/l" in tsh and "(0.270 - 4.200)" in tsh
        assert "Thyroxine libre (FT4)" in report.content()
        screenshot(report, "dmp-cr-bio-n3.png")
        report.close()

        # A producer feeds a new document; back on the DMP tab, it is the one marked « Nouveau ».
        title = "Lettre de liaison à la sortie — chirurgie viscérale"
        uid = _feed_dmp(served, matricule, title)
        page.goto(f"{served.http}/identites/{patient_id}/dmp")
        assert (
            "les documents créés depuis sont marqués « Nouveau »"
            in page.locator("#derniere-consultation").inner_text()
        )
        new = page.locator("#documents-dmp tbody tr:has(.badge.nouveau)")
        assert new.count() == 1 and title in new.inner_text()
        assert (new.locator("a", has_text="Ouvrir").get_attribute("href") or "").endswith(f"uid={uid}")
        assert page.locator("#documents-dmp tbody tr").count() == len(listed) + 1
        screenshot(page, "dmp-nouveau-document.png")

        # The carnet de vaccination, from the vaccination documents of the DMP.
        page.click("nav.onglets >> text=Carnet de vaccination")
        page.wait_for_url(f"{served.http}/identites/{patient_id}/dmp/vaccinations")
        carnet = page.locator("#carnet tbody tr").all_inner_texts()
        assert any("VACCIN TETANIQUE PASTEUR" in v and "4456668" in v for v in carnet), carnet
        assert any("VACCIN BCG SSI" in v for v in carnet), carnet
        assert "Administré" in page.locator("#carnet").inner_text()
        screenshot(page, "dmp-carnet-vaccination.png")

        # The DMP's own access history: his consultations and readings, and the producer's feed.
        page.click("nav.onglets >> text=Historique des accès")
        page.wait_for_url(f"{served.http}/identites/{patient_id}/dmp/acces")
        history = page.locator("#historique-acces tbody tr").all_inner_texts()
        mine = [h for h in history if "Dr Pierre RÉAULT" in h]
        assert any("Vérification du statut du DMP" in h for h in mine), history
        assert any("Recherche de documents" in h for h in mine), history
        assert any("Lecture d'un document" in h for h in mine), history
        assert any("Alimentation (dépôt d'un document)" in h for h in history), history
        assert all("Normal" in h and "Effectué" in h for h in mine), history
        screenshot(page, "dmp-historique-acces.png")

        # A patient outside his care: refused, with the form to break the glass; his reason opens the DMP tab he
        # asked for.
        other_id, other_name = _glass_patient(served)
        refused = page.goto(f"{served.http}/identites/{other_id}/dmp")
        assert refused is not None and refused.status == 403
        assert "Accès refusé" in page.content() and page.locator("input[name=motif]").is_visible()
        motif = "Patient admis aux urgences, inconscient, antécédents à connaître"
        page.fill("input[name=motif]", motif)
        page.click("form[action$='bris-de-glace'] button")
        page.wait_for_url(f"{served.http}/identites/{other_id}/dmp")
        assert "Bris de glace tracé" in page.content()
        assert "Accès en bris de glace" in page.locator("#bris-de-glace").inner_text()
        assert other_name in page.locator("h1").inner_text()
        assert "DMP ouvert" in page.locator("#statut-dmp").inner_text()
        assert page.locator("#documents-dmp tbody tr").count() >= 3
        screenshot(page, "dmp-bris-de-glace.png")
        # The DMP knows the mode: its access history says bris de glace.
        page.click("nav.onglets >> text=Historique des accès")
        page.wait_for_url(f"{served.http}/identites/{other_id}/dmp/acces")
        assert page.locator("#historique-acces tr.acces-urgence", has_text="Bris de glace").count() >= 2
    with sqlite3.connect(served.data_dir / "opensegur.db") as conn:
        traced = conn.execute(
            "select detail from audit_event join account on account.id = audit_event.account_id "
            "where account.login = 'dr.reault' and action = 'break_glass' and patient_id = ?",
            (other_id,),
        ).fetchall()
        modes = {
            json.loads(d).get("mode")
            for (d,) in conn.execute(
                "select detail from audit_event where action = 'consult_dmp' and patient_id = ?", (other_id,)
            )
        }
    assert [json.loads(d)["motif"] for (d,) in traced] == [motif]
    assert modes == {"bris_de_glace"}

    with browser_page() as page:
        log_in(page, served.http, secretary)
        shown = page.goto(f"{served.http}/identites/{patient_id}")
        assert shown is not None and shown.status == 200  # a patient of her site: the record, yes
        assert page.locator("#raccourcis-documentaires").count() == 0  # but no way into the DMP
        refused = page.goto(f"{served.http}/identites/{patient_id}/dmp")
        assert refused is not None and refused.status == 403
        assert "Accès refusé" in page.content()
        assert "Votre rôle ne permet pas : consulter le DMP" in page.locator("main").inner_text()
        assert page.locator("#statut-dmp").count() == 0 and page.locator("input[name=motif]").count() == 0
        screenshot(page, "dmp-secretaire-refus.png")
    with sqlite3.connect(served.data_dir / "opensegur.db") as conn:
        (denied,) = conn.execute(
            "select count(*) from audit_event join account on account.id = audit_event.account_id "
            "where account.login = 'secretariat' and action = 'access_denied' and detail like ?",
            (f"%/identites/{patient_id}/dmp%",),
        ).fetchone()
    assert denied == 1


@pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")
def test_a_doctor_retrieves_another_hospitals_exam_and_sees_it_in_the_viewer(served: Served) -> None:
    """Through the pages, as dr.reault logged in with Pro Santé Connect: the imaging tab lists the demo DMP's CT of
    another hospital, « Récupérer les images » brings it from the sandbox's remote DRIMbox, and OHIF shows its
    first image from this platform's DICOMweb."""
    if not (viewer_dir() / "index.html").is_file():
        if os.environ.get("CI"):
            pytest.fail("the OHIF viewer must be installed in CI (make test installs it with npm)")
        pytest.skip("OHIF viewer not installed (npm absent)")
    found = served.web.get(f"{served.http}/api/v1/patients", params={"ins": "218089913400712"}).json()
    patient = found["items"][0]
    with browser_page() as page:
        page.goto(f"{served.http}/connexion")
        page.click("text=Se connecter avec Pro Santé Connect")
        page.fill("input[name=login]", "pierre.reault")
        page.fill("input[name=password]", "psc-pierre.reault-2026")
        page.click("button[type=submit]")
        page.wait_for_url(f"{served.http}/identites")
        page.goto(f"{served.http}/identites/{patient['id']}")
        page.click("text=Imagerie du patient dans d'autres établissements")
        assert "Tomodensitométrie" in page.locator("#examens-imagerie").inner_text()
        page.click("text=Récupérer les images")
        deadline = time.monotonic() + 60
        while "Images disponibles" not in page.locator("#examens-imagerie").inner_text():
            assert time.monotonic() < deadline, page.locator("#examens-imagerie").inner_text()
            time.sleep(1)
            page.reload()
        screenshot(page, "imagerie-examen-recupere.png")
        frames: list[int] = []
        page.on("response", lambda r: frames.append(r.status) if "/frames/" in r.url else None)
        page.goto(served.http + page.locator("text=Ouvrir dans la visionneuse").get_attribute("href"))
        page.wait_for_selector("text=Crâne — série 1", timeout=60_000)
        page.wait_for_function("() => document.querySelector('canvas') !== null", timeout=60_000)
        deadline = time.monotonic() + 30
        while 200 not in frames and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        assert 200 in frames and all(status == 200 for status in frames), frames
        shot = screenshot(page, "visionneuse-premiere-image.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
