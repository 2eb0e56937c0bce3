import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import hl7
import pytest

from opensegur.transactions.hl7v2 import Hl7Error, ack_code_for, build_ack, build_nak_for_unparseable, parse
from opensegur.transactions.pam_fr import parse_pam
from opensegur.transport.mllp import MllpFramingError, MllpServer, frame, read_frame, send_message

EXAMPLES = sorted(Path("/work/shared/hl7v2-examples/SGL").glob("*.er7")) + sorted(
    Path("/work/shared/hl7v2-examples/Vague 2/Consentement_DMP_PAMFR").glob("*.er7")
)


def reader_with(data: bytes, *, eof: bool = True, limit: int = 2**16) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


# ------------------------------------------------------------------------------------------- read_frame


async def test_frame_wraps_payload() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"


async def test_read_frame_returns_payload_then_none_on_clean_eof() -> None:
    reader = reader_with(frame(b"one") + frame(b"two"))
    assert await read_frame(reader, 100) == b"one"
    assert await read_frame(reader, 100) == b"two"
    assert await read_frame(reader, 100) is None


async def test_read_frame_empty_stream_is_clean_eof() -> None:
    assert await read_frame(reader_with(b""), 100) is None


async def test_read_frame_tolerates_newlines_between_frames() -> None:
    reader = reader_with(b"\r\n" + frame(b"one") + b"\n" + frame(b"two") + b"\r\n")
    assert await read_frame(reader, 100) == b"one"
    assert await read_frame(reader, 100) == b"two"
    assert await read_frame(reader, 100) is None


async def test_read_frame_keeps_embedded_cr_and_lone_fs() -> None:
    payload = b"MSH|a\rPID|\x1cnot-the-end\r"
    assert await read_frame(reader_with(frame(payload)), 1000) == payload


async def test_read_frame_garbage_before_start_block() -> None:
    with pytest.raises(MllpFramingError) as info:
        await read_frame(reader_with(b"MSH|^~\\&|no framing\x1c\r"), 100)
    assert info.value.code == "MLLP_NO_START"


async def test_read_frame_truncated_frame() -> None:
    with pytest.raises(MllpFramingError) as info:
        await read_frame(reader_with(b"\x0bMSH|^~\\&|GAM|CHU"), 100)
    assert info.value.code == "MLLP_TRUNCATED"
    assert info.value.head == b"MSH|^~\\&|GAM|CHU"


async def test_read_frame_truncated_after_fs_without_cr() -> None:
    with pytest.raises(MllpFramingError) as info:
        await read_frame(reader_with(b"\x0bMSH|x\x1c"), 100)
    assert info.value.code == "MLLP_TRUNCATED"


async def test_read_frame_start_block_only() -> None:
    with pytest.raises(MllpFramingError) as info:
        await read_frame(reader_with(b"\x0b"), 100)
    assert info.value.code == "MLLP_TRUNCATED"


async def test_read_frame_oversize_small_frame_is_drained() -> None:
    reader = reader_with(frame(b"x" * 200) + frame(b"next"))
    with pytest.raises(MllpFramingError) as info:
        await read_frame(reader, 100)
    assert info.value.code == "MLLP_OVERSIZE"
    # The stream is still in sync: the following frame is readable.
    assert await read_frame(reader, 100) == b"next"


async def test_read_frame_oversize_larger_than_stream_buffer_is_bounded_and_drained() -> None:
    big = b"MSH|" + b"y" * 300_000
    reader = reader_with(frame(big) + frame(b"next"), limit=1024)
    with pytest.raises(MllpFramingError) as info:
        await read_frame(reader, 10_000)
    assert info.value.code == "MLLP_OVERSIZE"
    assert info.value.head.startswith(b"MSH|")
    assert len(info.value.head) <= 4096
    assert await read_frame(reader, 10_000) == b"next"


