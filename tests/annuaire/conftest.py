"""Fixtures of the directory tests: the sandbox Annuaire Santé in process (ASGI) and on a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.sandbox.annuaire import SANDBOX_API_KEY, create_annuaire_router

BASE = "http://annuaire.test/annuaire/fhir/v2"


def sandbox_app(max_count: int = 50) -> FastAPI:
    app = FastAPI()
    app.include_router(create_annuaire_router(max_count=max_count), prefix="/annuaire")
    return app


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on a free local port for the duration of the block; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(300):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def closed_port() -> int:
    """A local port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def sandbox() -> AsyncIterator[httpx.AsyncClient]:
    """Raw HTTP access to the simulated API (no key by default)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox_app()), base_url=BASE) as c:
        yield c


@pytest.fixture
async def client() -> AsyncIterator[AnnuaireClient]:
    """The connector talking to the sandbox in process."""
    c = AnnuaireClient(BASE, SANDBOX_API_KEY, transport=httpx.ASGITransport(app=sandbox_app()))
    yield c
    await c.aclose()


@pytest.fixture
async def live() -> AsyncIterator[str]:
    """The sandbox on a real socket, paging every 5 results; yields the FHIR base URL."""
    async with serve(sandbox_app(max_count=5)) as url:
        yield f"{url}/annuaire/fhir/v2"
