"""Logins under way live in the shared database: any serving host finishes them, and only once."""

from __future__ import annotations

import dataclasses
import time

from opensegur.security.oidc import Pending, PendingLogins
from opensegur.store.db import Database


def _pending(state: str, ttl: float = 600) -> Pending:
    return Pending(
        provider="psc",
        state=state,
        nonce="n-" + state,
        verifier="v" * 43,
        redirect_uri="https://segur.chu-x.fr/connexion/psc/retour",
        retour="/identites",
        browser_digest="d" * 64,
        expires_at=time.time() + ttl,
    )


def test_a_login_started_on_one_host_finishes_on_another_once(db: Database) -> None:
    other_host = Database(db.url)  # another process's engine on the same database
    try:
        started = _pending("etat-1")
        PendingLogins(db).put(started)
        assert PendingLogins(other_host).take("etat-1") == started
        assert PendingLogins(db).take("etat-1") is None  # replayed state
        assert PendingLogins(other_host).take("inconnu") is None
    finally:
        other_host.dispose()


def test_an_expired_login_is_refused_and_swept(db: Database) -> None:
    logins = PendingLogins(db)
    logins.put(_pending("perime", ttl=-1))
    assert logins.take("perime") is None
    logins.put(_pending("vieux", ttl=-1))
    logins.put(dataclasses.replace(_pending("neuf"), nonce="autre"))  # each put sweeps what has expired
    assert logins.take("vieux") is None and logins.take("neuf") is not None
