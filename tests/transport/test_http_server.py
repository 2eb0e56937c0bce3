"""The HTTP listener's bounds: a connection that sends no complete request is closed, and past the connection cap
uvicorn answers 503."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from opensegur.transport.http_server import uvicorn_config

pytestmark = pytest.mark.requirement("HTTP-BOUNDS")


async def _hello(_request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def _server(max_connections: int, header_timeout_s: float) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/", _hello)])
    server = uvicorn.Server(
        uvicorn_config(app, max_connections=max_connections, header_timeout_s=header_timeout_s)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1024), seconds) == b""
    except TimeoutError:
        return False


async def test_idle_and_dribbling_connections_are_closed_after_the_header_timeout() -> None:
    async with _server(100, 0.5) as port:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        for part in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: b\r\n"):  # headers never finished
            slow_w.write(part)
            await slow_w.drain()
            await asyncio.sleep(0.2)
        assert await _closed_within(idle_r, 3) and await _closed_within(slow_r, 3)
        assert time.monotonic() - started < 3
        # A client that sends its request in time is served, and may keep its connection for the next one.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/")).text == "ok"
            await asyncio.sleep(0.7)
            assert (await client.get("/")).text == "ok"
        for w in (idle_w, slow_w):
            w.close()


async def test_past_the_connection_cap_requests_get_503() -> None:
    async with _server(3, 30) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/")).status_code == 503
        for _r, w in held:
            w.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/")).status_code == 200
