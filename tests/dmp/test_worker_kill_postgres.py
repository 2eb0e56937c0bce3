"""Scale-out on PostgreSQL: `serve` without workers and two `opensegur worker` processes drain a backlog; one of
them is killed (SIGKILL) while it holds jobs; the other takes over once their leases expire, and the DMP holds
each document exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bench.mdm_factory import document_id, mdm
from bench.sandbox import sandbox_settings
from opensegur.store.db import Database
from opensegur.store.models import Delivery, Job
from opensegur.transport.mllp import send_message
from tests.test_server import start, stop

TOTAL = 240
INS = "279035121518989"
LEASE_S = 4


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "opensegur.cli", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _send_all(port: int, run: str) -> None:
    async def lane(numbers: range) -> None:
        for n in numbers:
            ack = await send_message("127.0.0.1", port, mdm(n, run), timeout=60)
            assert b"MSA|AA|" in ack, ack

    async def go() -> None:
        await asyncio.gather(*(lane(range(k, TOTAL, 4)) for k in range(4)))

    asyncio.run(go())


def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_worker_killed_mid_backlog_on_postgresql_leaves_each_document_once_in_the_dmp(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> None:
    run = str(int(time.time() * 1000) % 10**9)
    cache = str(tmp_path_factory.getbasetemp() / "pg-kill-schematron-cache")
    server = start(
        tmp_path / "serve",
        "--demo",
        "--db",
        pg_url,
        env={"OPENSEGUR_WORKERS": "0", "OPENSEGUR_CACHE_DIR": cache},
    )
    db = Database(pg_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        endpoints = httpx.get(f"{server.http}/sandbox/endpoints").json()
        # The workers point at serve's sandbox, as the bench's do (bench/sandbox.py).
        env = {
            **os.environ,
            **{f"OPENSEGUR_{k.upper()}": str(v) for k, v in sandbox_settings(endpoints).items()},
            "OPENSEGUR_DB": pg_url,
            "OPENSEGUR_DATA_DIR": str(tmp_path / "workers"),
            "OPENSEGUR_CACHE_DIR": cache,
            "OPENSEGUR_JOB_LEASE_S": str(LEASE_S),
            "OPENSEGUR_JOB_BACKOFF_BASE_S": "0.2",
            "OPENSEGUR_JOB_BACKOFF_MAX_S": "0.5",
        }
        # The whole backlog is committed by `serve` (no workers there) before the workers start on it.
        _send_all(server.mllp_port, run)
        workers = [_worker(env, tmp_path / f"worker{i}.log") for i in range(2)]
        victim = workers[0]

        def delivered() -> int:
            with db.session() as s:
                stmt = select(func.count()).select_from(Delivery).where(Delivery.status == "delivered")
                return int(s.scalar(stmt) or 0)

        def victim_holds_jobs() -> bool:
            with db.session() as s:
                stmt = (
                    select(func.count())
                    .select_from(Job)
                    .where(Job.status == "running", Job.worker.like(f"%:{victim.pid}/%"))
                )
                return bool(s.scalar(stmt))

        _until(lambda: delivered() >= 20, 600, "the workers delivered nothing")
        _until(victim_holds_jobs, 60, "the first worker never held a job")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        assert delivered() < TOTAL, "the backlog ended before the kill: nothing was proven"

        _until(lambda: delivered() == TOTAL, 900, f"only {delivered()} of {TOTAL} delivered after the kill")
        with db.session() as s:
            taken_over = s.scalar(
                select(func.count()).select_from(Job).where(Job.status == "done", Job.attempts > 1)
            )
            dead = s.scalar(select(func.count()).select_from(Job).where(Job.status == "dead"))
        assert taken_over, "no job of the killed worker was run again"
        assert dead == 0
        wanted = {document_id(n, run) for n in range(TOTAL)}
        entries = httpx.get(endpoints["dmp"]["inspect"], params={"patient": INS}, timeout=300).json()[
            "entries"
        ]
        found = [e["uniqueId"] for e in entries if e["uniqueId"] in wanted]
        assert len(set(found)) == TOTAL
        assert len(found) == TOTAL  # and none twice
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(60)
        db.dispose()
        assert stop(server) == 0
