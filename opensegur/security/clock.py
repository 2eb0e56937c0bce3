"""Datetimes read back from the database: SQLite returns them naive (SQLAlchemy drops the offset), PostgreSQL aware.

Every datetime the platform writes is UTC, so a naive one read back is UTC too.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
