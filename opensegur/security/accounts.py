"""Local accounts: creation, password login, second factor, departure, and the Actor a session acts as.

Refusals are ``LoginRefused`` with generic French messages: an unknown login, a wrong password and a departed
account read the same, so the login form does not tell an attacker which logins exist. Failures are written to
the caller's session before raising: the caller must catch ``LoginRefused`` inside its transaction and let it
commit, otherwise the rate limit never sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from opensegur.security import passwords, ratelimit, totp
from opensegur.security.actor import Actor
from opensegur.security.audit import record_admin
from opensegur.security.clock import as_utc
from opensegur.security.errors import LoginRefused, SecurityError
from opensegur.security.matrix import Assignment
from opensegur.security.sessions import revoke_all
from opensegur.store.models import Account, WebSession, utcnow

__all__ = [
    "BAD_CREDENTIALS",
    "BAD_CODE",
    "TOO_MANY_ATTEMPTS",
    "actor_for_account",
    "authenticate_password",
    "create_account",
    "deactivate",
    "verify_second_factor",
]

BAD_CREDENTIALS = "Identifiant ou mot de passe incorrect."
BAD_CODE = "Code incorrect ou déjà utilisé."
TOO_MANY_ATTEMPTS = "Trop de tentatives : réessayez dans 15 minutes."
_MIN_PASSWORD = 12  # ANSSI: 12 characters at least for a password guarded by rate limiting
_RPPS_LENGTH = 11


def _normalise_login(login: str) -> str:
    return login.strip().casefold()


def create_account(
    session: Session,
    login: str,
    display_name: str,
    assignments: Sequence[Assignment],
    password: str | None,
    *,
    rpps: str | None = None,
    with_totp: bool = False,
    source: str = "local",
    by: Actor | str | None = None,
) -> tuple[Account, str | None]:
    """Create an account; returns it and its TOTP secret when ``with_totp`` (to show once, with the QR code).
    SecurityError (French) on a taken login, a short password or a malformed RPPS."""
    login = _normalise_login(login)
    display_name = " ".join(display_name.split())
    if not login or len(login) > 100 or any(ch.isspace() for ch in login):
        raise SecurityError("Identifiant invalide : entre 1 et 100 caractères, sans espace")
    if not display_name or len(display_name) > 200:
        raise SecurityError("Nom affiché invalide : entre 1 et 200 caractères")
    if rpps is not None and (len(rpps) != _RPPS_LENGTH or not rpps.isascii() or not rpps.isdigit()):
        raise SecurityError("Numéro RPPS invalide : 11 chiffres attendus")
    if password is not None and len(password) < _MIN_PASSWORD:
        raise SecurityError(f"Mot de passe trop court : {_MIN_PASSWORD} caractères au moins")
    if not assignments:
        raise SecurityError("Au moins une affectation (rôle et périmètre) est nécessaire")
    if session.scalar(select(Account.id).where(Account.login == login)) is not None:
        raise SecurityError(f"L'identifiant « {login} » est déjà pris")
    secret = totp.new_secret() if with_totp else None
    account = Account(
        login=login,
        display_name=display_name,
        rpps=rpps,
        assignments=[a.to_json() for a in assignments],
        password_hash=passwords.hash_password(password) if password is not None else None,
        totp_secret=secret,
        recovery_codes=[],
        source=source,
        active=True,
        failed_logins=0,
    )
    session.add(account)
    session.flush()
    record_admin(
        session,
        by,
        "account_create",
        {"login": login, "assignments": account.assignments, "totp": with_totp},
    )
    return account, secret


def authenticate_password(
    session: Session, login: str, password: str, address: str | None, *, now: datetime | None = None
) -> Account:
    """The active account whose password this is; LoginRefused otherwise (see the module for committing)."""
    now = now or utcnow()
    login_key = ratelimit.account_key(login)
    address_key = ratelimit.address_key(address) if address else None
    account = session.scalar(select(Account).where(Account.login == _normalise_login(login)))
    if (
        (address_key and ratelimit.exceeded(session, address_key, ratelimit.ADDRESS_LIMIT, now))
        or ratelimit.exceeded(session, login_key, ratelimit.ACCOUNT_LIMIT, now)
        or (account is not None and account.locked_until is not None and as_utc(account.locked_until) > now)
    ):
        raise LoginRefused(TOO_MANY_ATTEMPTS)
    usable = account if account is not None and account.active else None
    # Verified even when the account is unknown or departed (against a dummy hash): same time, same answer.
    stored = usable.password_hash if usable is not None else None
    if passwords.verify_password(stored, password) and usable is not None and stored is not None:
        ratelimit.clear(session, login_key)
        usable.failed_logins = 0
        usable.locked_until = None
        if passwords.needs_rehash(stored):
            usable.password_hash = passwords.hash_password(password)
        session.flush()
        return usable
    locked = ratelimit.record_failure(session, login_key, ratelimit.ACCOUNT_LIMIT, now)
    if address_key:
        ratelimit.record_failure(session, address_key, ratelimit.ADDRESS_LIMIT, now)
    if account is not None:
        account.failed_logins += 1
        if locked:
            account.locked_until = now + ratelimit.ACCOUNT_LIMIT.window
    session.flush()
    raise LoginRefused(BAD_CREDENTIALS)


def verify_second_factor(
    session: Session, account: Account, code: str, *, now: datetime | None = None
) -> str:
    """Check a TOTP code or a recovery code; returns ``totp`` or ``recovery`` (for the session's method).
    LoginRefused on a wrong or replayed code, and for 15 minutes after 5 wrong codes (brute force)."""
    now = now or utcnow()
    key = ratelimit.second_factor_key(account.id)
    if (
        not account.active
        or (account.locked_until is not None and as_utc(account.locked_until) > now)
        or ratelimit.exceeded(session, key, ratelimit.SECOND_FACTOR_LIMIT, now)
    ):
        raise LoginRefused(TOO_MANY_ATTEMPTS if account.active else BAD_CODE)
    if totp.verify_totp(account, code, now):
        method = "totp"
    elif totp.use_recovery_code(account, code):
        method = "recovery"
    else:
        if ratelimit.record_failure(session, key, ratelimit.SECOND_FACTOR_LIMIT, now):
            # The password is known to whoever is guessing codes: lock the password step too.
            account.locked_until = now + ratelimit.SECOND_FACTOR_LIMIT.window
        session.flush()
        raise LoginRefused(BAD_CODE)
    ratelimit.clear(session, key)
    session.flush()
    return method


def set_password(
    session: Session,
    account: Account,
    password: str,
    *,
    with_totp: bool = False,
    by: Actor | str | None = None,
) -> str | None:
    """A first password for an account the HR feed created, or a new one: the lock-out is lifted, every session
    ends (whoever knew the old password is out) and, with ``with_totp``, a new TOTP secret is returned."""
    if len(password) < _MIN_PASSWORD:
        raise SecurityError(f"Mot de passe trop court : {_MIN_PASSWORD} caractères au moins")
    if not account.active:
        raise SecurityError(f"Compte « {account.login} » désactivé : réactivez-le d'abord (flux RH)")
    account.password_hash = passwords.hash_password(password)
    account.failed_logins = 0
    account.locked_until = None
    secret = totp.new_secret() if with_totp else None
    if secret is not None:
        account.totp_secret, account.totp_last_step = secret, None
    revoke_all(session, account.id)
    record_admin(session, by, "account_password", {"login": account.login, "totp": with_totp})
    session.flush()
    return secret


def deactivate(
    session: Session,
    account: Account,
    reason: str,
    *,
    by: Actor | str | None = None,
    now: datetime | None = None,
) -> int:
    """A departure: the account can no longer log in and every session it has ends now; returns how many."""
    now = now or utcnow()
    account.active = False
    account.departed_at = now
    revoked = revoke_all(session, account.id, now)
    record_admin(
        session, by, "account_deactivate", {"login": account.login, "reason": reason, "sessions": revoked}
    )
    return revoked


def actor_for_session_row(row: Row[Any], address: str | None) -> Actor:
    """The Actor of a request, from :func:`opensegur.security.sessions.lookup_row`'s columns."""
    return Actor(
        kind="person",
        name=row.login,
        display_name=row.display_name,
        assignments=tuple(Assignment.from_json(a) for a in row.assignments),
        strong=row.strong,
        account_id=row.account_id,
        session_id=row.session_id,
        rpps=row.rpps,
        csrf_token=row.csrf_token,
        address=address,
    )


def actor_for_account(
    account: Account, session_row: WebSession | None, *, address: str | None = None
) -> Actor:
    """The Actor of a request made with this account's session; ``address`` is the request's, else the login's."""
    return Actor(
        kind="person",
        name=account.login,
        display_name=account.display_name,
        assignments=tuple(Assignment.from_json(a) for a in account.assignments),
        strong=session_row.strong if session_row is not None else False,
        account_id=account.id,
        session_id=session_row.id if session_row is not None else None,
        rpps=account.rpps,
        csrf_token=session_row.csrf_token if session_row is not None else None,
        address=address or (session_row.address if session_row is not None else None),
    )
