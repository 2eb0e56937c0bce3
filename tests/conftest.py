"""Shared fixtures: a migrated database on SQLite and, when OPENSEGUR_TEST_PG_URL is set, on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from opensegur.store.db import Database

SHARED = Path(os.environ.get("OPENSEGUR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
EXAMPLES = SHARED / "hl7v2-examples"
PG_URL = os.environ.get("OPENSEGUR_TEST_PG_URL")
# Platforms started by tests validate in their worker threads: a pool of Saxon processes per test platform would
# compile the schematrons again in each. The pool itself is tested in tests/content/test_validation_pool.py.
os.environ.setdefault("OPENSEGUR_VALIDATION_PROCESSES", "0")


def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    assert PG_URL is not None
    name = f"opensegur_t_{uuid.uuid4().hex[:12]}"
    admin = PG_URL.replace("postgresql://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("OPENSEGUR_TEST_PG_URL must be set in CI: .ci/run starts PostgreSQL")
        pytest.skip("PostgreSQL not configured (set OPENSEGUR_TEST_PG_URL)")
    yield from pg_database()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, for what only PostgreSQL does (LISTEN/NOTIFY, several processes)."""
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("OPENSEGUR_TEST_PG_URL must be set in CI: .ci/run starts PostgreSQL")
        pytest.skip("PostgreSQL not configured (set OPENSEGUR_TEST_PG_URL)")
    yield from pg_database()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'test.db'}")
    database.migrate()
    yield database
    database.dispose()
