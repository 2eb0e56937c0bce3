"""Engine, sessions and schema migrations for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from opensegur.store import job_signal

MIGRATIONS = Path(__file__).with_name("migrations")
READ_ONLY = "opensegur_read_only"
# Set in a session's ``info`` by the job queue when its transaction adds a job (``store.jobs.enqueue``).
JOBS_ENQUEUED = "opensegur_jobs_enqueued"


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the pages read while the MLLP listener writes; synchronous=FULL because an ACK
            # promises the message survives a power cut, not only a process crash.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # Let SQLAlchemy's BEGIN take the write lock at once so two writers never deadlock on upgrade.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A read transaction (Database.read) takes no write lock: WAL readers never wait for the writer.
            read = conn.get_execution_options().get(READ_ONLY, False)
            # On the driver's connection: through SQLAlchemy's execution (events, result) it cost a third of an
            # empty transaction.
            conn.connection.dbapi_connection.execute("BEGIN" if read else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, **kwargs)


def insert_unless_exists(session: Session, table: Table, key: str, returning: str | None = None) -> Insert:
    """``INSERT … ON CONFLICT (key) DO NOTHING`` for the session's engine, values given at execution: one
    statement where a read, a savepoint and an insert took three, and no race between two writers of the same key
    (PostgreSQL). Built once per dialect and table, not for each row (3 % of an identity message's CPU).
    ``returning``: the name of a column to read back (no row when it was already there)."""
    return _insert_unless_exists(session.get_bind().dialect.name, table, key, returning)


@functools.cache
def _insert_unless_exists(dialect: str, table: Table, key: str, returning: str | None) -> Insert:
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    stmt = stmt.on_conflict_do_nothing(index_elements=[key])
    return stmt.returning(table.c[returning]) if returning is not None else stmt


class FairLock:
    """A first-come, first-served lock. ``threading.Lock`` lets a busy thread take it again and again while another
    waits; under a burst a page's query could wait minutes behind the workers. Here each waiter gets its turn, and
    an urgent one (a sender waiting for its ACK) goes before every waiter that is not, in its own arrival order:
    behind a DMP backlog the ACK waits for the transaction in progress only, not for the workers' queue. After
    ``URGENT_RUN`` urgent turns in a row one waiter that is not urgent goes, so a saturated intake never stops the
    workers altogether."""

    URGENT_RUN = 4

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._urgent: collections.deque[threading.Lock] = collections.deque()
        self._held = False
        self._run = 0  # urgent turns handed over in a row while others waited

    def acquire(self, urgent: bool = False) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            (self._urgent if urgent else self._waiters).append(turn)
        turn.acquire()  # released by the previous holder, which hands the lock over without freeing it

    def release(self) -> None:
        with self._mutex:
            if self._urgent and (self._run < self.URGENT_RUN or not self._waiters):
                self._run = self._run + 1 if self._waiters else 0
                self._urgent.popleft().release()
            elif self._waiters:
                self._run = 0
                self._waiters.popleft().release()
            else:
                self._held = False


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = self.engine.execution_options(**{READ_ONLY: True})
        # SQLite has one writer at a time and its busy handler sleeps up to 100 ms between retries; queueing
        # our own threads on a lock instead keeps latency flat. PostgreSQL needs no such lock.
        self._lock = FairLock() if self.is_sqlite else None
        self._job_listeners: list[Callable[[], None]] = []
        event.listen(self.sessions, "after_commit", self._after_commit)
        if not self.is_sqlite:
            event.listen(self.sessions, "before_commit", self._notify_other_processes)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, *, urgent: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception. ``urgent``: someone waits on its
        commit (an HL7 sender on its ACK); on SQLite it goes before the workers' transactions waiting to write."""
        if self._lock is not None:
            self._lock.acquire(urgent)
        try:
            with self.sessions() as s, s.begin():
                yield s
        finally:
            if self._lock is not None:
                self._lock.release()

    def on_jobs_committed(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each commit that added a job, from the committing thread; returns what removes it.
        The one place that knows a job is ready: a worker wakes then, whichever flow or route queued it. Workers
        of other processes hear of it through PostgreSQL (:mod:`opensegur.store.job_signal`)."""
        self._job_listeners.append(listener)
        return lambda: self._job_listeners.remove(listener)

    @staticmethod
    def _notify_other_processes(session: Session) -> None:
        if session.info.get(JOBS_ENQUEUED):
            session.execute(text(job_signal.NOTIFY))

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(JOBS_ENQUEUED, False):
            for listener in list(self._job_listeners):
                listener()

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A read transaction on a bare connection, for the hot path of every request (the access decision): a
        Core statement costs a few tens of microseconds there, an ORM session several hundred."""
        with self._read_engine.begin() as conn:
            yield conn

    def migrate(self) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection_url"] = self.url
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()
