"""MLLP (HL7 Minimal Lower Layer Protocol) over asyncio: <VT> message <FS><CR>.

Framing decisions:
- CR / LF / spaces between frames are tolerated (many senders add a newline after <FS><CR>); any other byte
  where a <VT> is expected is MLLP_NO_START.
- An oversized frame is read at most ``max_bytes`` into memory; the rest is discarded in bounded chunks up to
  the next <FS><CR> before MLLP_OVERSIZE is raised. Draining keeps the stream in sync and lets the sender,
  which usually writes the whole frame before reading, receive a NAK instead of a connection reset. The server
  still closes the connection after any framing error (a peer that sent garbage is not trusted further).
- The server answers frames of one connection strictly in order and never cancels a running handler: stop()
  closes idle connections at once and waits for busy ones to send their ACK (the handler commits before it
  returns, so an ACK is only ever sent for committed work, and SIGTERM does not lose an accepted message).

Who may connect:
- ``allow_peer`` is asked about the peer's address at accept, before any byte is read or any TLS work is done:
  a refused peer is closed at once, logged (its address only) and counted in ``refused``.
- With ``ssl_context`` (see :func:`tls_server_context`) the connection is upgraded to TLS right after that check,
  and a peer whose handshake fails (no client certificate, one from another CA, not TLS at all) is closed,
  logged and counted the same way. The upgrade is started before the first ``await`` of the connection: the
  client's ClientHello must reach the TLS layer, not the plain stream reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from opensegur.errors import OpenSegurError
from opensegur.logsafe import Throttled, failure

__all__ = [
    "MllpFramingError",
    "MllpServer",
    "ReceiveBudget",
    "frame",
    "peer_address",
    "read_frame",
    "send_message",
    "tls_server_context",
]

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_INTERFRAME_WHITESPACE = b"\r\n \t"
_HEAD_BYTES = 4096  # what a framing error keeps of the frame, enough for an MSH to build a NAK
_STREAM_LIMIT = 1024 * 1024  # StreamReader buffer; frames larger than this are read in pieces
# A peer that opens a connection and never completes the handshake must not hold it for asyncio's default minute.
_TLS_HANDSHAKE_TIMEOUT_S = 15.0
# A DPI keeps its connection open between messages; one silent for this long reconnects when it has news.
DEFAULT_IDLE_TIMEOUT_S = 1800.0
# A started frame must arrive whole within this (10 MB at 1 Mbit/s takes 80 s).
DEFAULT_FRAME_TIMEOUT_S = 300.0
DEFAULT_MAX_CONNECTIONS = 500
# One host's share, so a sender stuck in a reconnect loop cannot take the places of the others.
DEFAULT_MAX_PER_PEER = 50
DEFAULT_RECEIVE_BUDGET = 128 * 1024 * 1024


class MllpFramingError(OpenSegurError):
    """``code`` is MLLP_NO_START, MLLP_TRUNCATED, MLLP_OVERSIZE or MLLP_BUSY (the listener's receive budget is
    spent: send again later); ``head`` the first bytes of the frame."""

    def __init__(self, code: str, detail: str, head: bytes = b"") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.head = head


def tls_server_context(cert: Path | str, key: Path | str, client_ca: Path | str) -> ssl.SSLContext:
    """Server side of MLLP over TLS: the listener's certificate, and a client certificate required from
    ``client_ca`` (the CA, or bundle of CAs, that issued the DPIs' certificates). TLS 1.2 at least."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_address(peername: object) -> str | None:
    """The IP address of a socket's peer name, IPv4-mapped IPv6 (a dual-stack listener) given as IPv4."""
    if not isinstance(peername, tuple) or not peername:
        return None
    try:
        address = ipaddress.ip_address(str(peername[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END_BLOCK


async def _skip_to_end_block(reader: asyncio.StreamReader) -> None:
    while True:
        try:
            await reader.readuntil(END_BLOCK)
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(max(exc.consumed, 1))
        except asyncio.IncompleteReadError:
            return


class ReceiveBudget:
    """Bytes all connections of a listener may hold in frames being read, together: without it, N peers each
    sending a frame just under ``max_bytes`` hold N × ``max_bytes`` of memory."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total

    def take(self, n: int) -> bool:
        if n > self.free:
            return False
        self.free -= n
        return True

    def give(self, n: int) -> None:
        self.free += n


async def _frame_start(reader: asyncio.StreamReader) -> bool:
    """Wait for a start block; False on clean EOF between frames."""
    while True:
        first = await reader.read(1)
        if not first:
            return False
        if first == START_BLOCK:
            return True
        if first not in _INTERFRAME_WHITESPACE:
            raise MllpFramingError("MLLP_NO_START", f"expected start block 0x0B, got {first!r}", first)


async def _frame_body(reader: asyncio.StreamReader, max_bytes: int, budget: ReceiveBudget | None) -> bytes:
    buffer = bytearray()
    held = 0
    try:
        while True:
            try:
                chunk = await reader.readuntil(END_BLOCK)
                last = True
            except asyncio.IncompleteReadError as exc:
                head = bytes(buffer[:_HEAD_BYTES]) + exc.partial[: max(0, _HEAD_BYTES - len(buffer))]
                raise MllpFramingError(
                    "MLLP_TRUNCATED", f"connection closed after {len(buffer) + len(exc.partial)} bytes", head
                ) from None
            except asyncio.LimitOverrunError as exc:
                # The stream buffer is full without a separator: take what is safe to take (it never
                # includes a partial separator) and keep looking.
                chunk = await reader.readexactly(max(exc.consumed, 1))
                last = False
            if budget is not None:
                if not budget.take(len(chunk)):
                    head = bytes(buffer[:_HEAD_BYTES]) + chunk[: max(0, _HEAD_BYTES - len(buffer))]
                    del buffer[:]
                    if not last:
                        await _skip_to_end_block(reader)
                    raise MllpFramingError(
                        "MLLP_BUSY", f"receive memory of the listener full ({budget.total} bytes)", head
                    )
                held += len(chunk)
            buffer += chunk
            if len(buffer) - (len(END_BLOCK) if last else 0) > max_bytes:
                head = bytes(buffer[:_HEAD_BYTES])
                del buffer[:]
                if not last:
                    await _skip_to_end_block(reader)
                raise MllpFramingError("MLLP_OVERSIZE", f"frame larger than {max_bytes} bytes", head)
            if last:
                return bytes(buffer[: -len(END_BLOCK)])
    finally:
        if budget is not None:
            budget.give(held)


async def read_frame(
    reader: asyncio.StreamReader,
    max_bytes: int,
    *,
    idle_timeout: float | None = None,
    frame_timeout: float | None = None,
    budget: ReceiveBudget | None = None,
) -> bytes | None:
    """Next message without framing; None on clean EOF between frames; MllpFramingError otherwise.

    ``idle_timeout`` bounds the wait for a frame to start, ``frame_timeout`` the time a started frame takes to
    arrive whole (a peer trickling one byte a minute holds a buffer and a task): both raise TimeoutError.
    """
    async with asyncio.timeout(idle_timeout):
        if not await _frame_start(reader):
            return None
    async with asyncio.timeout(frame_timeout):
        return await _frame_body(reader, max_bytes, budget)


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None]
    busy: bool = False
    peer: str | None = None  # counted in MllpServer._per_peer while set


class MllpServer:
    """``allow_peer(address)`` must answer without awaiting (see the module's notes); None accepts any peer."""

    def __init__(
        self,
        handler: Callable[[bytes], Awaitable[bytes]],
        host: str,
        port: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_framing_error: Callable[[MllpFramingError], Awaitable[bytes | None]] | None = None,
        *,
        allow_peer: Callable[[str], bool] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_peer: int = DEFAULT_MAX_PER_PEER,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT_S,
        receive_budget: int = DEFAULT_RECEIVE_BUDGET,
    ) -> None:
        self._handler = handler
        self._host = host
        self._requested_port = port
        self._max_bytes = max_bytes
        self._on_framing_error = on_framing_error
        self._allow_peer = allow_peer
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._max_per_peer = max_per_peer
        self._per_peer: Counter[str] = Counter()
        self._idle_timeout = idle_timeout
        self._frame_timeout = frame_timeout
        self._budget = ReceiveBudget(max(receive_budget, max_bytes))
        self._log = Throttled(logger)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        # Connections closed before reading a message, by reason ("adresse", "tls", "capacité"), and idle ones
        # closed after idle_timeout ("inactive"): for metrics and tests.
        self.refused: Counter[str] = Counter()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._stopping = False
        self._server = await asyncio.start_server(
            self._on_connect, self._host, self._requested_port, limit=_STREAM_LIMIT
        )

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, close idle connections, wait for in-flight handlers to send their ACK.

        ``timeout`` bounds the wait; after it, the remaining connections are cancelled (their sender gets no
        ACK and will resend, which is the safe side).
        """
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if not conn.busy:
                conn.task.cancel()
        tasks = [conn.task for conn in self._connections]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(task)
        self._connections.add(conn)
        try:
            # No await before the TLS upgrade starts (see the module's notes).
            if not self._stopping and self._admit(conn, writer) and await self._secure(writer):
                await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            pass  # idle connection closed by stop(): nothing was being processed
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self._log.log(logging.INFO, "disconnect", "MLLP : émetteur déconnecté (%s)", type(exc).__name__)
        except Exception as exc:
            # Handler crash: no ACK at all, so the sender resends instead of believing it was accepted.
            logger.error("MLLP handler failed; closing connection without ACK: %s", failure(exc))
        finally:
            self._connections.discard(conn)
            if conn.peer is not None:
                self._per_peer[conn.peer] -= 1
                if not self._per_peer[conn.peer]:
                    del self._per_peer[conn.peer]
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    def _admit(self, conn: _Connection, writer: asyncio.StreamWriter) -> bool:
        address = peer_address(writer.get_extra_info("peername"))
        if len(self._connections) > self._max_connections:
            # Closed at once, so a flood of idle connections cannot use up the process's file descriptors.
            self.refused["capacité"] += 1
            self._log.log(
                logging.WARNING,
                "capacity",
                "MLLP : connexion refusée, %d connexions déjà ouvertes (mllp_max_connections)",
                self._max_connections,
            )
            return False
        if address is not None and self._per_peer[address] >= self._max_per_peer:
            self.refused["capacité"] += 1
            self._log.log(
                logging.WARNING,
                "peer-capacity",
                "MLLP : connexion de %s refusée, %d connexions déjà ouvertes depuis cette adresse",
                address,
                self._max_per_peer,
            )
            return False
        if self._allow_peer is None or (address is not None and self._allow_peer(address)):
            if address is not None:
                conn.peer = address
                self._per_peer[address] += 1
            return True
        self.refused["adresse"] += 1
        self._log.log(
            logging.WARNING,
            "address",
            "MLLP : connexion de %s refusée, adresse absente des émetteurs autorisés (senders de dpis.toml)",
            address or "adresse inconnue",
        )
        return False

    async def _secure(self, writer: asyncio.StreamWriter) -> bool:
        if self._ssl is None:
            return True
        try:
            await writer.start_tls(self._ssl, ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT_S)
        except OSError as exc:  # ssl.SSLError, a reset, or the handshake timeout
            self.refused["tls"] += 1
            self._log.log(
                logging.WARNING,
                "tls",
                "MLLP : connexion TLS de %s refusée (%s)",
                peer_address(writer.get_extra_info("peername")) or "adresse inconnue",
                getattr(exc, "reason", None) or type(exc).__name__,
            )
            return False
        return True

    async def _serve(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not self._stopping:
            try:
                payload = await read_frame(
                    reader,
                    self._max_bytes,
                    idle_timeout=self._idle_timeout,
                    frame_timeout=self._frame_timeout,
                    budget=self._budget,
                )
            except TimeoutError:
                # Idle past idle_timeout, or a frame that did not arrive whole within frame_timeout: the sender
                # reconnects when it has something to send, and a half-sent frame was not acknowledged.
                self.refused["inactive"] += 1
                self._log.log(logging.INFO, "idle", "MLLP : connexion inactive ou trop lente fermée")
                return
            except MllpFramingError as err:
                self._log.log(
                    logging.WARNING, err.code, "MLLP : erreur de trame %s (%s)", err.code, err.detail
                )
                if self._on_framing_error is not None:
                    conn.busy = True
                    reply = await self._on_framing_error(err)
                    if reply is not None:
                        writer.write(frame(reply))
                        await writer.drain()
                return
            if payload is None:
                return
            # From here until the ACK is flushed stop() must not cancel us.
            conn.busy = True
            reply = await self._handler(payload)
            writer.write(frame(reply))
            await writer.drain()
            conn.busy = False


async def send_message(
    host: str,
    port: int,
    payload: bytes,
    timeout: float = 10.0,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """Send one framed message and return the framed reply's payload (asyncio.TimeoutError on timeout).
    ``ssl_context``: MLLP over TLS (with the client certificate loaded in it when the listener asks for one)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=_STREAM_LIMIT, ssl=ssl_context)
        try:
            writer.write(frame(payload))
            await writer.drain()
            reply = await read_frame(reader, max_bytes)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    if reply is None:
        raise ConnectionError("MLLP peer closed the connection without replying")
    return reply
