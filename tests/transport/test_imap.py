"""IMAP transport and connector without a mail server: settings, unreachable or non-IMAP peers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from opensegur.connectors.mss_imap import ImapMailboxReader
from opensegur.flows.mssante_ports import MailUnavailableError
from opensegur.transport.imap import ImapSession, ImapSettings, ImapUnavailableError, _header_block
from tests.ports import free_port

BAL = "bal.cardio@ch-test.mssante.fr"


def test_plain_imap_is_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        ImapSettings("imap.mssante.fr", 143, "plain")
    assert ImapSettings("localhost", 143, "plain").security == "plain"


def test_client_key_needs_its_certificate() -> None:
    with pytest.raises(ValueError, match="certificate"):
        ImapSettings("imap.mssante.fr", 993, "tls", client_key=Path("/nonexistent.key"))


def test_header_block_keeps_the_blank_line_and_the_cap() -> None:
    raw = b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n\r\nmore"
    assert _header_block(raw, 1000) == b"From: a@b\r\nSubject: x\r\n\r\n"
    assert _header_block(b"From: a@b\nSubject: x\n\nbody", 1000) == b"From: a@b\nSubject: x\n\n"
    assert _header_block(raw, 5) == b"From:"
    assert _header_block(b"no separator at all", 7) == b"no sepa"


@pytest.fixture
def fake_peer() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP peer that answers each connection with the queued greeting (or nothing) and keeps it open."""
    greetings: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            if greetings:
                conn.sendall(greetings.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], greetings
    stop.set()
    thread.join(5)
    for conn in conns:
        conn.close()
    listener.close()


async def test_connection_refused_is_unavailable() -> None:
    reader = ImapMailboxReader("127.0.0.1", free_port(), security="plain", credentials={BAL: "x"}, timeout=2)
    with pytest.raises(MailUnavailableError, match="injoignable"):
        await reader.fetch_new(BAL, limit=10)


async def test_silent_server_times_out_as_unavailable(fake_peer: tuple[int, list[bytes]]) -> None:
    port, _ = fake_peer
    reader = ImapMailboxReader("127.0.0.1", port, security="plain", credentials={BAL: "x"}, timeout=0.5)
    with pytest.raises(MailUnavailableError, match="injoignable"):
        await asyncio.wait_for(reader.fetch_new(BAL, limit=10), 10)


async def test_a_non_imap_peer_is_unavailable(fake_peer: tuple[int, list[bytes]]) -> None:
    port, greetings = fake_peer
    greetings.append(b"220 smtp.ch-test.fr ESMTP ready\r\n")  # an SMTP server configured as IMAP by mistake
    session = ImapSession(ImapSettings("127.0.0.1", port, "plain", timeout=2), BAL, "x")
    with pytest.raises(ImapUnavailableError):
        await asyncio.to_thread(session.open)
    assert not session.is_open


async def test_closed_reader_refuses_work() -> None:
    reader = ImapMailboxReader("127.0.0.1", free_port(), security="plain", credentials={BAL: "x"})
    await reader.close()
    with pytest.raises(MailUnavailableError, match="arrêté"):
        await reader.fetch_new(BAL, limit=1)
    await reader.mark_done(BAL, [])  # nothing to mark: no server needed
