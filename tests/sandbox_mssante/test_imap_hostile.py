"""Hostile or broken IMAP clients get BAD/NO answers and never stop the server for the others."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from opensegur.sandbox.mssante import MssOperator
from tests.sandbox_mssante.helpers import DOCTOR, DPI, PASSWORD, imap, mail


class RawImap:
    """A byte-level IMAP client, to send what no library would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, op: MssOperator) -> RawImap:
        reader, writer = await asyncio.open_connection(op.host, op.imap_port)
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting.startswith(b"* OK ")
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until(self, tag: bytes) -> list[bytes]:
        """Lines up to the one tagged ``tag`` (or a BYE)."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 5)
            assert line, f"connection closed, got {lines!r}"
            lines.append(line)
            if line.startswith(tag + b" ") or line.startswith(b"* BYE"):
                return lines

    async def command(self, tag: bytes, text: bytes) -> list[bytes]:
        await self.send(tag + b" " + text + b"\r\n")
        return await self.until(tag)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def login(client: RawImap, address: str = DPI) -> None:
    [*_, ok] = await client.command(b"L1", b"LOGIN " + address.encode() + b" " + PASSWORD.encode())
    assert ok.startswith(b"L1 OK")


async def test_commands_before_login_are_refused(operator: MssOperator) -> None:
    client = await RawImap.connect(operator)
    for tag, text in ((b"a1", b"SELECT INBOX"), (b"a2", b"FETCH 1:* (BODY[])"), (b"a3", b'LIST "" *')):
        [answer] = await client.command(tag, text)
        assert answer.startswith(tag + b" BAD ")
    [answer] = await client.command(b"a4", b"LOGIN dpi@hopitala.mssante.fr faux")
    assert answer.startswith(b"a4 NO [AUTHENTICATIONFAILED]")
    plain = base64.b64encode(f"\x00{DPI}\x00faux".encode())
    [answer] = await client.command(b"a5", b"AUTHENTICATE PLAIN " + plain)
    assert answer.startswith(b"a5 NO [AUTHENTICATIONFAILED]")
    [*_, answer] = await client.command(b"a6", b"CAPABILITY")
    assert answer.startswith(b"a6 OK")
    await client.close()


async def test_overlong_line_is_answered_and_the_session_goes_on(operator: MssOperator) -> None:
    client = await RawImap.connect(operator)
    [answer] = await client.command(b"x1", b"NOOP " + b"A" * 200_000)
    assert answer.startswith(b"x1 BAD Ligne trop longue")
    await login(client)
    [*_, answer] = await client.command(b"x2", b"SELECT INBOX")
    assert answer.startswith(b"x2 OK [READ-WRITE]")
    await client.close()


async def test_huge_literal_announcements(operator: MssOperator) -> None:
    client = await RawImap.connect(operator)
    # Synchronising literal: refused before the client sends anything, the session goes on.
    [answer] = await client.command(b"l1", b"LOGIN {999999999}")
    assert answer.startswith(b"l1 BAD [TOOBIG]")
    await login(client)

    # Non-synchronising literal (LITERAL+): the bytes are coming anyway, so the server says BYE and hangs up.
    await client.send(b"l2 LOGIN {999999999+}\r\n")
    lines = await client.until(b"l2")
    assert lines[-1].startswith(b"* BYE [TOOBIG]")
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
    await client.close()

    # A small literal is fine.
    other = await RawImap.connect(operator)
    await other.send(b"l3 LOGIN {%d}\r\n" % len(DPI))
    assert (await asyncio.wait_for(other.reader.readline(), 5)).startswith(b"+ ")
    await other.send(DPI.encode() + b" " + PASSWORD.encode() + b"\r\n")
    assert (await other.until(b"l3"))[-1].startswith(b"l3 OK")
    await other.close()


async def test_garbage_gets_bad_and_the_server_still_serves_others(operator: MssOperator) -> None:
    await operator.deliver(DPI, mail(DOCTOR, [DPI]).as_bytes())
    client = await RawImap.connect(operator)
    await login(client)
    [*_, selected] = await client.command(b"g0", b"SELECT INBOX")
    assert selected.startswith(b"g0 OK")
    for tag, text in (
        (b"g1", b"FETCH 1 (BODY[]"),
        (b"g2", b"FETCH 1:x FLAGS"),
        (b"g3", b"FETCH 1 (BODYSTRUCTURE)"),
        (b"g4", b"SEARCH FROBNICATE"),
        (b"g5", b"STORE 1 +FLAGS (\\Bogus)"),
        (b"g6", b"UID WHATEVER 1"),
        (b"g7", b'SELECT "unterminated'),
        (b"g8", b"\x00\xff\xfe garbage \x01"),
        (b"g9", b"FETCH 0 FLAGS"),
    ):
        lines = await client.command(tag, text)
        assert lines[-1].startswith(tag + b" BAD "), (text, lines)
    await client.send(b"\x00\xff(((\r\n")
    assert (await asyncio.wait_for(client.reader.readline(), 5)).startswith(b"* BAD")
    [answer] = await client.command(b"g10", b"SELECT Inexistant")
    assert answer.startswith(b"g10 NO [NONEXISTENT]")
    [answer] = await client.command(b"g11", b"COPY 1 Inexistant")
    assert answer.startswith(b"g11 BAD") or answer.startswith(b"g11 NO")

    def normal_client() -> list[int]:
        with imap(operator, DPI) as c:
            c.select_folder("INBOX")
            return list(c.search(["ALL"]))

    assert await asyncio.to_thread(normal_client) == [1]
    await client.close()


async def test_a_client_that_keeps_erring_is_disconnected(operator: MssOperator) -> None:
    client = await RawImap.connect(operator)
    for i in range(19):
        [answer] = await client.command(b"e%d" % i, b"NONSENSE")
        assert b" BAD " in answer
    [answer] = await client.command(b"e19", b"NONSENSE")
    assert answer.startswith(b"e19 BAD")
    assert (await asyncio.wait_for(client.reader.readline(), 5)).startswith(b"* BYE")
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
    await client.close()


async def test_stop_closes_the_open_connections(tmp_path: Path) -> None:
    op = MssOperator(tmp_path, [DPI], PASSWORD)
    await op.start()
    imap_client = await RawImap.connect(op)
    await login(imap_client)
    smtp_reader, smtp_writer = await asyncio.open_connection(op.host, op.smtp_port)
    assert (await asyncio.wait_for(smtp_reader.readline(), 5)).startswith(b"220 ")
    await asyncio.wait_for(op.stop(), 10)
    assert await asyncio.wait_for(imap_client.reader.read(), 5) == b""
    assert await asyncio.wait_for(smtp_reader.read(), 5) == b""
    smtp_writer.close()
    await imap_client.close()
