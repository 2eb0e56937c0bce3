"""French formatting for the clinical pages and their APIs: Paris wall-clock dates, decimal commas, the age of a
mail, and a code given with its French label (:class:`StatusOut`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel

__all__ = ["StatusOut", "age_fr", "aware", "number_fr", "when_fr"]

_PARIS = ZoneInfo("Europe/Paris")
_DECIMAL_POINT_RE = re.compile(r"(?<=\d)\.(?=\d)")


def aware(value: datetime | None) -> datetime | None:
    # SQLite gives back naive datetimes; the store writes UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def when_fr(value: datetime | None, with_time: bool = True) -> str:
    moment = aware(value)
    if moment is None:
        return "—"
    return moment.astimezone(_PARIS).strftime("%d/%m/%Y %H:%M" if with_time else "%d/%m/%Y")


def number_fr(text: str | None) -> str:
    """Decimal comma, as a French reader expects ("0,270 – 4,200")."""
    return _DECIMAL_POINT_RE.sub(",", text) if text else ""


def age_fr(received: datetime | None, now: datetime) -> str:
    moment = aware(received)
    if moment is None:
        return "—"
    hours = int((now - moment).total_seconds() // 3600)
    if hours < 1:
        return "moins d'une heure"
    if hours < 48:
        return f"{hours} h"
    return f"{hours // 24} j"


# A code and its French label: how the triage, documents and results APIs all show a status.
class StatusOut(BaseModel):
    code: str
    label: str
