"""Domain error for identity rules.

One exception type with a stable machine ``code`` (for logs, APIs, HL7 ACK/ERR mapping) and a French
``message`` that can be shown as-is to clinicians and identity-vigilance staff.
"""

from __future__ import annotations

from opensegur.errors import OpenSegurError


class IdentityError(OpenSegurError, ValueError):
    """An identity rule was violated.

    Subclassing ``ValueError`` keeps it catchable by generic input-validation code (pydantic validators,
    CLI argument parsing) without importing this package.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"IdentityError(code={self.code!r}, message={self.message!r}, field={self.field!r})"
