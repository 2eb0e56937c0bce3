"""Second factor: TOTP codes accepted once, brute force stopped, recovery codes used once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest

from opensegur.security import accounts, totp
from opensegur.security.accounts import BAD_CODE, TOO_MANY_ATTEMPTS
from opensegur.security.errors import LoginRefused
from opensegur.store.db import Database
from opensegur.store.models import Account

from .conftest import PASSWORD, make_account

T0 = datetime(2026, 12, 1, 8, 0, 10, tzinfo=UTC)


@pytest.fixture
def enrolled(db: Database) -> tuple[int, str]:
    account_id, secret = make_account(db, with_totp=True)
    assert secret is not None
    return account_id, secret


def code_at(secret: str, when: datetime) -> str:
    return pyotp.TOTP(secret).at(when)


def second_factor(db: Database, account_id: int, code: str, now: datetime = T0) -> str:
    """As the web layer does: the refusal is committed; returns the method or the refusal's message."""
    with db.session() as s:
        try:
            return accounts.verify_second_factor(s, s.get_one(Account, account_id), code, now=now)
        except LoginRefused as exc:
            return exc.message


def test_code_accepted_once(db: Database, enrolled: tuple[int, str]) -> None:
    account_id, secret = enrolled
    code = code_at(secret, T0)
    assert second_factor(db, account_id, code) == "totp"
    assert second_factor(db, account_id, code) == BAD_CODE  # replayed within its 30 s
    assert (
        second_factor(db, account_id, code, now=T0 + timedelta(seconds=25)) == BAD_CODE
    )  # next step's window


def test_clock_drift_of_one_step_either_side(db: Database, enrolled: tuple[int, str]) -> None:
    account_id, secret = enrolled
    assert second_factor(db, account_id, code_at(secret, T0 - timedelta(seconds=30))) == "totp"
    assert second_factor(db, account_id, code_at(secret, T0 + timedelta(seconds=30))) == "totp"
    # Two steps away is out of the window, and the step before a used one is never accepted again.
    assert second_factor(db, account_id, code_at(secret, T0 + timedelta(seconds=90))) == BAD_CODE
    assert second_factor(db, account_id, code_at(secret, T0)) == BAD_CODE


@pytest.mark.parametrize(
    "hostile", ["", "12345", "1234567", "abcdef", "１２３４５６", "' OR 1=1 --", "0" * 10_000]
)
def test_malformed_codes_refused(db: Database, enrolled: tuple[int, str], hostile: str) -> None:
    assert second_factor(db, enrolled[0], hostile) == BAD_CODE


def test_brute_force_is_stopped_and_locks_the_password_step(db: Database, enrolled: tuple[int, str]) -> None:
    account_id, secret = enrolled
    good = code_at(secret, T0)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    for _ in range(5):
        assert second_factor(db, account_id, wrong) == BAD_CODE
    assert second_factor(db, account_id, good) == TOO_MANY_ATTEMPTS
    with pytest.raises(LoginRefused, match="Trop de tentatives"), db.session() as s:
        accounts.authenticate_password(s, "dr.martin", PASSWORD, None, now=T0 + timedelta(minutes=1))
    later = T0 + timedelta(minutes=16)
    assert second_factor(db, account_id, code_at(secret, later), now=later) == "totp"


def test_recovery_codes_used_once(db: Database, enrolled: tuple[int, str]) -> None:
    account_id, _ = enrolled
    with db.session() as s:
        codes = totp.set_recovery_codes(s.get_one(Account, account_id), count=3)
    assert len(set(codes)) == 3 and all(len(c) == 14 and c.count("-") == 2 for c in codes)
    with db.session() as s:
        stored = s.get_one(Account, account_id).recovery_codes
        assert len(stored) == 3 and all(h.startswith("$argon2id$") and codes[0] not in h for h in stored)
    # Typed by hand: lower case, without dashes, with spaces.
    typed = " " + codes[1].lower().replace("-", " ") + " "
    assert second_factor(db, account_id, typed) == "recovery"
    assert second_factor(db, account_id, codes[1]) == BAD_CODE
    assert second_factor(db, account_id, codes[0]) == "recovery"
    with db.session() as s:
        assert len(s.get_one(Account, account_id).recovery_codes) == 1


def test_departed_account_second_factor_refused(db: Database, enrolled: tuple[int, str]) -> None:
    account_id, secret = enrolled
    with db.session() as s:
        accounts.deactivate(s, s.get_one(Account, account_id), "départ")
    assert second_factor(db, account_id, code_at(secret, T0)) == BAD_CODE


def test_provisioning_uri_names_the_issuer() -> None:
    secret = totp.new_secret()
    uri = urlparse(totp.provisioning_uri(secret, "dr.martin"))
    query = parse_qs(uri.query)
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert unquote(uri.path) == "/OpenSégur:dr.martin"
    assert query["secret"] == [secret] and query["issuer"] == ["OpenSégur"]
