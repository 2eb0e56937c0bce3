"""Second factor by TOTP (RFC 6238, pyotp) and single-use recovery codes.

A code is valid for its 30-second step and the steps either side (clock drift of the phone), and only once: the
account keeps the last accepted step and refuses that step and every earlier one, so a code read over a
shoulder or replayed from a log is worthless. Recovery codes are stored as argon2 hashes and crossed out when used.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime

import pyotp

from opensegur.security.passwords import hash_password, verify_password
from opensegur.store.models import Account, utcnow

__all__ = [
    "ISSUER",
    "RECOVERY_CODE_COUNT",
    "STEP_SECONDS",
    "new_secret",
    "provisioning_uri",
    "set_recovery_codes",
    "use_recovery_code",
    "verify_totp",
]

ISSUER = "OpenSégur"
STEP_SECONDS = 30
_WINDOW = 1  # steps accepted either side of the current one
_DIGITS = 6
RECOVERY_CODE_COUNT = 10
# No 0/O, 1/I/L, 5/S, 2/Z, 8/B: codes are read from paper and typed by hand.
_RECOVERY_ALPHABET = "ACDEFGHJKMNPQRTUVWXY34679"
_RECOVERY_GROUPS = 3
_RECOVERY_GROUP_LEN = 4  # 12 characters of a 25-letter alphabet: about 56 bits


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, login: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads (as a QR code) to enrol the account."""
    return pyotp.TOTP(secret, digits=_DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=login, issuer_name=ISSUER
    )


def verify_totp(account: Account, code: str, now: datetime | None = None) -> bool:
    """Whether ``code`` is a valid TOTP code not used before; on success the step is remembered on the account."""
    code = "".join(code.split())
    if account.totp_secret is None or len(code) != _DIGITS or not code.isascii() or not code.isdigit():
        return False
    totp = pyotp.TOTP(account.totp_secret, digits=_DIGITS, interval=STEP_SECONDS)
    current = totp.timecode(now or utcnow())
    last = account.totp_last_step if account.totp_last_step is not None else -1
    for step in range(current - _WINDOW, current + _WINDOW + 1):
        if step > last and hmac.compare_digest(totp.generate_otp(step), code):
            account.totp_last_step = step
            return True
    return False


def _normalise_recovery(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def set_recovery_codes(account: Account, count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """Replace the account's recovery codes by ``count`` new ones; returns them, to be shown once."""
    codes = [
        "-".join(
            "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_GROUP_LEN))
            for _ in range(_RECOVERY_GROUPS)
        )
        for _ in range(count)
    ]
    account.recovery_codes = [hash_password(_normalise_recovery(c)) for c in codes]
    return codes


def use_recovery_code(account: Account, code: str) -> bool:
    """Whether ``code`` is one of the account's unused recovery codes; a matching code is crossed out."""
    typed = _normalise_recovery(code)
    if len(typed) != _RECOVERY_GROUPS * _RECOVERY_GROUP_LEN:
        return False
    for stored in account.recovery_codes:
        if verify_password(stored, typed):
            # A new list, not an in-place removal: SQLAlchemy's JSON column only sees a reassignment.
            account.recovery_codes = [h for h in account.recovery_codes if h != stored]
            return True
    return False
