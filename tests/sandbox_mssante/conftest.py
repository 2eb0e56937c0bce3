"""The operator under test: started in the test's event loop on free loopback ports, in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from opensegur.sandbox.mssante import MssOperator
from tests.sandbox_mssante.helpers import DPI, PASSWORD, RADIO


@pytest.fixture
async def operator(tmp_path: Path) -> AsyncIterator[MssOperator]:
    op = MssOperator(tmp_path, [DPI, RADIO], PASSWORD)
    await op.start()
    try:
        yield op
    finally:
        await op.stop()
