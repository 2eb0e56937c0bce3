"""Group commit: the small transactions of several threads committed as one, each still answered only once its
work is durable.

An HL7 sender waits for its ACK, and the ACK waits for the commit; with four DPI connections, three messages
queue behind the one being committed. Here the first to arrive leads: it runs every queued piece of work in one
transaction, commits once (one fsync, one transaction's bookkeeping), then answers them all. What arrives
meanwhile is led by its own first arrival as soon as the lock is free. A piece of work that fails takes the
transaction back with it; the batch then runs again, each piece in its own savepoint, so that the failure stays
its own: savepoints only when one is needed, as SQLAlchemy compiles each SAVEPOINT and RELEASE anew (a tenth of an
identity message's CPU when every batch paid for them). A commit that fails fails every piece of its batch, none
of which was answered. Written here because neither SQLAlchemy nor the drivers group commits across threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from opensegur.errors import OpenSegurError
from opensegur.store.db import Database

R = TypeVar("R")

MAX_BATCH = 64  # bounds one transaction's length, hence the wait of the first of the batch


@dataclass(eq=False)
class _Work(Generic[R]):
    fn: Callable[[Session], R]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to lead the next batch, not because its work is done
    result: Any = None
    error: BaseException | None = None


class _WorkFailed(OpenSegurError):
    """A work of a batch failed: the batch runs again with a savepoint each."""


class GroupCommit:
    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._mutex = threading.Lock()
        self._queue: list[_Work[Any]] = []
        self._leading = False

    def run(self, fn: Callable[[Session], R]) -> R:
        """Run ``fn`` in a shared transaction; return its result once that transaction committed, or raise what
        ``fn`` raised (what it wrote rolled back) or what the commit raised. ``fn`` runs twice when a work of its
        batch fails: it must act through the session alone."""
        work: _Work[R] = _Work(fn)
        with self._mutex:
            self._queue.append(work)
            lead = not self._leading
            self._leading = True
        while True:
            if lead:
                self._lead()
            work.done.wait()
            if not work.lead:
                break
            work.done.clear()
            work.lead, lead = False, True
        if work.error is not None:
            raise work.error
        return work.result

    def _lead(self) -> None:
        with self._mutex:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        failure: BaseException | None = None
        try:
            try:
                self._together(batch)
            except _WorkFailed:
                self._each_in_savepoint(batch)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            # Whatever happened, every waiter is answered and the next batch gets a leader: none is left hanging.
            if failure is not None:
                for work in batch:
                    work.result, work.error = None, failure
            with self._mutex:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._leading = False
            for work in batch:
                work.done.set()

    def _together(self, batch: list[_Work[Any]]) -> None:
        """The batch in one transaction, no savepoint. A work alone raises what it raised (its caller gets it);
        in a batch, its failure is :class:`_WorkFailed`, once the transaction went back."""
        with self.db.session(urgent=True) as s:
            for work in batch:
                try:
                    work.result = work.fn(s)
                except Exception as exc:
                    if len(batch) == 1:
                        raise
                    raise _WorkFailed from exc

    def _each_in_savepoint(self, batch: list[_Work[Any]]) -> None:
        """The batch again, in a new transaction: a work that fails is rolled back to its savepoint alone and
        raises to its own caller; the others commit. The works read the database afresh: the failed pass left
        nothing behind."""
        with self.db.session(urgent=True) as s:
            for work in batch:
                try:
                    with s.begin_nested():
                        work.result, work.error = work.fn(s), None
                except Exception as exc:
                    work.result, work.error = None, exc
