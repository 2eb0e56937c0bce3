"""Group commit: concurrent threads share one transaction, each answered after the commit with its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from opensegur.store.db import Database
from opensegur.store.group_commit import GroupCommit
from opensegur.store.models import Payload
from opensegur.store.payloads import store_payload


def _stored(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Payload)) or 0)


def _commits(db: Database) -> list[int]:
    seen: list[int] = []
    event.listen(db.engine, "commit", lambda _conn: seen.append(1))
    return seen


def _run_together(group: GroupCommit, works: list[Callable[[Session], Any]]) -> list[Any]:
    """The first work holds the transaction a moment, so that every other one queues behind it."""
    with ThreadPoolExecutor(len(works)) as pool:
        first = pool.submit(group.run, works[0])
        time.sleep(0.05)
        rest = [pool.submit(group.run, w) for w in works[1:]]
        out: list[Any] = []
        for f in [first, *rest]:
            try:
                out.append(f.result(timeout=30))
            except Exception as exc:
                out.append(exc)
        return out


def _store(data: bytes, hold_s: float = 0.0) -> Callable[[Session], str]:
    def work(s: Session) -> str:
        digest = store_payload(s, data)
        time.sleep(hold_s)
        return digest

    return work


def test_works_queued_behind_a_transaction_share_the_next_commit_and_each_gets_its_result(
    db: Database,
) -> None:
    group, commits = GroupCommit(db), _commits(db)
    works = [_store(b"first", hold_s=0.5)] + [_store(f"m{i}".encode()) for i in range(7)]
    results = _run_together(group, works)
    assert len(commits) == 2  # the first alone, then the seven that queued behind it
    assert all(isinstance(r, str) and len(r) == 64 for r in results)
    assert len(set(results)) == 8
    assert _stored(db) == 8


def test_a_failing_work_is_rolled_back_alone_and_raises_to_its_own_caller(db: Database) -> None:
    group = GroupCommit(db)

    def refused(s: Session) -> str:
        store_payload(s, b"refused")
        raise ValueError("refusé")

    results = _run_together(group, [_store(b"first", hold_s=0.5), _store(b"a"), refused, _store(b"b")])
    assert isinstance(results[2], ValueError) and str(results[2]) == "refusé"
    assert [len(r) for r in (results[0], results[1], results[3])] == [64, 64, 64]
    assert _stored(db) == 3


def test_a_work_alone_in_its_transaction_raises_to_its_caller_and_leaves_nothing(db: Database) -> None:
    """Alone, a work runs without a savepoint: what it wrote goes with the transaction it failed."""
    group = GroupCommit(db)

    def refused(s: Session) -> str:
        store_payload(s, b"refused")
        raise ValueError("refusé")

    with pytest.raises(ValueError, match="refusé"):
        group.run(refused)
    assert _stored(db) == 0
    assert group.run(_store(b"after")) and _stored(db) == 1  # the next one leads


def test_a_failed_commit_fails_every_work_of_its_batch_and_nothing_is_kept(db: Database) -> None:
    group = GroupCommit(db)
    failing = threading.Event()

    @event.listens_for(db.sessions, "before_commit")
    def _disk_full(_session: Session) -> None:
        if failing.is_set():
            raise OSError("disque plein")

    failing.set()
    results = _run_together(group, [_store(b"first", hold_s=0.3), _store(b"a"), _store(b"b")])
    assert all(isinstance(r, OSError) for r in results)
    failing.clear()
    assert _stored(db) == 0
    assert group.run(_store(b"after")) and _stored(db) == 1  # the next batch has a leader


def test_a_batch_takes_savepoints_only_to_run_again_around_a_failing_work(db: Database) -> None:
    group = GroupCommit(db)
    savepoints: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def _count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("SAVEPOINT"):
            savepoints.append(statement)

    _run_together(group, [_store(b"first", hold_s=0.5), _store(b"a"), _store(b"b"), _store(b"c")])
    assert savepoints == []  # the three queued works commit together, with no savepoint

    def refused(s: Session) -> str:
        store_payload(s, b"refused")
        raise ValueError("refusé")

    results = _run_together(group, [_store(b"second", hold_s=0.5), _store(b"d"), refused, _store(b"e")])
    assert len(savepoints) == 3  # the batch of three failed once, then ran again with a savepoint each
    assert isinstance(results[2], ValueError)
    assert _stored(db) == 7


@pytest.mark.parametrize("threads", [2, 16])
def test_many_threads_each_get_their_own_answer_and_none_waits_forever(db: Database, threads: int) -> None:
    group = GroupCommit(db, max_batch=3)
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(group.run, _store(f"t{i}".encode())) for i in range(threads * 5)]
        digests = [f.result(timeout=60) for f in futures]
    assert len(set(digests)) == threads * 5 == _stored(db)
