from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from opensegur.sandbox.dmp import create_dmp_app
from opensegur.security.pki import TestPki, ensure_test_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(Path(tmp_path_factory.mktemp("dmp-pki")))


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """Same shape, another CA: what an attacker or a misconfigured editor signs with."""
    return ensure_test_pki(Path(tmp_path_factory.mktemp("rogue-pki")))


@pytest.fixture
def app(tmp_path: Path, pki: TestPki) -> FastAPI:
    return create_dmp_app(tmp_path / "sandbox", pki, timeout_sleep_s=0.5)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dmp.test") as c:
        yield c
