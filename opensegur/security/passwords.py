"""Password hashes: argon2id through argon2-cffi, with the library's current recommended parameters.

A hash made with older parameters still verifies and is upgraded at the next successful login
(``needs_rehash``). Verifying against an unknown login spends the same time as against a real one, so response
times do not reveal which logins exist.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["hash_password", "needs_rehash", "verify_password"]

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # Made once per process with the same parameters as real hashes: verifying against it costs the same time.
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; with no hash (unknown login, no local password) a dummy verification runs."""
    try:
        return _hasher.verify(stored_hash or _dummy_hash(), password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether the hash was made with other parameters than today's: rehash it after a successful login."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
