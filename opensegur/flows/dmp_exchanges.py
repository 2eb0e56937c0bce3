"""What a call to the DMP leaves and how it fails, shared by the feed (ITI-41, ITI-57) and the consultation
(TD0.2, ITI-18, ITI-43): each call's record for the flow view, and the two failures — unreachable (retry later)
and refused (a retry gets the same answer)."""

from __future__ import annotations

from dataclasses import dataclass

from opensegur.errors import OpenSegurError, RetryLater

__all__ = ["DmpRejectedError", "DmpUnavailableError", "ExchangeRecord"]


@dataclass
class ExchangeRecord:
    """What one call to a remote service sent and received, for the flow view."""

    transaction: str
    endpoint: str
    request: bytes | None
    response: bytes | None
    http_status: int | None
    duration_ms: int


class DmpUnavailableError(RetryLater):
    """Timeout, connection refused, HTTP 5xx without a registry answer: retry later."""

    def __init__(
        self, message: str, exchanges: list[ExchangeRecord] | None = None, *, outage: bool = False
    ) -> None:
        super().__init__(message, outage=outage)
        self.exchanges = exchanges or []


class DmpRejectedError(OpenSegurError):
    """The DMP answered with XDS errors: a retry would get the same answer."""

    def __init__(self, code: str, message: str, exchanges: list[ExchangeRecord] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.exchanges = exchanges or []
