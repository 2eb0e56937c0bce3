"""DpiSender over MLLP: one HL7 v2 message to the DPI, its ACK back (``transport/mllp.send_message``).

The ACK is returned whatever its code (AA/AE/AR): reading MSA and ERR belongs to the flow. Only "no ACK at all"
(connection refused or lost, timeout, broken framing) is an error, and a retryable one: the DPI did not take it.
"""

from __future__ import annotations

from opensegur.errors import RetryLater
from opensegur.transport.mllp import DEFAULT_MAX_BYTES, MllpFramingError, send_message

__all__ = ["MllpDpiSender"]


class MllpDpiSender:
    def __init__(
        self, host: str, port: int, *, timeout: float = 30.0, max_ack_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_ack_bytes = max_ack_bytes

    async def send(self, message: bytes) -> bytes:
        try:
            return await send_message(
                self.host, self.port, message, timeout=self.timeout, max_bytes=self.max_ack_bytes
            )
        except (OSError, TimeoutError, MllpFramingError) as exc:
            raise RetryLater(f"DPI injoignable ({self.host}:{self.port}) : {exc!r}") from exc
