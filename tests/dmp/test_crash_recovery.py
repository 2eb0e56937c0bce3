"""SIGKILL in the middle of a burst of 1,000 documents, restart: the DMP ends with each document exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.mdm_factory import document_id, mdm
from opensegur.transport.mllp import MllpFramingError, send_message
from tests.test_server import start, stop, system_token

TOTAL = 1000
INS = "279035121518989"


def _sender(port: int, numbers: list[int], run: str, acked: set[int], halt: threading.Event) -> None:
    """A DPI: sends one message at a time and records which were acknowledged AA."""

    async def go() -> None:
        for n in numbers:
            if halt.is_set():
                return
            try:
                ack = await send_message("127.0.0.1", port, mdm(n, run), timeout=60)
            except (OSError, TimeoutError, MllpFramingError):
                return
            if b"MSA|AA|" in ack:
                acked.add(n)

    asyncio.run(go())


def test_sigkill_mid_burst_then_restart_delivers_each_document_once(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = str(int(time.time()))[-6:]
    env = {"OPENSEGUR_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "crash-schematron-cache")}
    server = start(tmp_path, "--demo", env=env)
    acked: set[int] = set()
    halt = threading.Event()
    lanes = [list(range(k, TOTAL, 4)) for k in range(4)]
    threads = [
        threading.Thread(target=_sender, args=(server.mllp_port, lane, run, acked, halt)) for lane in lanes
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    while len(acked) < 250 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(acked) >= 250, "burst too slow"
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    halt.set()
    for t in threads:
        t.join(timeout=60)
    acked_before_kill = set(acked)
    assert 250 <= len(acked_before_kill) < TOTAL

    # Restart on the same data; the DPI sends again everything it did not see acknowledged.
    server = start(tmp_path, "--demo", env=env)
    reader = system_token(tmp_path, "secretaire_medicale", "supervision-documents")
    supervisor = system_token(tmp_path, "admin_technique", "supervision-travaux")
    try:
        pending = [n for n in range(TOTAL) if n not in acked_before_kill]
        lanes = [pending[k::4] for k in range(4)]
        halt = threading.Event()
        threads = [
            threading.Thread(target=_sender, args=(server.mllp_port, lane, run, acked, halt))
            for lane in lanes
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert acked == set(range(TOTAL))

        def sent() -> int:
            # No ZAM endpoint in the demo: a document delivered to the DMP stays "sent" (nobody to acknowledge to).
            page = httpx.get(
                f"{server.http}/api/v1/documents",
                params={"status": "sent", "limit": 1},
                headers=reader,
                timeout=120,
            ).json()
            return int(page["total"])

        deadline = time.monotonic() + 1200
        while sent() < TOTAL and time.monotonic() < deadline:
            time.sleep(5)
        assert sent() == TOTAL
        inspect_url = httpx.get(f"{server.http}/sandbox/endpoints").json()["dmp"]["inspect"]
        wanted = {document_id(n, run) for n in range(TOTAL)}
        entries = httpx.get(inspect_url, params={"patient": INS}, timeout=300).json()["entries"]
        found = [e["uniqueId"] for e in entries if e["uniqueId"] in wanted]
        assert len(set(found)) == TOTAL, f"{len(set(found))} distinct documents in the DMP"
        assert len(found) == TOTAL  # and none twice
        dead = httpx.get(f"{server.http}/api/v1/jobs", params={"status": "dead"}, headers=supervisor).json()
        assert dead == []
    finally:
        assert stop(server) == 0
