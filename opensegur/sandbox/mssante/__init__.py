"""MSSanté operator sandbox: SMTP submission and IMAP access on loopback, DSN/MDN, fault injection."""

from __future__ import annotations

from opensegur.sandbox.mssante.admin import create_mssante_router
from opensegur.sandbox.mssante.operator import ANS_EXAMPLE_MAILBOXES, MssFault, MssOperator

__all__ = ["ANS_EXAMPLE_MAILBOXES", "MssFault", "MssOperator", "create_mssante_router"]
