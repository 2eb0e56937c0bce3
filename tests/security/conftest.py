"""Helpers shared by the security tests: accounts made quickly, and an attacker's write access to the files."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import psycopg
import pytest

from opensegur.security import accounts
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.db import Database
from opensegur.store.models import Account

PASSWORD = "correct horse battery staple"


def make_account(
    db: Database, login: str = "dr.martin", *, with_totp: bool = False
) -> tuple[int, str | None]:
    """A local account (médecin, whole GHT); returns its id and TOTP secret."""
    with db.session() as s:
        account, secret = accounts.create_account(
            s,
            login,
            "Dr Claire Martin",
            [Assignment("medecin", Scope.parse("ght"))],
            PASSWORD,
            rpps="10003456789",
            with_totp=with_totp,
            by="test",
        )
        return account.id, secret


def load(db: Database, account_id: int) -> Account:
    with db.session() as s:
        return s.get_one(Account, account_id)


def tamper(db: Database, statements: Sequence[str]) -> None:
    """Run SQL the way an attacker with access to the database files would: triggers and foreign keys off."""
    if db.is_sqlite:
        db.dispose()
        conn = sqlite3.connect(db.url.split("///", 1)[1])
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
            for name in names:
                conn.execute(f'DROP TRIGGER "{name}"')
            for sql in statements:
                conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    url = db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=False) as pg:
        # A superuser's session that fires no trigger and checks no foreign key.
        pg.execute("SET session_replication_role = replica")
        for sql in statements:
            pg.execute(sql)
        pg.commit()


@pytest.fixture
def doctor(db: Database) -> int:
    account_id, _ = make_account(db)
    return account_id
