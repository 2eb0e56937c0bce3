"""Server-side sessions: expiry, revocation, "se déconnecter partout", fixation."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from opensegur.security import sessions
from opensegur.store.db import Database
from opensegur.store.models import Account, WebSession

from .conftest import make_account

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def open_(db: Database, account_id: int, now: datetime = T0, strong: bool = False) -> tuple[str, int]:
    with db.session() as s:
        secret, row = sessions.open_session(
            s, s.get_one(Account, account_id), "password", strong, "10.0.0.1", "Firefox", now=now
        )
        return secret, row.id


def resolve(db: Database, secret: str, now: datetime, **kw: timedelta) -> WebSession | None:
    with db.session() as s:
        return sessions.resolve(s, secret, now, **kw)


def test_only_the_hash_of_the_secret_is_stored(db: Database, doctor: int) -> None:
    secret, session_id = open_(db, doctor)
    assert len(secret) >= 43
    with db.session() as s:
        row = s.get_one(WebSession, session_id)
        assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in (row.secret_sha256, row.csrf_token) and len(row.csrf_token) >= 43
        assert s.get_one(Account, doctor).last_login_at is not None
    found = resolve(db, secret, T0 + timedelta(minutes=1))
    assert found is not None and found.id == session_id


def test_idle_expiry(db: Database, doctor: int) -> None:
    secret, _ = open_(db, doctor)
    assert resolve(db, secret, T0 + timedelta(minutes=29)) is not None
    # Activity moved the idle deadline…
    assert resolve(db, secret, T0 + timedelta(minutes=58)) is not None
    # …and nothing for 30 minutes ends the session.
    assert resolve(db, secret, T0 + timedelta(minutes=88, seconds=1)) is None


def test_idle_expiry_is_a_setting(db: Database, doctor: int) -> None:
    secret, _ = open_(db, doctor)
    assert resolve(db, secret, T0 + timedelta(minutes=10), idle=timedelta(minutes=10)) is None
    assert resolve(db, secret, T0 + timedelta(minutes=59), idle=timedelta(hours=1)) is not None


def test_last_seen_written_at_most_once_a_minute(db: Database, doctor: int) -> None:
    secret, session_id = open_(db, doctor)
    resolve(db, secret, T0 + timedelta(seconds=30))
    with db.session() as s:
        assert s.get_one(WebSession, session_id).last_seen_at.replace(tzinfo=UTC) == T0
    resolve(db, secret, T0 + timedelta(seconds=61))
    with db.session() as s:
        seen = s.get_one(WebSession, session_id).last_seen_at
        assert seen.replace(tzinfo=None) == (T0 + timedelta(seconds=61)).replace(tzinfo=None)


def test_absolute_expiry_despite_activity(db: Database, doctor: int) -> None:
    secret, _ = open_(db, doctor)
    now = T0
    for _ in range(35):  # every 20 minutes until 11 h 40
        now += timedelta(minutes=20)
        assert resolve(db, secret, now) is not None
    assert resolve(db, secret, T0 + timedelta(hours=12)) is None


@pytest.mark.parametrize("hostile", ["", "x", "A" * 100_000, "' OR '1'='1", "\x00"])
def test_forged_secrets_open_nothing(db: Database, doctor: int, hostile: str) -> None:
    open_(db, doctor)
    assert resolve(db, hostile, T0) is None


def test_the_stored_hash_is_not_a_secret(db: Database, doctor: int) -> None:
    _, session_id = open_(db, doctor)
    with db.session() as s:
        digest = s.get_one(WebSession, session_id).secret_sha256
    assert resolve(db, digest, T0) is None


def test_revoked_session_refused(db: Database, doctor: int) -> None:
    secret, session_id = open_(db, doctor)
    with db.session() as s:
        sessions.revoke(s, session_id, T0)
    assert resolve(db, secret, T0 + timedelta(seconds=1)) is None


def test_revoke_all_ends_every_session_of_the_account_only(db: Database, doctor: int) -> None:
    other, _ = make_account(db, "sec.leroy")
    mine = [open_(db, doctor)[0] for _ in range(3)]
    theirs, _ = open_(db, other)
    with db.session() as s:
        assert sessions.revoke_all(s, doctor, T0) == 3
        assert sessions.revoke_all(s, doctor, T0) == 0
    assert all(resolve(db, secret, T0) is None for secret in mine)
    assert resolve(db, theirs, T0) is not None


def test_sessions_of_a_deactivated_account_refused_even_without_revocation(db: Database, doctor: int) -> None:
    secret, _ = open_(db, doctor)
    with db.session() as s:
        s.get_one(Account, doctor).active = False  # e.g. an HR feed writing the flag directly
    assert resolve(db, secret, T0) is None


def test_upgrade_rotates_the_secret_against_fixation(db: Database, doctor: int) -> None:
    planted, session_id = open_(db, doctor)
    with db.session() as s:
        row = sessions.resolve(s, planted, T0)
        assert row is not None and not row.strong
        old_csrf = row.csrf_token
        fresh = sessions.upgrade_to_strong(s, row, "password+totp", T0)
    assert fresh != planted
    assert resolve(db, planted, T0) is None
    upgraded = resolve(db, fresh, T0 + timedelta(seconds=1))
    assert upgraded is not None and upgraded.id == session_id
    assert upgraded.strong and upgraded.method == "password+totp" and upgraded.csrf_token != old_csrf
    with db.session() as s:
        assert s.scalars(select(WebSession.strong)).all() == [True]
