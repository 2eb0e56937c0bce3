"""The refusals of the security package: each carries a French message that is safe to show the user."""

from __future__ import annotations

from opensegur.errors import OpenSegurError


class SecurityError(OpenSegurError):
    """Root of the package's refusals; ``message`` is French and reveals nothing an attacker could use."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LoginRefused(SecurityError):
    """A password or second factor refused, or too many attempts; the message never says whether the login exists."""
