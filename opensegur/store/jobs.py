"""The durable job queue: enqueue in the caller's transaction, claim with a lease, retry with backoff, dead letters.

One code path for both engines: on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets N workers on M hosts claim
without blocking each other; SQLite ignores it and serialises writers, which is what one process needs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, bindparam, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from opensegur.store.db import JOBS_ENQUEUED, insert_unless_exists
from opensegur.store.models import Job, utcnow

_JOB = cast(Table, Job.__table__)


class Lane(IntEnum):
    """Which jobs a worker takes first. A person or a peer waits on a prompt job (a DPI on its ZAM, a sender on
    its MDN, a doctor on a DMP list); a bulk job moves documents and mail. After a DMP outage, a day of bulk
    deliveries is due at once: the ZAMs of the documents delivered meanwhile must not queue behind all of it."""

    PROMPT = 0
    BULK = 1


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_s: float = 2.0
    max_s: float = 600.0
    outage_max_s: float = 3 * 86400.0  # how long after it was queued a job waits an outage out

    def delay(self, attempts: int) -> float:
        """Exponential backoff with full jitter, so retries of one outage do not arrive together."""
        ceiling = min(self.max_s, self.base_s * (2 ** max(0, attempts - 1)))
        return random.uniform(ceiling / 2, ceiling)


def enqueue(
    session: Session,
    kind: str,
    key: str,
    args: dict[str, Any] | None = None,
    *,
    structure_id: int | None = None,
    patient_id: int | None = None,
    max_attempts: int = 8,
    run_after: datetime | None = None,
    lane: Lane = Lane.BULK,
) -> int:
    """Add a job unless one with the same idempotence key exists; return the job's id either way."""
    now = utcnow()
    values = {
        "kind": kind,
        "lane": int(lane),
        "key": key,
        "args": args or {},
        "structure_id": structure_id,
        "patient_id": patient_id,
        "max_attempts": max_attempts,
        "run_after": run_after or now,
        "status": "pending",
        "attempts": 0,
        "result": {},
        "created_at": now,
        "updated_at": now,
    }
    # On the connection: the session's execution would flush the caller's pending changes first, in statements of
    # their own, where its commit writes them at once.
    connection = session.connection()
    job_id = connection.execute(insert_unless_exists(session, _JOB, "key", returning="id"), values).scalar()
    session.info[JOBS_ENQUEUED] = True
    if job_id is None:
        job_id = connection.execute(select(_JOB.c.id).where(_JOB.c.key == key)).scalar_one()
    return int(job_id)


def _ready(condition: ColumnElement[bool]) -> Select[Any]:
    return (
        select(_JOB)
        .where(condition, _JOB.c.kind.in_(bindparam("kinds", expanding=True)))
        .order_by(_JOB.c.run_after, _JOB.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


# Each its own statement, built once, that an index answers (ix_job_lane_ready): a query that ORed them scanned
# the whole table, done jobs included, for every claim. Core rows, not entities: a claim is made for every job.
_READY = (
    _ready((_JOB.c.status == "running") & (_JOB.c.lease_until < bindparam("now"))),
    *(
        _ready(
            (_JOB.c.status == "pending") & (_JOB.c.lane == int(lane)) & (_JOB.c.run_after <= bindparam("now"))
        )
        for lane in Lane
    ),
)
_TAKE = update(_JOB).where(_JOB.c.id == bindparam("job_id"))


def claim(session: Session, worker: str, kinds: list[str], lease_s: float) -> Job | None:
    """Take a ready job: one whose worker died (its lease expired) first, then the oldest due prompt job, then
    the oldest due bulk job. The job returned is in ``session``, as if loaded, with its lease taken."""
    now = utcnow()
    # Core statements on the session's connection: the session's own execution would add a fifth to their cost.
    connection = session.connection()
    for stmt in _READY:
        row = connection.execute(stmt, {"now": now, "kinds": kinds}).mappings().first()
        if row is not None:
            break
    else:
        return None
    taken = {
        "status": "running",
        "worker": worker,
        "attempts": row["attempts"] + 1,
        "lease_until": now + timedelta(seconds=lease_s),
        "updated_at": now,
    }
    connection.execute(_TAKE, {"job_id": row["id"], **taken})
    job = Job(**{**row, **taken})
    make_transient_to_detached(job)
    session.add(job)
    return job


def renew(session: Session, job_id: int, worker: str, lease_s: float) -> bool:
    """Extend the lease of a job this worker is still running; False when it is no longer its own."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


# Made for every job: the table's statement, built once (the ORM-enabled update cost a tenth of a job's bookkeeping).
_COMPLETE = update(_JOB).where(_JOB.c.id == bindparam("job_id")).values(lease_until=None, last_error=None)


def complete(session: Session, job_id: int, result: dict[str, Any] | None = None) -> None:
    session.connection().execute(
        _COMPLETE, {"job_id": job_id, "status": "done", "result": result or {}, "updated_at": utcnow()}
    )


def fail(
    session: Session,
    job: Job,
    error: str,
    policy: RetryPolicy,
    *,
    retryable: bool = True,
    outage: bool = False,
) -> str:
    """Record a failure; schedule a retry or move the job to the dead letters. Returns the new status. An outage
    (:class:`~opensegur.errors.RetryLater`) is waited out whatever the attempts, for ``policy.outage_max_s``."""
    limit = min(job.max_attempts, policy.max_attempts)
    waiting_out = outage and utcnow() - aware(job.created_at) < timedelta(seconds=policy.outage_max_s)
    if retryable and (job.attempts < limit or waiting_out):
        status = "pending"
        run_after = utcnow() + timedelta(seconds=policy.delay(job.attempts))
    else:
        status = "dead"
        run_after = job.run_after
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(
            status=status, run_after=run_after, last_error=error[:2000], lease_until=None, updated_at=utcnow()
        )
    )
    return status


def retry_dead(session: Session, job_id: int) -> bool:
    """Put a dead-lettered job back in the queue with a fresh attempt budget (operator's retry)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "dead")
        .values(status="pending", attempts=0, run_after=utcnow(), updated_at=utcnow())
    )
    session.info[JOBS_ENQUEUED] = True
    return bool(res.rowcount)  # type: ignore[attr-defined]


def aware(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; every datetime we store is UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
