"""The whole platform as a user starts it: `opensegur serve --demo`, over real sockets, then SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from opensegur.transport.mllp import send_message
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


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start(tmp_path_factory.mktemp("serve"), "--demo")
    yield s
    assert stop(s) == 0


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_health_sandbox_and_openapi(served: Served) -> None:
    assert httpx.get(f"{served.http}/healthz").json()["status"] == "ok"
    endpoints = httpx.get(f"{served.http}/sandbox/endpoints").json()
    assert endpoints["insi"]["url"].startswith("http://127.0.0.1:")
    schema = httpx.get(f"{served.http}/openapi.json").json()
    assert "/api/v1/patients" in schema["paths"] and "/api/v1/metrics/ins" in schema["paths"]


def test_ans_identity_examples_over_mllp_get_aa(served: Served) -> None:
    paths = sorted((EXAMPLES / "SGL").glob("*.er7")) + sorted(
        (EXAMPLES / "Vague 2" / "Consentement_DMP_PAMFR").glob("*.er7")
    )
    for path in paths:
        ack = served.mllp(path.read_bytes()).decode()
        assert "MSA|AA|" in ack, (path.name, ack)
    found = httpx.get(f"{served.http}/api/v1/patients", params={"ins": "279035121518989"}).json()
    assert found["total"] == 1
    patient = found["items"][0]
    assert patient["status"]["code"] == "QUAL"
    assert patient["ins"] == {"matricule": "279035121518989", "oid": "1.2.250.1.213.1.4.10"}
    assert {"system": "000897406", "value": "000003", "type": "PI"} in patient["identifiers"]
    by_ipp = httpx.get(f"{served.http}/api/v1/patients", params={"ipp": "000003"}).json()
    assert by_ipp["items"][0]["id"] == patient["id"]


def test_malformed_frame_and_bad_nir_over_mllp(served: Served) -> None:
    ack = served.mllp(
        hl7(msh("A28", "SRV-BAD"), "EVN||2024", pid("5001", ins="279035121518988", status="VALI"))
    ).decode()
    assert "MSA|AE|SRV-BAD" in ack and "ERR|" in ack and "PID^1^3|" in ack
    with socket.create_connection(("127.0.0.1", served.mllp_port), timeout=5) as sock:
        sock.sendall(b"\x0bMSH|^~\\&|truncated")  # no end block, then close
    assert httpx.get(f"{served.http}/healthz").status_code == 200


def test_metrics_and_pages(served: Served) -> None:
    metrics = httpx.get(f"{served.http}/api/v1/metrics/ins").json()
    assert metrics["active_identities"] >= 50 and 0 < metrics["qualified_rate"] < 1
    assert len(metrics["sites"]) == 2
    page = httpx.get(f"{served.http}/identites")
    assert (
        page.status_code == 200 and "Identités qualifiées" in page.text and "Identité qualifiée" in page.text
    )
    filtered = httpx.get(f"{served.http}/identites", params={"status": "PROV"}).text
    assert "Identité provisoire" in filtered


def _patient(served: Served, name: str) -> dict:  # type: ignore[type-arg]
    items = httpx.get(f"{served.http}/api/v1/patients", params={"q": name}).json()["items"]
    return next(p for p in items if p["traits"]["birth_name"] == name)


def test_qualification_assistant_with_sandbox_insi(served: Served) -> None:
    zoe = _patient(served, "ADRUN")  # validated locally (document checked), unknown to INSi so far
    assert zoe["status"]["code"] == "VALI"
    r = httpx.post(f"{served.http}/identites/{zoe['id']}/insi", follow_redirects=True)
    assert r.status_code == 200 and "Réponse INSi : 00" in r.text
    zoe = _patient(served, "ADRUN")
    assert zoe["status"]["code"] == "QUAL" and zoe["ins"]["matricule"] == "275126322074974"


def test_insi_outage_keeps_status_and_retries(served: Served) -> None:
    admin = httpx.get(f"{served.http}/sandbox/endpoints").json()["insi"]["admin"]
    corse = _patient(served, "CORSE")
    assert corse["status"]["code"] == "PROV"
    assert httpx.post(f"{admin}/faults", json={"http_status": 503, "count": 3}).status_code == 200
    r = httpx.post(f"{served.http}/identites/{corse['id']}/insi", follow_redirects=True)
    assert "injoignable" in r.text
    assert _patient(served, "CORSE")["status"]["code"] == "PROV"
    # The job retries with backoff until the sandbox answers again, then the identity is retrieved.
    wait_for(lambda: _patient(served, "CORSE")["status"]["code"] == "RECUP", timeout=30)
    page = httpx.get(f"{served.http}/identites/{corse['id']}").text
    assert "Réponse INSi" in page or "Dernière réponse INSi : code 00" in page


def test_document_check_then_qualified(served: Served) -> None:
    nessi = _patient(served, "TCHITCHI")
    r = httpx.post(
        f"{served.http}/identites/{nessi['id']}/piece", data={"document": "PASSEPORT"}, follow_redirects=True
    )
    assert r.status_code == 200 and "Identité validée" in r.text
    r = httpx.post(f"{served.http}/identites/{nessi['id']}/insi", follow_redirects=True)
    assert "Réponse INSi : 00" in r.text
    assert _patient(served, "TCHITCHI")["status"]["code"] == "QUAL"


def test_config_prints_without_secrets(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opensegur.cli", "config", "--data-dir", str(tmp_path)],
        env={
            **os.environ,
            "OPENSEGUR_API_TOKEN": "tres-secret",
            "OPENSEGUR_DB": "postgresql://u:motdepasse@db/opensegur",
        },
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    cfg = json.loads(out)
    assert cfg["api_token"] == "***" and "tres-secret" not in out and "motdepasse" not in out
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
    ght = httpx.get(f"{served.http}/api/v1/structures").json()
    assert len(ght) == 1 and len(ght[0]["sites"]) == 2
    assert ght[0]["idnat_struct"] == "1" + ght[0]["finess_juridique"]
    site = next(s for s in ght[0]["sites"] if s["ipp_authority"]["namespace"] == "CHU-X")
    assert {"code": "6268", "name": "Chirurgie viscérale"} in site["units"]
    pros = httpx.get(f"{served.http}/api/v1/professionals").json()
    assert pros and all(p["idnat_ps"].startswith("8") and len(p["idnat_ps"]) == 12 for p in pros)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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
    dom = chromium(tmp_path, "--dump-dom", f"{served.http}/identites")
    assert 'lang="fr"' in dom and "Identitovigilance" in dom
    assert dom.count("<rect") == 4  # one bar per RNIV status in the distribution chart
    assert "Identité qualifiée" in dom and "Filtrer" in dom
    shot = tmp_path / "identites.png"
    chromium(tmp_path, "--window-size=1300,1000", f"--screenshot={shot}", f"{served.http}/identites")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
