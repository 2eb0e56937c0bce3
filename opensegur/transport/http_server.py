"""The platform's HTTP listener: uvicorn, with bounds uvicorn does not set by itself.

uvicorn (h11) arms its keep-alive timer only after a response: a connection that never completes a first request —
idle, or sending its headers a byte at a time — stays open for ever, and enough of them exhaust the process's
file descriptors. Here such a connection is closed ``header_timeout_s`` after it opened, and the number of open
connections is capped (beyond it uvicorn answers 503).

On a listener with client certificates (the DRIMbox's mutual TLS), the verified certificate's subject is handed to
the application as the ASGI TLS extension says (``scope["extensions"]["tls"]["client_cert_name"]``, RFC 4514),
which uvicorn does not do by itself.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BoundedH11Protocol", "ClientTls", "uvicorn_config"]


@dataclass(frozen=True)
class ClientTls:
    """A listener in TLS that demands a client certificate issued by one of ``client_ca``'s authorities."""

    cert: Path
    key: Path
    client_ca: Path


class _WithClientCertificate:
    """The application, told the subject of the certificate this connection's client presented."""

    def __init__(self, app: Any, name: str) -> None:
        self.app, self.name = app, name

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            extensions = {**scope.get("extensions", {}), "tls": {"client_cert_name": self.name}}
            scope = {**scope, "extensions": extensions}
        await self.app(scope, receive, send)


def _client_certificate_name(transport: asyncio.Transport) -> str | None:
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None


class BoundedH11Protocol(H11Protocol):
    header_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        name = _client_certificate_name(transport)
        if name is not None:
            self.app = _WithClientCertificate(self.app, name)
        self._first_request_deadline = self.loop.call_later(self.header_timeout_s, self._close_if_no_request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._first_request_deadline.cancel()
        super().connection_lost(exc)

    def _close_if_no_request(self) -> None:
        # Not re-armed by incoming bytes: a peer dribbling its headers gets no more time than an idle one.
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(
    app: Any, *, max_connections: int, header_timeout_s: float, tls: ClientTls | None = None
) -> uvicorn.Config:
    protocol = type("BoundedH11", (BoundedH11Protocol,), {"header_timeout_s": header_timeout_s})
    mutual: dict[str, Any] = {}
    if tls is not None:
        mutual = {
            "ssl_certfile": str(tls.cert),
            "ssl_keyfile": str(tls.key),
            "ssl_ca_certs": str(tls.client_ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
        }
    return uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        access_log=False,
        http=protocol,
        limit_concurrency=max_connections,
        **mutual,
    )
