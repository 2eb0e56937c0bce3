"""The durable job queue on both engines: idempotence, leases, backoff, dead letters, concurrent claims."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import event, select

from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import Job, utcnow


def test_enqueue_is_idempotent_on_key(db: Database) -> None:
    with db.session() as s:
        a = jobs.enqueue(s, "k", "same-key", {"n": 1})
        b = jobs.enqueue(s, "k", "same-key", {"n": 2})
        assert a == b
    with db.session() as s:
        rows = s.scalars(select(Job)).all()
        assert len(rows) == 1 and rows[0].args == {"n": 1}


def test_claim_takes_a_lease_and_expired_lease_is_taken_again(db: Database) -> None:
    with db.session() as s:
        jobs.enqueue(s, "k", "j1")
    with db.session() as s:
        job = jobs.claim(s, "w1", ["k"], lease_s=60)
        assert job is not None and job.status == "running" and job.attempts == 1
    with db.session() as s:
        assert jobs.claim(s, "w2", ["k"], lease_s=60) is None
        s.get_one(Job, job.id).lease_until = utcnow() - timedelta(seconds=1)
    with db.session() as s:
        again = jobs.claim(s, "w2", ["k"], lease_s=60)
        assert again is not None and again.id == job.id and again.attempts == 2 and again.worker == "w2"


def test_failure_backs_off_then_dead_letters_then_operator_retry(db: Database) -> None:
    policy = jobs.RetryPolicy(max_attempts=2, base_s=10, max_s=10)
    with db.session() as s:
        jobs.enqueue(s, "k", "j1")
    with db.session() as s:
        job = jobs.claim(s, "w", ["k"], 60)
        assert job is not None
        assert jobs.fail(s, job, "boom", policy) == "pending"
    with db.session() as s:
        row = s.get_one(Job, job.id)
        assert jobs.aware(row.run_after) >= utcnow() + timedelta(seconds=4)
        assert jobs.claim(s, "w", ["k"], 60) is None  # not due yet
        row.run_after = utcnow() - timedelta(seconds=1)
    with db.session() as s:
        job = jobs.claim(s, "w", ["k"], 60)
        assert job is not None and job.attempts == 2
        assert jobs.fail(s, job, "boom again", policy) == "dead"
    with db.session() as s:
        assert s.get_one(Job, job.id).last_error == "boom again"
        assert jobs.retry_dead(s, job.id)
        assert not jobs.retry_dead(s, job.id)
    with db.session() as s:
        assert jobs.claim(s, "w", ["k"], 60) is not None


def test_permanent_failure_goes_dead_at_once(db: Database) -> None:
    with db.session() as s:
        jobs.enqueue(s, "k", "j1")
    with db.session() as s:
        job = jobs.claim(s, "w", ["k"], 60)
        assert job is not None
        assert jobs.fail(s, job, "invalid", jobs.RetryPolicy(), retryable=False) == "dead"


def test_backoff_grows_and_is_capped() -> None:
    policy = jobs.RetryPolicy(base_s=1, max_s=30)
    assert all(0.5 <= policy.delay(1) <= 1 for _ in range(20))
    assert all(4 <= policy.delay(4) <= 8 for _ in range(20))
    assert all(15 <= policy.delay(12) <= 30 for _ in range(20))


def test_concurrent_workers_never_claim_the_same_job(db: Database) -> None:
    with db.session() as s:
        for i in range(40):
            jobs.enqueue(s, "k", f"j{i}")
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with db.session() as s:
                job = jobs.claim(s, name, ["k"], 60)
                if job is None:
                    return
                jobs.complete(s, job.id)
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40


def test_a_prompt_job_is_claimed_before_a_due_backlog_and_a_dead_workers_job_before_both(
    db: Database,
) -> None:
    """After a DMP outage every delivery is due at once; the ZAM of a document delivered meanwhile goes first."""
    past = utcnow() - timedelta(hours=1)
    with db.session() as s:
        for i in range(300):
            jobs.enqueue(s, "dmp.deliver", f"d{i}", run_after=past)
        jobs.enqueue(s, "zam.send", "z1", lane=jobs.Lane.PROMPT)
        jobs.enqueue(s, "zam.send", "z-later", lane=jobs.Lane.PROMPT, run_after=utcnow() + timedelta(hours=1))
    kinds = ["dmp.deliver", "zam.send"]
    with db.session() as s:
        first = jobs.claim(s, "w1", kinds, lease_s=60)
        assert first is not None and first.key == "z1"
    with db.session() as s:
        second = jobs.claim(s, "w1", kinds, lease_s=60)
        assert second is not None and second.key == "d0"  # then the oldest due delivery; a ZAM not due waits
        s.get_one(Job, second.id).lease_until = utcnow() - timedelta(seconds=1)
        jobs.enqueue(s, "zam.send", "z2", lane=jobs.Lane.PROMPT)
    with db.session() as s:
        again = jobs.claim(s, "w2", kinds, lease_s=60)
        assert again is not None and again.key == "d0" and again.attempts == 2
        third = jobs.claim(s, "w2", kinds, lease_s=60)
        assert third is not None and third.key == "z2"
    with db.session() as s:
        assert s.scalar(select(Job.lane).where(Job.key == "d1")) == jobs.Lane.BULK


def test_a_claim_reads_an_index_not_the_whole_table(sqlite_db: Database) -> None:
    """Done jobs pile up for years: a claim that scanned them would slow every job down with the table's age."""
    statements: list[tuple[str, object]] = []

    def keep(conn: object, cursor: object, statement: str, parameters: object, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM job" in statement:
            statements.append((statement, parameters))

    with sqlite_db.session() as s:
        jobs.enqueue(s, "dmp.deliver", "d")
    event.listen(sqlite_db.engine, "before_cursor_execute", keep)
    with sqlite_db.session() as s:
        assert jobs.claim(s, "w", ["zam.send"], lease_s=60) is None  # every lane read, none ready
    event.remove(sqlite_db.engine, "before_cursor_execute", keep)
    assert len(statements) == 3
    with sqlite_db.engine.connect() as conn:
        for statement, parameters in statements:
            plan = " ".join(
                row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            )
            assert "ix_job_lane_ready" in plan and "SCAN job" not in plan, plan


def test_an_outage_is_waited_out_whatever_the_attempts_then_a_person_is_needed(db: Database) -> None:
    """A DMP down for a day leaves its documents waiting, not dead letters to retry one by one."""
    policy = jobs.RetryPolicy(max_attempts=2, base_s=0, max_s=0, outage_max_s=3600)
    with db.session() as s:
        jobs.enqueue(s, "dmp.deliver", "d")
    for _ in range(5):
        with db.session() as s:
            job = jobs.claim(s, "w", ["dmp.deliver"], lease_s=60)
            assert job is not None
            assert jobs.fail(s, job, "HTTP 503", policy, outage=True) == "pending"
    assert job.attempts == 5
    with db.session() as s:  # the next failure that is not an outage finds the attempts spent
        job = jobs.claim(s, "w", ["dmp.deliver"], lease_s=60)
        assert job is not None and jobs.fail(s, job, "réponse illisible", policy) == "dead"
        assert jobs.retry_dead(s, job.id)
    with db.session() as s:  # an outage longer than outage_max_s after the job was queued needs a person
        s.get_one(Job, job.id).created_at = utcnow() - timedelta(hours=2)
    with db.session() as s:
        job = jobs.claim(s, "w", ["dmp.deliver"], lease_s=60)
        assert job is not None and jobs.fail(s, job, "HTTP 503", policy, outage=True) == "pending"
    with db.session() as s:
        job = jobs.claim(s, "w", ["dmp.deliver"], lease_s=60)
        assert job is not None and jobs.fail(s, job, "HTTP 503", policy, outage=True) == "dead"
