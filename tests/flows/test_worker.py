"""The worker loop: each finished job is marked done (with the next claim, or on its own when none follows),
failures are recorded at once, and a stop leaves no finished job behind."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from sqlalchemy import select, update

from opensegur.errors import RetryLater
from opensegur.flows.dmp_exchanges import DmpUnavailableError
from opensegur.flows.worker import PermanentError, WorkerPool
from opensegur.store import job_signal, jobs
from opensegur.store.db import Database
from opensegur.store.job_signal import CHANNEL
from opensegur.store.models import Job


def _enqueue(db: Database, *keys: str) -> None:
    with db.session() as s:
        for key in keys:
            jobs.enqueue(s, "work", key, {"key": key})


def _jobs(db: Database) -> dict[str, Job]:
    with db.session() as s:
        rows = s.scalars(select(Job)).all()
        for row in rows:
            s.expunge(row)
    return {row.key: row for row in rows}


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_loop_marks_every_job_done_with_its_result(db: Database) -> None:
    ran: list[str] = []

    async def handler(job: Job) -> dict[str, Any]:
        ran.append(job.args["key"])
        return {"seen": job.args["key"]}

    _enqueue(db, "a", "b", "c")
    pool = WorkerPool(db, {"work": handler}, concurrency=1, idle_sleep_s=0.05)
    await pool.start()
    try:
        # The last job has no next claim to ride on: it is completed by the idle claim that finds nothing.
        await _until(lambda: all(j.status == "done" for j in _jobs(db).values()))
    finally:
        await pool.stop()
    assert sorted(ran) == ["a", "b", "c"]
    assert {k: j.result for k, j in _jobs(db).items()} == {k: {"seen": k} for k in "abc"}


async def test_failures_are_recorded_at_once(db: Database) -> None:
    async def handler(job: Job) -> dict[str, Any]:
        if job.args["key"] == "retry":
            raise RetryLater("service down")
        raise PermanentError("refused")

    _enqueue(db, "retry", "dead")
    pool = WorkerPool(
        db, {"work": handler}, concurrency=1, policy=jobs.RetryPolicy(base_s=60), idle_sleep_s=0.05
    )
    await pool.start()
    try:
        await _until(lambda: {j.status for j in _jobs(db).values()} == {"pending", "dead"})
    finally:
        await pool.stop()
    rows = _jobs(db)
    assert rows["retry"].attempts == 1 and rows["retry"].last_error == "service down"
    assert rows["dead"].last_error == "refused"


async def test_a_kind_hears_of_its_job_given_up_in_the_same_transaction_and_only_then(db: Database) -> None:
    """The hook runs when the job moves to the dead letters (attempts spent, or refused for good), not on a failure
    that will be tried again (an outage waited out); what it writes commits with the dead status."""
    given_up: list[tuple[str, str]] = []

    async def handler(job: Job) -> dict[str, Any]:
        if job.args["key"] == "refused":
            raise PermanentError("refused")
        raise RetryLater("peer busy", outage=job.args["key"] == "kept")

    def hook(s: Any, job: Job) -> None:
        status = s.scalar(select(Job.status).where(Job.id == job.id))
        given_up.append((job.args["key"], status))
        jobs.enqueue(s, "note", f"note:{job.args['key']}", {})

    _enqueue(db, "refused", "twice", "kept")
    with db.session() as s:
        s.execute(update(Job).where(Job.key == "twice").values(max_attempts=2))
    pool = WorkerPool(
        db,
        {"work": handler},
        concurrency=1,
        policy=jobs.RetryPolicy(base_s=0.01, max_s=0.01),
        idle_sleep_s=0.02,
        given_up={"work": hook},
    )
    await pool.start()
    try:
        await _until(lambda: _jobs(db)["twice"].status == "dead" and _jobs(db)["kept"].attempts >= 2)
    finally:
        await pool.stop()
    assert sorted(given_up) == [("refused", "dead"), ("twice", "dead")]
    rows = _jobs(db)
    assert (rows["twice"].attempts, rows["twice"].last_error) == (2, "peer busy")
    assert {"note:refused", "note:twice"} <= set(rows) and "note:kept" not in rows


async def test_a_peer_unavailable_is_retried_as_such_not_as_a_crash(db: Database) -> None:
    """A port's own "unavailable" (here the DMP's) is a RetryLater: kept pending with its reason, not logged as a
    bug (whose recorded error starts with the exception's type)."""

    async def handler(job: Job) -> dict[str, Any]:
        raise DmpUnavailableError("DMP injoignable")

    _enqueue(db, "dmp")
    pool = WorkerPool(
        db, {"work": handler}, concurrency=1, policy=jobs.RetryPolicy(base_s=60), idle_sleep_s=0.05
    )
    await pool.start()
    try:
        await _until(lambda: _jobs(db)["dmp"].attempts == 1)
    finally:
        await pool.stop()
    row = _jobs(db)["dmp"]
    assert (row.status, row.last_error) == ("pending", "DMP injoignable")


async def test_stop_completes_the_job_that_just_finished(db: Database) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(job: Job) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"ok": True}

    _enqueue(db, "only")
    pool = WorkerPool(db, {"work": handler}, concurrency=1, idle_sleep_s=0.05)
    await pool.start()
    await started.wait()
    stopping = asyncio.create_task(pool.stop())
    await asyncio.sleep(0.05)
    release.set()
    await stopping
    assert _jobs(db)["only"].status == "done"


