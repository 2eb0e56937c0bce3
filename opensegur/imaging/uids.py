"""What a DICOM UID looks like (PS3.5 §9.1): dot-separated numbers without leading zeros, under an ISO arc (0, 1
or 2), 64 characters at most — checked on what a report, a caller's Accept header or a URL names."""

from __future__ import annotations

import re

__all__ = ["UID_MAX", "UID_PATTERN", "is_uid", "required_uid"]

UID_PATTERN = r"^[0-2](\.(0|[1-9][0-9]*))+$"
UID_MAX = 64
_UID = re.compile(UID_PATTERN)


def is_uid(value: str) -> bool:
    return len(value) <= UID_MAX and _UID.match(value) is not None


def required_uid(value: object, what: str, error: type[Exception]) -> str:
    """A DICOM attribute's value as a UID; ``error("<what> absent ou invalide")`` when it is missing or malformed."""
    text = str(value or "")
    if not is_uid(text):
        raise error(f"{what} absent ou invalide")
    return text
