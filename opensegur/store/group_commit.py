"""Group commit: the small transactions of several threads committed as one, each still answered only once its
work is durable.

An HL7 sender waits for its ACK, and the ACK waits for the commit; with four DPI connections, three messages
queue behind the one being committed. Here the first to arrive leads: it runs every queued piece of work, each in
its own savepoint, commits once (one fsync, one transaction's bookkeeping), then answers them all. What arrives
meanwhile is led by its own first arrival as soon as the lock is free. A piece of work that fails is rolled back
to its savepoint alone; a commit that fails fails every piece of its batch, none of which was answered. Written
here because neither SQLAlchemy nor the drivers group commits across threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

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


class GroupCommit:
    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._mutex = threading.Lock()
        self._queue: list[_Work[Any]] = []
        self._leading = False

    def run(self, fn: Callable[[Session], R]) -> R:
        """Run ``fn`` in a savepoint of a shared transaction; return its result once that transaction committed,
        or raise what ``fn`` raised (its savepoint rolled back) or what the commit raised."""
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
            with self.db.session(urgent=True) as s:
                if len(batch) == 1:
                    # Alone in its transaction, the work needs no savepoint (a tenth of an identity message's
                    # CPU): what it raises rolls the whole transaction back, and its caller gets it all the same.
                    batch[0].result = batch[0].fn(s)
                else:
                    for work in batch:
                        try:
                            with s.begin_nested():
                                work.result = work.fn(s)
                        except Exception as exc:
                            work.result, work.error = None, exc
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
