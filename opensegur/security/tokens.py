"""Bearer tokens of system accounts (REST and FHIR MHD integrations), table ``api_token``.

The token is printed once at creation; the database keeps only its SHA-256. The ``osg_`` prefix lets secret
scanners recognise a leaked token and lets ``resolve_token`` refuse anything else without a query.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, Select, bindparam, select, update
from sqlalchemy.orm import Session

from opensegur.security.actor import Actor
from opensegur.security.audit import record_admin
from opensegur.security.clock import as_utc
from opensegur.security.errors import SecurityError
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.models import ApiToken, utcnow

__all__ = [
    "TOKEN_PREFIX",
    "actor_for_token",
    "create_token",
    "list_tokens",
    "resolve_token",
    "revoke_token",
]

TOKEN_PREFIX = "osg_"
_TOUCH_EVERY = timedelta(seconds=60)  # last_used_at is for the admin list: a minute's precision is plenty
_SECRET_MAX = 200


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session,
    name: str,
    role: str,
    scope: str = "ght",
    expires_days: int | None = None,
    created_by: Actor | str | None = None,
    *,
    now: datetime | None = None,
) -> str:
    """Create a token and return its secret, to be shown once; SecurityError (French) on a bad or taken name.
    ``created_by``: the logged-in administrator, or the tool's name (``cli:<user>``); recorded in the audit."""
    name = name.strip()
    role = role.strip()
    if not name or len(name) > 100:
        raise SecurityError("Nom de jeton invalide : entre 1 et 100 caractères")
    if not role or len(role) > 64:
        raise SecurityError("Rôle invalide : entre 1 et 64 caractères")
    try:
        parsed = Scope.parse(scope)
    except ValueError as exc:
        raise SecurityError(str(exc)) from None
    if expires_days is not None and expires_days <= 0:
        raise SecurityError("Durée de validité invalide : un nombre de jours positif est attendu")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        # Names stay taken after revocation: the audit trail and the list keep naming the old token.
        raise SecurityError(
            f"Un jeton nommé « {name} » existe déjà (actif ou révoqué) : choisissez un autre nom"
        )
    now = now or utcnow()
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            name=name,
            role=role,
            scope=str(parsed),
            secret_sha256=_digest(secret),
            created_by=(created_by.name if isinstance(created_by, Actor) else created_by or "")[:100] or None,
            created_at=now,
            expires_at=now + timedelta(days=expires_days) if expires_days is not None else None,
        )
    )
    session.flush()
    record_admin(session, created_by, "token_create", {"name": name, "role": role, "scope": str(parsed)})
    return secret


# What a request needs of its token, read with one Core statement on the hot path.
_LIVE: Select[*tuple[Any, ...]] = select(
    ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.scope, ApiToken.expires_at, ApiToken.last_used_at
).where(ApiToken.secret_sha256 == bindparam("digest"), ApiToken.revoked_at.is_(None))


def lookup_token(conn: Connection, secret: str, now: datetime) -> Row[*tuple[Any, ...]] | None:
    """The live token with this secret, or None (unknown, forged, revoked or expired); writes nothing."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > _SECRET_MAX:
        return None
    token = conn.execute(_LIVE, {"digest": _digest(secret)}).first()
    if token is None or (token.expires_at is not None and as_utc(token.expires_at) <= now):
        return None
    return token


def use_due(token: ApiToken | Row[Any], now: datetime) -> bool:
    """Whether ``last_used_at`` should be written now (at most once a minute)."""
    return token.last_used_at is None or now - as_utc(token.last_used_at) >= _TOUCH_EVERY


def mark_used(session: Session, token_id: int, now: datetime) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def resolve_token(session: Session, secret: str, now: datetime | None = None) -> ApiToken | None:
    """The live token with this secret as a row of the session, recording its use when due (write transaction)."""
    now = now or utcnow()
    found = lookup_token(session.connection(), secret, now)
    if found is None:
        return None
    token = session.get_one(ApiToken, found.id)
    if use_due(token, now):
        token.last_used_at = now
        session.flush()
    return token


def revoke_token(
    session: Session, name: str, *, by: Actor | str | None = None, now: datetime | None = None
) -> ApiToken:
    """Revoke the token named ``name`` (at once: the next request with it is refused); SecurityError if unknown."""
    token = session.scalar(select(ApiToken).where(ApiToken.name == name.strip()))
    if token is None:
        raise SecurityError(f"Aucun jeton nommé « {name} »")
    if token.revoked_at is None:
        token.revoked_at = now or utcnow()
        session.flush()
        record_admin(session, by, "token_revoke", {"name": token.name})
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def actor_for_token(token: ApiToken | Row[Any], address: str | None) -> Actor:
    return Actor(
        kind="system",
        name=token.name,
        display_name=token.name,
        assignments=(Assignment(token.role, Scope.parse(token.scope)),),
        strong=False,
        token_id=token.id,
        address=address,
    )
