"""In-process workers that drain the job table; the same code runs as N workers on M hosts over PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from opensegur.errors import OpenSegurError, RetryLater
from opensegur.logsafe import failure
from opensegur.store import job_signal, jobs
from opensegur.store.db import Database
from opensegur.store.models import Job

log = logging.getLogger(__name__)


class PermanentError(OpenSegurError):
    """A failure that no retry will fix: the job goes straight to the dead letters."""


Handler = Callable[[Job], Awaitable[dict[str, Any] | None]]
# What a kind does, in the transaction that moves its job to the dead letters, for the records the job was bringing
# forward: they must no longer say that a new try is planned.
GivenUp = Callable[[Session, Job], None]


class WorkerPool:
    def __init__(
        self,
        db: Database,
        handlers: dict[str, Handler],
        *,
        concurrency: int = 2,
        policy: jobs.RetryPolicy | None = None,
        lease_s: float = 60.0,
        idle_sleep_s: float = 0.2,
        notified_poll_s: float = 5.0,
        given_up: Mapping[str, GivenUp] | None = None,
    ) -> None:
        self.db = db
        self.handlers = handlers
        self.given_up = dict(given_up or {})
        self.concurrency = concurrency
        self.policy = policy or jobs.RetryPolicy()
        self.lease_s = lease_s
        self.idle_sleep_s = idle_sleep_s
        # While PostgreSQL notifies every commit of a job, polling only finds the retries that came due.
        self.notified_poll_s = notified_poll_s
        self._notified = False
        self._listener: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unlisten: Callable[[], None] | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def wake(self) -> None:
        """A job was committed: start it without waiting for the next poll. Called from the committing thread
        (the MLLP intake and the routes commit in worker threads), where an ``asyncio.Event`` must not be set."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._stopping.clear()
        self._loop = asyncio.get_running_loop()
        self._unlisten = self.db.on_jobs_committed(self.wake)
        if not self.db.is_sqlite:
            self._listener = asyncio.create_task(
                job_signal.listen(self.db.url, self.wake, self._set_notified)
            )
        for i in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._run(f"{self.name}/{i}")))

    async def stop(self) -> None:
        """Let running jobs finish: a job interrupted here would only be re-run after its lease expires."""
        self._stopping.set()
        self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
            self._notified = False

    def _set_notified(self, listening: bool) -> None:
        self._notified = listening

    @property
    def notified(self) -> bool:
        """Whether jobs committed by other processes wake this pool now (PostgreSQL, listening)."""
        return self._notified

    async def run_once(self, worker: str = "inline") -> bool:
        """Claim and run one job; False when nothing was ready. Used by tests and by ``drain``."""
        job = await asyncio.to_thread(self._claim, worker, None)
        if job is None:
            return False
        done = await self._execute(job)
        if done is not None:
            await asyncio.to_thread(self._complete, *done)
        return True

    async def drain(self, max_jobs: int = 10_000) -> int:
        """Run ready jobs until none is left (tests, CLI)."""
        done = 0
        while done < max_jobs and await self.run_once():
            done += 1
        return done

    async def _run(self, worker: str) -> None:
        # A finished job is marked done in the same transaction that claims the next one: one commit less per job.
        # A crash in between only lets its lease expire and the job run again, as a crash before any completion.
        finished: tuple[int, dict[str, Any] | None] | None = None
        while not self._stopping.is_set():
            try:
                job = await asyncio.to_thread(self._claim, worker, finished)
                finished = None
            except Exception as exc:  # the loop must survive a database hiccup
                log.error("worker %s: claim failed: %s", worker, failure(exc))
                job = None
            if job is not None:
                finished = await self._execute(job)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), self.notified_poll_s if self._notified else self.idle_sleep_s
                )
        if finished is not None:
            await asyncio.to_thread(self._complete, *finished)

    def _claim(self, worker: str, finished: tuple[int, dict[str, Any] | None] | None) -> Job | None:
        with self.db.session() as s:
            if finished is not None:
                jobs.complete(s, *finished)
            job = jobs.claim(s, worker, list(self.handlers), self.lease_s)
            if job is not None:
                s.expunge(job)
            return job

    async def _execute(self, job: Job) -> tuple[int, dict[str, Any] | None] | None:
        """Run the handler; a failure is recorded at once, a success is returned for the caller to record."""
        handler = self.handlers[job.kind]
        # A job longer than its lease (a slow DMP, a heavy document) must not be claimed by another worker while
        # it runs: the lease is renewed until the handler returns. Only a dead worker's lease expires.
        keeper = asyncio.create_task(self._keep_lease(job))
        try:
            result = await handler(job)
        except PermanentError as exc:
            await asyncio.to_thread(self._fail, job, str(exc), retryable=False)
        except RetryLater as exc:
            await asyncio.to_thread(self._fail, job, str(exc), retryable=True, outage=exc.outage)
        except Exception as exc:  # an unexpected bug: keep the job visible and retryable
            log.error("job %s (%s) crashed: %s", job.id, job.kind, failure(exc))
            await asyncio.to_thread(self._fail, job, f"{type(exc).__name__}: {exc}", retryable=True)
        else:
            return job.id, result
        finally:
            keeper.cancel()
        return None

    async def _keep_lease(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await asyncio.to_thread(self._renew, job.id, job.worker or "")
            except Exception as exc:  # a database hiccup: the next renewal may succeed before the lease ends
                log.warning("job %s: lease renewal failed: %s", job.id, failure(exc))

    def _renew(self, job_id: int, worker: str) -> None:
        with self.db.session() as s:
            jobs.renew(s, job_id, worker, self.lease_s)

    def _complete(self, job_id: int, result: dict[str, Any] | None) -> None:
        with self.db.session() as s:
            jobs.complete(s, job_id, result)

    def _fail(self, job: Job, error: str, *, retryable: bool, outage: bool = False) -> None:
        with self.db.session() as s:
            status = jobs.fail(s, job, error, self.policy, retryable=retryable, outage=outage)
            hook = self.given_up.get(job.kind)
            if status == "dead" and hook is not None:
                hook(s, job)
        log.warning("job %s (%s) failed, now %s", job.id, job.kind, status)
