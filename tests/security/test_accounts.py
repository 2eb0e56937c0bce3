"""Local accounts: password login, generic refusals, lock-out, departure, the acting user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from opensegur.security import accounts, passwords, sessions
from opensegur.security.accounts import BAD_CREDENTIALS, TOO_MANY_ATTEMPTS
from opensegur.security.errors import LoginRefused, SecurityError
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.db import Database
from opensegur.store.models import Account, AuditEvent, LoginAttempt

from .conftest import PASSWORD, load, make_account

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def attempt(
    db: Database, login: str, password: str, address: str | None = "10.0.0.1", now: datetime = T0
) -> str:
    """Try a login as the web layer does (the refusal committed); returns "ok" or the refusal's message."""
    with db.session() as s:
        try:
            accounts.authenticate_password(s, login, password, address, now=now)
        except LoginRefused as exc:
            return exc.message
    return "ok"


def test_password_hashes_are_argon2id_and_never_the_password() -> None:
    stored = passwords.hash_password(PASSWORD)
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert passwords.verify_password(stored, PASSWORD)
    assert not passwords.verify_password(stored, PASSWORD + " ")
    assert not passwords.verify_password(None, PASSWORD)  # the dummy verification never succeeds
    assert not passwords.verify_password("not a hash", PASSWORD)


def test_right_password_logs_in_case_insensitive_login(db: Database, doctor: int) -> None:
    assert attempt(db, "  Dr.Martin ", PASSWORD) == "ok"


def test_wrong_password_unknown_login_and_departed_account_read_the_same(db: Database, doctor: int) -> None:
    make_account(db, "parti")
    with db.session() as s:
        accounts.deactivate(s, s.scalars(select(Account).where(Account.login == "parti")).one(), "départ")
    wrong = attempt(db, "dr.martin", "wrong password!!")
    unknown = attempt(db, "nobody.here", PASSWORD)
    departed = attempt(db, "parti", PASSWORD)
    assert wrong == unknown == departed == BAD_CREDENTIALS
    assert "martin" not in wrong.lower() and "inconnu" not in wrong.lower()


def test_refusal_is_committed_by_the_caller_pattern(db: Database, doctor: int) -> None:
    attempt(db, "dr.martin", "bad")
    with db.session() as s:
        keys = sorted(s.scalars(select(LoginAttempt.key)))
        assert keys == ["account:dr.martin", "address:10.0.0.1"]
        assert s.get_one(Account, doctor).failed_logins == 1


def test_lock_out_after_five_failures_then_released(db: Database, doctor: int) -> None:
    for i in range(5):
        assert attempt(db, "dr.martin", f"guess {i}", now=T0 + timedelta(seconds=i)) == BAD_CREDENTIALS
    # Even the right password is refused while locked.
    assert attempt(db, "dr.martin", PASSWORD, now=T0 + timedelta(minutes=1)) == TOO_MANY_ATTEMPTS
    locked_until = load(db, doctor).locked_until
    assert locked_until is not None
    assert attempt(db, "dr.martin", PASSWORD, now=T0 + timedelta(minutes=16)) == "ok"
    account = load(db, doctor)
    assert account.failed_logins == 0 and account.locked_until is None


def test_unknown_login_locks_out_the_same_way(db: Database) -> None:
    for i in range(5):
        attempt(db, "ghost", f"guess {i}", address=None)
    assert attempt(db, "ghost", "guess 6", address=None) == TOO_MANY_ATTEMPTS


def test_success_clears_the_account_counter(db: Database, doctor: int) -> None:
    for i in range(4):
        attempt(db, "dr.martin", f"guess {i}", address=None)
    assert attempt(db, "dr.martin", PASSWORD, address=None) == "ok"
    for i in range(4):
        attempt(db, "dr.martin", f"again {i}", address=None)
    assert attempt(db, "dr.martin", PASSWORD, address=None) == "ok"


