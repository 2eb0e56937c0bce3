"""System accounts' bearer tokens: printed once, stored hashed, revocable, expiring, unforgeable."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from opensegur.security import tokens
from opensegur.security.errors import SecurityError
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.db import Database
from opensegur.store.models import ApiToken, AuditEvent

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def create(db: Database, name: str = "dpi-crossway", **kw: object) -> str:
    with db.session() as s:
        return tokens.create_token(s, name, "integration", now=T0, created_by="admin", **kw)  # type: ignore[arg-type]


def resolve(db: Database, secret: str, now: datetime = T0) -> ApiToken | None:
    with db.session() as s:
        return tokens.resolve_token(s, secret, now)


def test_create_and_resolve(db: Database) -> None:
    secret = create(db, scope="site:750000001")
    assert secret.startswith("osg_") and len(secret) >= 47
    with db.session() as s:
        row = s.scalars(select(ApiToken)).one()
        assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert row.created_by == "admin" and row.expires_at is None
        entry = s.scalars(select(AuditEvent).where(AuditEvent.action == "token_create")).one()
        assert entry.actor == "admin" and secret not in str(entry.detail)
    token = resolve(db, secret)
    assert token is not None
    actor = tokens.actor_for_token(token, "192.0.2.10")
    assert actor.kind == "system" and actor.name == "dpi-crossway" and not actor.strong
    assert actor.assignments == (Assignment("integration", Scope("site", "750000001")),)
    assert actor.session_ref == f"token:{token.id}" and actor.address == "192.0.2.10"


@pytest.mark.parametrize(
    "forged",
    ["", "osg_", "osg_" + "A" * 43, "Bearer osg_x", "osg_" + "x" * 10_000, "' OR 1=1 --"],
)
def test_forged_tokens_refused(db: Database, forged: str) -> None:
    create(db)
    assert resolve(db, forged) is None


def test_the_stored_hash_is_not_a_token(db: Database) -> None:
    secret = create(db)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert resolve(db, digest) is None and resolve(db, "osg_" + digest) is None
    assert resolve(db, secret[:-1]) is None


def test_revoked_token_refused_at_once(db: Database) -> None:
    secret = create(db)
    assert resolve(db, secret) is not None
    with db.session() as s:
        tokens.revoke_token(s, "dpi-crossway", by="admin", now=T0)
    assert resolve(db, secret) is None
    with db.session() as s:
        first = tokens.revoke_token(s, "dpi-crossway", now=T0 + timedelta(days=1)).revoked_at
        assert first is not None and first.replace(tzinfo=None) == T0.replace(tzinfo=None)
        assert len(s.scalars(select(AuditEvent).where(AuditEvent.action == "token_revoke")).all()) == 1
    with pytest.raises(SecurityError, match="Aucun jeton"), db.session() as s:
        tokens.revoke_token(s, "unknown")


def test_expired_token_refused(db: Database) -> None:
    secret = create(db, expires_days=30)
    assert resolve(db, secret, T0 + timedelta(days=29, hours=23)) is not None
    assert resolve(db, secret, T0 + timedelta(days=30)) is None


def test_last_use_recorded_at_most_once_a_minute(db: Database) -> None:
    secret = create(db)
    resolve(db, secret, T0 + timedelta(seconds=5))
    resolve(db, secret, T0 + timedelta(seconds=30))
    with db.session() as s:
        used = s.scalars(select(ApiToken.last_used_at)).one()
        assert used is not None and used.replace(tzinfo=None) == (T0 + timedelta(seconds=5)).replace(
            tzinfo=None
        )
    resolve(db, secret, T0 + timedelta(seconds=70))
    with db.session() as s:
        used = s.scalars(select(ApiToken.last_used_at)).one()
        assert used is not None and used.replace(tzinfo=None) == (T0 + timedelta(seconds=70)).replace(
            tzinfo=None
        )


def test_bad_creation_refused(db: Database) -> None:
    create(db)
    with db.session() as s:
        tokens.revoke_token(s, "dpi-crossway")
    with pytest.raises(SecurityError, match="existe déjà"):
        create(db)  # a revoked token's name stays taken
    with pytest.raises(SecurityError, match="Périmètre"):
        create(db, "other", scope="site:../../etc")
    with pytest.raises(SecurityError, match="jours"):
        create(db, "other", expires_days=0)
    with pytest.raises(SecurityError, match="Nom de jeton"):
        create(db, "  ")


def test_list_tokens(db: Database) -> None:
    create(db, "b-lab")
    create(db, "a-dpi")
    with db.session() as s:
        assert [t.name for t in tokens.list_tokens(s)] == ["a-dpi", "b-lab"]
