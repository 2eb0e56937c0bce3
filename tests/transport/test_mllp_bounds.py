"""What a careless or hostile sender cannot do to the MLLP listener: hold it with idle or trickling
connections, take every place, fill the memory with frames being read, or flood the log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from opensegur.logsafe import Throttled
from opensegur.transport.mllp import (
    MllpFramingError,
    MllpServer,
    ReceiveBudget,
    frame,
    read_frame,
    send_message,
)

pytestmark = pytest.mark.requirement("MLLP-BOUNDS")


MSG = b"MSH|^~\\&|DPI|CH|OPENSEGUR|CH|20260101120000||ADT^A01^ADT_A01|C1|P|2.5"


async def _echo(payload: bytes) -> bytes:
    return b"ACK:" + payload[:20]


async def _nak(err: MllpFramingError) -> bytes:
    return b"NAK:" + err.code.encode()


@asynccontextmanager
async def listening(**kw: object) -> AsyncIterator[MllpServer]:
    server = MllpServer(_echo, "127.0.0.1", 0, on_framing_error=_nak, **kw)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop(timeout=5)


async def _closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    async with asyncio.timeout(within):
        return await reader.read(1) == b""


async def test_an_idle_connection_is_closed_after_idle_timeout() -> None:
    async with listening(idle_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await _closed_by_peer(reader, 5)
        assert server.refused["inactive"] == 1
        writer.close()
        # A connection that keeps talking is not idle.
        assert await send_message("127.0.0.1", server.port, MSG) == b"ACK:" + MSG[:20]


async def test_a_frame_trickling_in_is_closed_after_frame_timeout() -> None:
    async with listening(frame_timeout=0.3) as server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A byte every 50 ms, never the end block: the listener gives up on the frame, not the sender.
        with contextlib.suppress(ConnectionError):
            writer.write(b"\x0bMSH|^~\\&|")
            while server.refused["inactive"] == 0 and loop.time() - started < 10:
                await asyncio.sleep(0.05)
                writer.write(b"x")
                await writer.drain()
        assert server.refused["inactive"] == 1
        writer.close()


async def test_connections_over_the_caps_are_closed_at_once_and_the_others_still_served() -> None:
    async with listening(max_connections=20, max_per_peer=8) as server:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
        await asyncio.sleep(0.1)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await _closed_by_peer(extra_reader, 5)
        assert server.refused["capacité"] == 1
        extra_writer.close()
        # One of the held connections is served as usual.
        reader, writer = held[0]
        writer.write(frame(MSG))
        await writer.drain()
        assert await read_frame(reader, 10_000) == b"ACK:" + MSG[:20]
        for _, w in held:
            w.close()
        await asyncio.sleep(0.1)
        # Places are given back when connections close.
        assert await send_message("127.0.0.1", server.port, MSG) == b"ACK:" + MSG[:20]


async def test_frames_beyond_the_receive_budget_get_a_nak_and_fit_again_later() -> None:
    size = 4 * 1024 * 1024
    async with listening(max_bytes=size, receive_budget=size) as server:
        first_reader, first = await asyncio.open_connection("127.0.0.1", server.port)
        # Holds most of the budget (all but the last MiB, which waits in the stream's own buffer), unfinished.
        first.write(b"\x0b" + b"A" * (size - 512 * 1024))
        await first.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while server._budget.free > size // 2 and loop.time() < deadline:  # the listener has read it
            await asyncio.sleep(0.02)
        reply = await send_message("127.0.0.1", server.port, MSG + b"B" * (size // 2), timeout=10)
        assert reply == b"NAK:MLLP_BUSY"
        first.write(b"\x1c\r")
        await first.drain()
        assert await read_frame(first_reader, size) == b"ACK:" + b"A" * 20
        first.close()
        # Budget given back: the same frame now goes through.
        assert await send_message("127.0.0.1", server.port, MSG + b"B" * (size // 2)) == b"ACK:" + MSG[:20]


async def test_an_oversized_frame_is_read_to_its_end_and_answered_with_a_nak() -> None:
    async with listening(max_bytes=1024 * 1024) as server:
        reply = await send_message("127.0.0.1", server.port, MSG + b"C" * 3 * 1024 * 1024, timeout=10)
        assert reply == b"NAK:MLLP_OVERSIZE"


async def test_the_receive_budget_is_given_back_on_every_path() -> None:
    budget = ReceiveBudget(10_000)
    reader = asyncio.StreamReader(limit=1024)
    reader.feed_data(b"\x0b" + b"x" * 5000)
    reader.feed_eof()
    with pytest.raises(MllpFramingError, match="MLLP_TRUNCATED"):
        await read_frame(reader, 100_000, budget=budget)
    assert budget.free == 10_000


async def test_a_thousand_refusals_write_a_handful_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    async with listening(allow_peer=lambda address: False) as server:
        for _ in range(1000):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await _closed_by_peer(reader, 5)
            writer.close()
        assert server.refused["adresse"] == 1000
    refusals = [r for r in caplog.records if "refusée" in r.getMessage()]
    assert 1 <= len(refusals) <= 2


def test_throttled_says_how_many_lines_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = Throttled(logging.getLogger("test.throttled"), every=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        for _ in range(500):
            log.log(logging.WARNING, "k", "refus")
        now[0] = 61
        log.log(logging.WARNING, "k", "refus")
        log.log(logging.WARNING, "other", "autre")
    assert [r.getMessage() for r in caplog.records] == [
        "refus",
        "refus (et 499 message(s) semblable(s) non journalisé(s) depuis 61 s)",
        "autre",
    ]
