"""Who is acting: a person with a login session, or a system account with a bearer token.

The acting user comes from the session or the token only (never from a header the caller chooses); its fields
go into every audit entry it causes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from opensegur.security.matrix import Assignment


@dataclass(frozen=True)
class Actor:
    kind: Literal["person", "system"]
    name: str  # the account's login or the token's name: what the audit trail's ``actor`` column holds
    display_name: str
    assignments: tuple[Assignment, ...]
    strong: bool = False
    account_id: int | None = None
    token_id: int | None = None
    session_id: int | None = None
    rpps: str | None = None
    csrf_token: str | None = None
    address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def session_ref(self) -> str | None:
        if self.session_id is not None:
            return f"session:{self.session_id}"
        if self.token_id is not None:
            return f"token:{self.token_id}"
        return None

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.role for a in self.assignments))

    def audit_fields(self) -> dict[str, Any]:
        """The columns of ``AuditEvent`` that say who and from where."""
        return {
            "actor": self.name,
            "account_id": self.account_id,
            "role": ",".join(self.roles)[:64] or None,
            "rpps": self.rpps,
            "address": self.address,
            "session_ref": self.session_ref,
        }
