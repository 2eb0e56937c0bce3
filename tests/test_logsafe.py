"""A failure is logged by its type and code path, never by its message (which may quote patient data)."""

from __future__ import annotations

import logging

import pytest

from opensegur.flows.worker import WorkerPool
from opensegur.logsafe import failure
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import Job

SECRET = "PAT-TROIS DOMINIQUE 279035121518989"


def _parse(value: str) -> None:
    raise ValueError(f"nom illisible : {value}")


def test_failure_names_the_type_and_the_frames_not_the_message() -> None:
    try:
        _parse(SECRET)
    except ValueError as exc:
        text = failure(exc)
    assert text.startswith("ValueError in test_logsafe.py:") and "_parse" in text
    assert "279035121518989" not in text and "DOMINIQUE" not in text


async def test_a_crashing_job_logs_no_patient_data_but_keeps_its_error(
    sqlite_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(job: object) -> None:
        _parse(SECRET)

    with sqlite_db.session() as s:
        job_id = jobs.enqueue(s, "test.crash", "k1", args={})
    pool = WorkerPool(sqlite_db, {"test.crash": crash}, concurrency=1)
    with caplog.at_level(logging.DEBUG):
        await pool.run_once()
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "crashed: ValueError in" in logged and "279035121518989" not in logged
    with sqlite_db.session() as s:
        assert "279035121518989" in (s.get_one(Job, job_id).last_error or "")  # kept where it is protected