def test_one_address_trying_many_logins_is_stopped(db: Database, doctor: int) -> None:
    for i in range(20):
        assert attempt(db, f"user{i}", "password guess", address="203.0.113.9") == BAD_CREDENTIALS
    assert attempt(db, "dr.martin", PASSWORD, address="203.0.113.9") == TOO_MANY_ATTEMPTS
    assert attempt(db, "dr.martin", PASSWORD, address="10.0.0.2") == "ok"
    assert attempt(db, "dr.martin", PASSWORD, address="203.0.113.9", now=T0 + timedelta(minutes=16)) == "ok"


def test_old_parameters_are_rehashed_at_login(db: Database, doctor: int) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    with db.session() as s:
        s.get_one(Account, doctor).password_hash = weak
    assert attempt(db, "dr.martin", PASSWORD) == "ok"
    upgraded = load(db, doctor).password_hash
    assert upgraded is not None and upgraded != weak and not passwords.needs_rehash(upgraded)


@pytest.mark.parametrize(
    ("login", "password", "rpps", "expected"),
    [
        ("dr.martin", PASSWORD, None, "déjà pris"),
        ("DR.MARTIN", PASSWORD, None, "déjà pris"),
        ("new user", PASSWORD, None, "sans espace"),
        ("x" * 101, PASSWORD, None, "Identifiant invalide"),
        ("new", "short", None, "trop court"),
        ("new", PASSWORD, "1234", "RPPS"),
        ("new", PASSWORD, "1000345678９", "RPPS"),  # a full-width digit is not a digit of an RPPS
    ],
)
def test_create_account_refuses_bad_input(
    db: Database, doctor: int, login: str, password: str, rpps: str | None, expected: str
) -> None:
    with pytest.raises(SecurityError, match=expected), db.session() as s:
        accounts.create_account(
            s, login, "Nom", [Assignment("medecin", Scope.parse("ght"))], password, rpps=rpps
        )


def test_create_account_is_audited_and_needs_an_assignment(db: Database) -> None:
    with pytest.raises(SecurityError, match="affectation"), db.session() as s:
        accounts.create_account(s, "lonely", "Nom", [], PASSWORD)
    account_id, secret = make_account(db, "ide.durand", with_totp=True)
    assert secret is not None and len(secret) >= 16
    with db.session() as s:
        entry = s.scalars(select(AuditEvent).where(AuditEvent.action == "account_create")).one()
        assert entry.actor == "test" and entry.detail["login"] == "ide.durand"
        assert s.get_one(Account, account_id).totp_secret == secret


def test_deactivate_revokes_every_session_at_once(db: Database, doctor: int) -> None:
    with db.session() as s:
        account = s.get_one(Account, doctor)
        first, _ = sessions.open_session(s, account, "password", False, "10.0.0.1", "Firefox")
        second, _ = sessions.open_session(s, account, "password+totp", True, "10.0.0.2", "Chromium")
    with db.session() as s:
        assert sessions.resolve(s, first) is not None
        revoked = accounts.deactivate(s, s.get_one(Account, doctor), "départ RH", by="rh-feed")
    assert revoked == 2
    with db.session() as s:
        assert sessions.resolve(s, first) is None and sessions.resolve(s, second) is None
        account = s.get_one(Account, doctor)
        assert not account.active and account.departed_at is not None
        entry = s.scalars(select(AuditEvent).where(AuditEvent.action == "account_deactivate")).one()
        assert entry.actor == "rh-feed" and entry.detail["reason"] == "départ RH"
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 2  # creation and departure
    assert attempt(db, "dr.martin", PASSWORD) == BAD_CREDENTIALS


def test_actor_for_account_carries_who_and_from_where(db: Database, doctor: int) -> None:
    with db.session() as s:
        account = s.get_one(Account, doctor)
        _, row = sessions.open_session(s, account, "password+totp", True, "10.0.0.1", None)
        actor = accounts.actor_for_account(account, row, address="10.0.0.7")
    assert actor.kind == "person" and actor.name == "dr.martin" and actor.strong
    assert actor.assignments == (Assignment("medecin", Scope("ght")),)
    assert actor.session_id == row.id and actor.csrf_token == row.csrf_token
    assert actor.audit_fields() == {
        "actor": "dr.martin",
        "account_id": doctor,
        "role": "medecin",
        "rpps": "10003456789",
        "address": "10.0.0.7",
        "session_ref": f"session:{row.id}",
    }
