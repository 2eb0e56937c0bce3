"""Schematrons in validation processes: same findings as in a thread, and a dead process does not lose a document."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from opensegur.content.validation import CdaValidator
from tests.content.conftest import CR_RADIO_V1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> CdaValidator:
    v = CdaValidator(tmp_path_factory.mktemp("pool-cache"), processes=1)
    v.warm_up()
    yield v
    v.close()


def _key(findings: list) -> list[tuple[str, str, str]]:
    return sorted((f.severity, f.code, f.message) for f in findings)


def test_pool_reports_what_the_thread_reports(pooled: CdaValidator, validator: CdaValidator) -> None:
    cda = CR_RADIO_V1.read_bytes()
    in_pool = pooled.validate(cda)
    in_thread = validator.validate(cda)
    # The ANS example misses setId and uses a family qualifier outside BR/CL: both runs must say so, identically.
    assert [f for f in in_pool if f.source == "schematron"]
    assert _key(in_pool) == _key(in_thread)
    strict = pooled.validate(cda, strict=True)
    assert any(f.severity == "blocking" and f.source == "schematron" for f in strict)


def test_a_killed_validation_process_is_replaced(pooled: CdaValidator) -> None:
    cda = CR_RADIO_V1.read_bytes()
    before = _key(pooled.validate(cda))
    pool = pooled._pool
    assert pool is not None and pool._executor is not None
    pids = list(pool._executor._processes)  # the processes of the running pool
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    # The next document still gets its full validation, from a fresh process.
    assert _key(pooled.validate(cda)) == before
    assert pool._executor is not None and set(pool._executor._processes).isdisjoint(pids)


def test_close_stops_the_processes(tmp_path: Path) -> None:
    v = CdaValidator(tmp_path, processes=1)
    v.warm_up()
    assert v._pool is not None and v._pool._executor is not None
    procs = list(v._pool._executor._processes.values())
    v.close()
    assert all(not p.is_alive() for p in procs)


@pytest.mark.requirement("CDA-VALIDATION-BOUNDS")
def test_a_document_over_the_time_limit_is_blocked_and_the_process_replaced(tmp_path: Path) -> None:
    v = CdaValidator(tmp_path, processes=1, time_limit_s=0.001)
    v.warm_up()
    try:
        pool = v._pool
        assert pool is not None and pool._executor is not None
        busy = list(pool._executor._processes.values())
        findings = v.validate(CR_RADIO_V1.read_bytes())
        assert [(f.severity, f.code) for f in findings if f.source == "schematron"] == [
            ("blocking", "VALIDATION_TIMEOUT")
        ]
        assert "Validation interrompue" in findings[-1].message
        # The property is that the busy process dies. Asked of the kernel, not of Process.is_alive(): the
        # executor's own thread may reap the child first, and is_alive() of this thread's handle then stays True
        # (waitpid fails with ECHILD, which multiprocessing reads as "still running") — three red CI runs.
        assert all(_dies(p.pid) for p in busy if p.pid is not None)
        # The next document gets its full validation from a fresh process.
        pool.time_limit_s = 120
        again = v.validate(CR_RADIO_V1.read_bytes())
        assert not any(f.code == "VALIDATION_TIMEOUT" for f in again)
        assert any(f.source == "schematron" for f in again)
    finally:
        v.close()


def _dies(pid: int, within_s: float = 60.0) -> bool:
    """The process is gone or a zombie (dead, not yet reaped) within ``within_s``: /proc says so."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False