async def test_read_frame_stops_buffering_at_limit_on_endless_frame() -> None:
    # No end block ever arrives and the stream stays open: the reader must not accumulate it all.
    reader = asyncio.StreamReader(limit=1024)
    reader.feed_data(b"\x0b" + b"z" * 50_000)
    task = asyncio.create_task(read_frame(reader, 4_000))
    await asyncio.sleep(0.05)
    assert not task.done()
    assert len(reader._buffer) <= 1024  # type: ignore[attr-defined]  # internal buffer is the point here
    reader.feed_eof()
    with pytest.raises(MllpFramingError) as info:
        await task
    assert info.value.code == "MLLP_OVERSIZE"


async def test_read_frame_large_frame_within_limit() -> None:
    big = b"OBX|" + b"A" * 200_000
    assert await read_frame(reader_with(frame(big), limit=1024), 300_000) == big


# ------------------------------------------------------------------------------------------- server


async def echo_ack(payload: bytes) -> bytes:
    return b"ACK:" + payload[:20]


Factory = Callable[..., Awaitable[MllpServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[Factory]:
    servers: list[MllpServer] = []

    async def factory(
        handler: Callable[[bytes], Awaitable[bytes]] = echo_ack, **kwargs: object
    ) -> MllpServer:
        server = MllpServer(handler, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop(timeout=5)


async def test_server_port_zero_gets_real_port(make_server: Factory) -> None:
    server = await make_server()
    assert server.port > 0


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
async def test_server_receives_example_files(make_server: Factory, path: Path) -> None:
    received: list[bytes] = []

    async def handler(payload: bytes) -> bytes:
        received.append(payload)
        return b"MSA|AA"

    server = await make_server(handler)
    content = path.read_bytes()
    assert await send_message("127.0.0.1", server.port, content) == b"MSA|AA"
    assert received == [content]


async def test_two_messages_on_one_connection_answered_in_order(make_server: Factory) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(frame(b"first") + frame(b"second"))
    await writer.drain()
    assert await read_frame(reader, 1000) == b"ACK:first"
    assert await read_frame(reader, 1000) == b"ACK:second"
    writer.close()
    await writer.wait_closed()


async def test_concurrent_connections(make_server: Factory) -> None:
    active = 0
    peak = 0

    async def slow(payload: bytes) -> bytes:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return b"ACK:" + payload

    server = await make_server(slow)
    replies = await asyncio.gather(
        *(send_message("127.0.0.1", server.port, f"m{i}".encode()) for i in range(10))
    )
    assert replies == [f"ACK:m{i}".encode() for i in range(10)]
    assert peak > 1  # connections are served in parallel


async def _framing_error_reply(
    make_server: Factory, raw: bytes, shutdown_write: bool = False, **kwargs: object
) -> tuple[list[MllpFramingError], bytes]:
    errors: list[MllpFramingError] = []

    async def on_error(err: MllpFramingError) -> bytes | None:
        errors.append(err)
        return b"NAK:" + err.code.encode()

    server = await make_server(on_framing_error=on_error, **kwargs)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw)
    await writer.drain()
    if shutdown_write:
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 5)  # read() returns at EOF: proves the server closed
    writer.close()
    return errors, reply


async def test_server_no_start_block_gets_nak_and_close(make_server: Factory) -> None:
    errors, reply = await _framing_error_reply(make_server, b"MSH|^~\\&|GAM\x1c\r")
    assert [e.code for e in errors] == ["MLLP_NO_START"]
    assert reply == frame(b"NAK:MLLP_NO_START")


async def test_server_truncated_frame_gets_nak_and_close(make_server: Factory) -> None:
    errors, reply = await _framing_error_reply(make_server, b"\x0bMSH|^~\\&|GAM", shutdown_write=True)
    assert [e.code for e in errors] == ["MLLP_TRUNCATED"]
    assert errors[0].head == b"MSH|^~\\&|GAM"
    assert reply == frame(b"NAK:MLLP_TRUNCATED")


async def test_server_oversize_frame_gets_nak_and_close(make_server: Factory) -> None:
    errors, reply = await _framing_error_reply(make_server, frame(b"MSH|" + b"x" * 5000), max_bytes=1000)
    assert [e.code for e in errors] == ["MLLP_OVERSIZE"]
    assert reply == frame(b"NAK:MLLP_OVERSIZE")


async def test_server_framing_error_without_callback_just_closes(make_server: Factory) -> None:
    server = await make_server()
    with pytest.raises(ConnectionError):
        await _send_raw(server.port, b"garbage")


async def _send_raw(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    if not data:
        raise ConnectionError("closed without reply")
    return data


async def test_handler_exception_closes_without_ack(make_server: Factory) -> None:
    async def broken(payload: bytes) -> bytes:
        raise RuntimeError("database down")

    server = await make_server(broken)
    with pytest.raises(ConnectionError):
        await send_message("127.0.0.1", server.port, b"MSH|x", timeout=5)


async def test_stop_waits_for_in_flight_handler(make_server: Factory) -> None:
    started = asyncio.Event()
    committed: list[bytes] = []

    async def slow_commit(payload: bytes) -> bytes:
        started.set()
        await asyncio.sleep(0.3)
        committed.append(payload)
        return b"ACK-after-commit"

    server = await make_server(slow_commit)
    port = server.port
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    client = asyncio.create_task(send_message("127.0.0.1", port, b"MSH|slow", timeout=5))
    await started.wait()
    await server.stop()
    # stop() returned only after the handler committed and its ACK was written.
    assert committed == [b"MSH|slow"]
    assert await client == b"ACK-after-commit"
    # The idle connection was closed, and no new connection is accepted.
    assert await asyncio.wait_for(idle_reader.read(), 2) == b""
    idle_writer.close()
    with pytest.raises(OSError):
        await send_message("127.0.0.1", port, b"MSH|late", timeout=2)


async def test_stop_timeout_cancels_stuck_handler(make_server: Factory) -> None:
    started = asyncio.Event()

    async def stuck(payload: bytes) -> bytes:
        started.set()
        await asyncio.sleep(30)
        return b"never"

    server = await make_server(stuck)
    client = asyncio.create_task(send_message("127.0.0.1", server.port, b"MSH|x", timeout=5))
    await started.wait()
    await asyncio.wait_for(server.stop(timeout=0.1), 2)
    with pytest.raises(ConnectionError):
        await client


async def test_send_message_times_out() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    raw_server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = raw_server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await send_message("127.0.0.1", port, b"MSH|x", timeout=0.2)
    finally:
        raw_server.close()


async def test_start_twice_is_an_error(make_server: Factory) -> None:
    server = await make_server()
    with pytest.raises(RuntimeError):
        await server.start()


# ------------------------------------------------------------------------------------------- end to end


async def pam_handler(payload: bytes) -> bytes:
    try:
        message, header = parse(payload)
    except Hl7Error as err:
        return build_nak_for_unparseable(payload, err)
    try:
        parse_pam(message, header)
    except Hl7Error as err:
        return build_ack(header, ack_code_for([err]), [err])
    return build_ack(header, "AA")


async def test_end_to_end_pam_over_mllp(make_server: Factory) -> None:
    async def on_error(err: MllpFramingError) -> bytes:
        return build_nak_for_unparseable(err.head, Hl7Error("100", "Trame MLLP invalide", reject=True))

    server = await make_server(pam_handler, on_framing_error=on_error, max_bytes=100_000)
    admission = Path("/work/shared/hl7v2-examples/SGL/admission.er7").read_bytes()
    ack = hl7.parse((await send_message("127.0.0.1", server.port, admission)).decode())
    assert (str(ack.segment("MSA")(1)), str(ack.segment("MSA")(2))) == ("AA", "3975")

    bad_sex = admission.replace(b"|19790328|F|", b"|19790328|X|")
    ack = hl7.parse((await send_message("127.0.0.1", server.port, bad_sex)).decode())
    assert str(ack.segment("MSA")(1)) == "AE"
    assert str(ack.segment("ERR")(2)) == "PID^1^8"

    # Oversized frame: the NAK still names the original control id, read from the frame head.
    huge = admission + b"\rNTE|1||" + b"x" * 200_000
    ack = hl7.parse((await send_message("127.0.0.1", server.port, huge)).decode())
    assert (str(ack.segment("MSA")(1)), str(ack.segment("MSA")(2))) == ("AR", "3975")
