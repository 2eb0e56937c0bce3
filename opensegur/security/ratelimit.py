"""Failed login and second-factor attempts counted per key in a sliding window (table ``login_attempt``).

Keys: ``account:<login>`` (counted whether or not the login exists, so a lock-out does not reveal it),
``address:<ip>`` (one machine trying many logins) and ``totp:<account id>`` (second-factor brute force). Rows
live in the database so every process and host of the platform shares the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from opensegur.store.models import LoginAttempt

__all__ = [
    "ACCOUNT_LIMIT",
    "ADDRESS_LIMIT",
    "SECOND_FACTOR_LIMIT",
    "Limit",
    "account_key",
    "address_key",
    "clear",
    "exceeded",
    "record_failure",
    "second_factor_key",
]


@dataclass(frozen=True)
class Limit:
    failures: int  # this many failures inside the window lock the key
    window: timedelta


ACCOUNT_LIMIT = Limit(5, timedelta(minutes=15))
# Higher than one account's: a hospital's NAT puts many honest users behind one address.
ADDRESS_LIMIT = Limit(20, timedelta(minutes=15))
SECOND_FACTOR_LIMIT = Limit(5, timedelta(minutes=15))

_KEY_MAX = 200  # login_attempt.key


def account_key(login: str) -> str:
    return f"account:{login.strip().casefold()}"[:_KEY_MAX]


def address_key(address: str) -> str:
    return f"address:{address}"[:_KEY_MAX]


def second_factor_key(account_id: int) -> str:
    return f"totp:{account_id}"


def exceeded(session: Session, key: str, limit: Limit, now: datetime) -> bool:
    count = session.scalar(
        select(func.count(LoginAttempt.id)).where(
            LoginAttempt.key == key, LoginAttempt.at > now - limit.window
        )
    )
    return (count or 0) >= limit.failures


def record_failure(session: Session, key: str, limit: Limit, now: datetime) -> bool:
    """Count one failure; returns whether the key is now over its limit. Rows older than the window go."""
    session.execute(
        delete(LoginAttempt).where(LoginAttempt.key == key, LoginAttempt.at <= now - limit.window)
    )
    session.add(LoginAttempt(key=key, at=now))
    session.flush()
    return exceeded(session, key, limit, now)


def clear(session: Session, key: str) -> None:
    """Forget the key's failures (after a success)."""
    session.execute(delete(LoginAttempt).where(LoginAttempt.key == key))
