"""What a careless or hostile sender does to the running platform, and what still works after it: a CDA built
to cost minutes of validation, thousands of idle connections on MLLP and HTTP, a frame larger than the listener
takes. Each is answered or dropped, and the next honest message goes through within its usual time."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from opensegur.server import Runtime
from opensegur.transport.mllp import send_message
from tests.dmp import helpers
from tests.dmp.helpers import (
    DpiListener,
    cda_of,
    entries_for,
    mdm,
    new_number,
    running_platform,
    send_raw,
    uid,
    wait_for,
    wait_status,
    wait_zam,
)

schematron_cache = helpers.schematron_cache


@pytest.fixture
async def platform(tmp_path: Path, schematron_cache: Path) -> AsyncIterator[tuple[Runtime, DpiListener]]:
    async with running_platform(tmp_path, schematron_cache, mllp_max_bytes=2 * 1024 * 1024) as pair:
        yield pair


async def test_after_a_100000_element_cda_the_next_document_reaches_the_dmp_within_a_minute(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, dpi = platform
    hostile, honest = new_number(), new_number()
    bloated = cda_of(mdm("initial", hostile)).replace(b"<component>", b"<component>" + b"<x/>" * 100_000, 1)
    assert len(bloated) > 400_000
    sent = await send_raw(rt, mdm("initial", hostile, cda=bloated))
    assert sent.code == "AA", sent.ack  # committed: the document is kept, then refused with its reason
    started = time.monotonic()
    await send_raw(rt, mdm("initial", honest))

    async def delivered() -> bool:
        return bool(await entries_for(rt, uid(honest)))

    await wait_for(delivered, timeout=60)
    assert time.monotonic() - started < 60
    refused = await wait_status(rt, uid(hostile), {"rejected"})
    assert [f["code"] for f in refused.findings if f["severity"] == "blocking"] == ["CDA_TOO_MANY_ELEMENTS"]
    [zam] = await wait_zam(dpi, sent.cid)
    assert not zam.status.success and [e.code for e in zam.status.errors] == ["CDA_TOO_MANY_ELEMENTS"]
    assert await entries_for(rt, uid(hostile)) == []


def _room_for(connections: int) -> int:
    """As many idle connections as the descriptors allow (each is two: the client's and the server's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(200, min(connections, (soft - 1000) // 4))


async def test_mllp_and_http_answer_while_thousands_of_idle_connections_are_held(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, _dpi = platform
    count = _room_for(2000)
    held: list[asyncio.StreamWriter] = []
    mllp_readers: list[asyncio.StreamReader] = []
    try:
        for _ in range(count):
            # Another host than the DPI's: the demo's dpis.toml declares 127.0.0.1 as its only sender.
            r, w = await asyncio.open_connection("127.0.0.1", rt.mllp_port, local_addr=("127.0.0.2", 0))
            mllp_readers.append(r)
            held.append(w)
            _, w = await asyncio.open_connection("127.0.0.1", rt.http_port)
            held.append(w)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        sent = await send_raw(rt, mdm("initial", new_number()))
        assert sent.code == "AA", sent.ack
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", timeout=10) as http:
            health = await http.get("/healthz")
        assert health.status_code == 200
        assert time.monotonic() - started < 10
        # The idle MLLP connections of a host no DPI declares were closed at once, not held (the caps on
        # connections per host and in all are tested on the listener itself, tests/transport).
        closed = 0
        for r in mllp_readers:
            with contextlib.suppress(TimeoutError):
                closed += await asyncio.wait_for(r.read(1), 0.01) == b""
        assert closed == count
    finally:
        for w in held:
            w.close()


async def test_a_frame_over_the_limit_gets_an_ar_naming_the_cause(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, _dpi = platform
    n = new_number()
    huge = cda_of(mdm("initial", n)).replace(
        b"</ClinicalDocument>", b"<!--" + b"z" * 3_000_000 + b"-->" + b"</ClinicalDocument>"
    )
    reply = await send_message("127.0.0.1", rt.mllp_port, mdm("initial", n, cda=huge), timeout=60)
    text = reply.decode("utf-8", "replace")
    assert "MSA|AR|" in text and "ERR|" in text and "207" in text
    assert "Message trop volumineux" in text
    # The listener still takes the next message, on a new connection.
    assert (await send_raw(rt, mdm("initial", new_number()))).code == "AA"
