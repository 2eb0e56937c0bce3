"""Server-side login sessions (table ``web_session``): revocable, with idle and absolute expiry.

The cookie carries a random secret; the database keeps only its SHA-256, so a copy of the database does not let
anyone take over a session. ``resolve`` runs on every request: one indexed query, and a write at most once a
minute to move the idle deadline.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Row, bindparam, select, update
from sqlalchemy.orm import Session

from opensegur.security.clock import as_utc
from opensegur.store.models import Account, WebSession, utcnow

__all__ = [
    "ABSOLUTE_EXPIRY",
    "IDLE_EXPIRY",
    "lookup",
    "lookup_row",
    "open_session",
    "resolve",
    "revoke",
    "revoke_all",
    "secret_digest",
    "touch",
    "touch_due",
    "upgrade_to_strong",
]

IDLE_EXPIRY = timedelta(minutes=30)
ABSOLUTE_EXPIRY = timedelta(hours=12)
# Moving the idle deadline on every request would make every page view a write; a minute is far below the idle
# expiry, so the deadline is at most a minute early.
_TOUCH_EVERY = timedelta(seconds=60)
_SECRET_MAX = 200  # longer than any secret we issue: refuse before hashing arbitrary input


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def open_session(
    session: Session,
    account: Account,
    method: str,
    strong: bool,
    address: str | None,
    user_agent: str | None,
    *,
    absolute: timedelta = ABSOLUTE_EXPIRY,
    now: datetime | None = None,
) -> tuple[str, WebSession]:
    """Open a session for ``account``; returns the cookie secret (not stored) and the row."""
    now = now or utcnow()
    secret = _new_secret()
    row = WebSession(
        secret_sha256=secret_digest(secret),
        account_id=account.id,
        method=method[:32],
        strong=strong,
        csrf_token=secrets.token_urlsafe(32),
        address=address[:64] if address else None,
        user_agent=user_agent[:300] if user_agent else None,
        created_at=now,
        last_seen_at=now,
        expires_at=now + absolute,
    )
    session.add(row)
    account.last_login_at = now
    session.flush()
    return secret, row


def lookup(
    session: Session, secret: str, now: datetime, *, idle: timedelta = IDLE_EXPIRY
) -> tuple[WebSession, Account] | None:
    """The live session this cookie secret opens and its account, in one query that writes nothing (every
    request runs it: a read transaction suffices); None when unknown, revoked, expired, idle too long, or the
    account deactivated."""
    if not secret or len(secret) > _SECRET_MAX:
        return None
    found = session.execute(
        select(WebSession, Account)
        .join(Account, Account.id == WebSession.account_id)
        .where(
            WebSession.secret_sha256 == secret_digest(secret),
            WebSession.revoked_at.is_(None),
            Account.active.is_(True),
        )
    ).first()
    if found is None:
        return None
    row, account = found
    last_seen = as_utc(row.last_seen_at)
    if as_utc(row.expires_at) <= now or last_seen + idle <= now:
        return None
    return row, account


# What a request needs of its session and account, read with one Core statement (no ORM objects).
_LIVE = (
    select(
        WebSession.id.label("session_id"),
        WebSession.method,
        WebSession.strong,
        WebSession.csrf_token,
        WebSession.expires_at,
        WebSession.last_seen_at,
        Account.id.label("account_id"),
        Account.login,
        Account.display_name,
        Account.assignments,
        Account.rpps,
    )
    .join(Account, Account.id == WebSession.account_id)
    .where(
        WebSession.secret_sha256 == bindparam("digest"),
        WebSession.revoked_at.is_(None),
        Account.active.is_(True),
    )
)


def lookup_row(
    conn: Connection, secret: str, now: datetime, *, idle: timedelta = IDLE_EXPIRY
) -> Row[Any] | None:
    """:func:`lookup` for the hot path: the columns a request needs, on a bare read connection."""
    if not secret or len(secret) > _SECRET_MAX:
        return None
    row = conn.execute(_LIVE, {"digest": secret_digest(secret)}).first()
    if row is None:
        return None
    if as_utc(row.expires_at) <= now or as_utc(row.last_seen_at) + idle <= now:
        return None
    return row


def touch_due(row: WebSession | Row[Any], now: datetime) -> bool:
    """Whether the idle deadline should move now (at most once a minute)."""
    return now - as_utc(row.last_seen_at) >= _TOUCH_EVERY


def touch(session: Session, session_id: int, now: datetime) -> None:
    session.execute(update(WebSession).where(WebSession.id == session_id).values(last_seen_at=now))


def resolve(
    session: Session, secret: str, now: datetime | None = None, *, idle: timedelta = IDLE_EXPIRY
) -> WebSession | None:
    """:func:`lookup`, moving the idle deadline in the same (write) transaction when it is due."""
    now = now or utcnow()
    found = lookup(session, secret, now, idle=idle)
    if found is None:
        return None
    row = found[0]
    if touch_due(row, now):
        row.last_seen_at = now
        session.flush()
    return row


def revoke(session: Session, session_id: int, now: datetime | None = None) -> None:
    """End one session (logout); revoking it again keeps the first revocation time."""
    session.execute(
        update(WebSession)
        .where(WebSession.id == session_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )


def revoke_all(session: Session, account_id: int, now: datetime | None = None) -> int:
    """End every live session of the account ("se déconnecter partout", departure); returns how many."""
    result = session.execute(
        update(WebSession)
        .where(WebSession.account_id == account_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    return cast(CursorResult[Any], result).rowcount


def upgrade_to_strong(session: Session, row: WebSession, method: str, now: datetime | None = None) -> str:
    """Mark the session strong after a second factor and give it a new secret (returned for the cookie): a
    secret planted in the victim's browser before login (session fixation) no longer opens anything."""
    secret = _new_secret()
    row.secret_sha256 = secret_digest(secret)
    row.csrf_token = secrets.token_urlsafe(32)
    row.strong = True
    row.method = method[:32]
    row.last_seen_at = now or utcnow()
    session.flush()
    return secret