async def test_a_job_longer_than_its_lease_runs_once_while_other_workers_poll(db: Database) -> None:
    """The review's case: a job outliving the lease was claimed again by a second worker and run twice."""
    runs: list[str] = []

    async def slow(job: Job) -> dict[str, Any]:
        runs.append(job.args["key"])
        await asyncio.sleep(4.5)  # three leases
        return {}

    _enqueue(db, "long")
    pools = [WorkerPool(db, {"work": slow}, concurrency=2, idle_sleep_s=0.02, lease_s=1.5) for _ in range(2)]
    for pool in pools:
        await pool.start()
    try:
        await _until(lambda: _jobs(db)["long"].status == "done")
    finally:
        for pool in pools:
            await pool.stop()
    assert runs == ["long"] and _jobs(db)["long"].attempts == 1


async def test_a_dead_workers_lease_still_expires(db: Database) -> None:
    _enqueue(db, "orphan")
    with db.session() as s:
        claimed = jobs.claim(s, "gone-worker", ["work"], 0.2)
        assert claimed is not None
    await asyncio.sleep(0.3)
    with db.session() as s:
        again = jobs.claim(s, "alive", ["work"], 60)
        assert again is not None and again.key == "orphan" and again.attempts == 2
        assert not jobs.renew(s, again.id, "gone-worker", 60)  # the dead worker's lease is no longer its own


async def test_a_job_committed_in_another_thread_wakes_the_idle_pool_and_a_commit_without_one_does_not(
    db: Database,
) -> None:
    ran = asyncio.Event()
    claims = 0

    async def handler(job: Job) -> dict[str, Any]:
        ran.set()
        return {}

    pool = WorkerPool(db, {"work": handler}, concurrency=1, idle_sleep_s=30.0)
    claim = pool._claim

    def counted(*args: Any) -> Job | None:
        nonlocal claims
        claims += 1
        return claim(*args)

    def commit_queuing_nothing() -> None:
        with db.session() as s:
            s.execute(select(Job.id))

    pool._claim = counted  # type: ignore[method-assign]
    await pool.start()
    try:
        await _until(lambda: claims == 1)  # nothing to do: the pool sleeps up to 30 s
        # The MLLP intake and the routes commit in threads; an identity message queues no job.
        await asyncio.to_thread(commit_queuing_nothing)
        await asyncio.sleep(0.3)
        assert claims == 1
        await asyncio.to_thread(_enqueue, db, "a")
        await asyncio.wait_for(ran.wait(), 5.0)
    finally:
        await pool.stop()


async def test_on_postgresql_a_job_committed_by_another_process_wakes_the_idle_pool_even_after_a_lost_link(
    pg_url: str,
) -> None:
    # One SQLite file has one process: LISTEN/NOTIFY is PostgreSQL's.
    db = Database(pg_url)
    db.migrate()
    ran: list[str] = []

    async def handler(job: Job) -> dict[str, Any]:
        ran.append(job.args["key"])
        return {}

    # The other process (`serve`, another host's worker): its own engine, so only PostgreSQL can tell the pool.
    other = Database(db.url)
    pool = WorkerPool(db, {"work": handler}, concurrency=1, idle_sleep_s=60.0, notified_poll_s=60.0)
    await pool.start()
    try:
        await _until(lambda: pool.notified)
        await asyncio.to_thread(_enqueue, other, "a")
        await _until(lambda: ran == ["a"], timeout=5.0)  # not the 60 s poll

        with psycopg.connect(job_signal.conninfo(db.url), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                (f"LISTEN {CHANNEL}",),
            )
        await _until(lambda: not pool.notified, timeout=5.0)
        await _until(lambda: pool.notified, timeout=10.0)  # listening again
        await asyncio.to_thread(_enqueue, other, "b")
        await _until(lambda: ran == ["a", "b"], timeout=5.0)
    finally:
        await pool.stop()
        other.dispose()
        db.dispose()
    assert not pool.notified
