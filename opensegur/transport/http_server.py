"""The platform's HTTP listener: uvicorn, with bounds uvicorn does not set by itself.

uvicorn (h11) arms its keep-alive timer only after a response: a connection that never completes a first request —
idle, or sending its headers a byte at a time — stays open for ever, and enough of them exhaust the process's
file descriptors. Here such a connection is closed ``header_timeout_s`` after it opened, and the number of open
connections is capped (beyond it uvicorn answers 503).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BoundedH11Protocol", "uvicorn_config"]


class BoundedH11Protocol(H11Protocol):
    header_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._first_request_deadline = self.loop.call_later(self.header_timeout_s, self._close_if_no_request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._first_request_deadline.cancel()
        super().connection_lost(exc)

    def _close_if_no_request(self) -> None:
        # Not re-armed by incoming bytes: a peer dribbling its headers gets no more time than an idle one.
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app: Any, *, max_connections: int, header_timeout_s: float) -> uvicorn.Config:
    protocol = type("BoundedH11", (BoundedH11Protocol,), {"header_timeout_s": header_timeout_s})
    return uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        access_log=False,
        http=protocol,
        limit_concurrency=max_connections,
    )
