"""The fault injector shared by the sandbox simulators."""

from __future__ import annotations

import asyncio
import time

from opensegur.sandbox.faults import FaultInjector


async def test_count_key_and_condition() -> None:
    faults: FaultInjector[str] = FaultInjector()
    faults.set("boom", count=2)
    faults.set("only-b", key="b")
    assert faults.take() == "boom"
    assert faults.take("a", "b") == "only-b"
    assert faults.take(when=lambda c: c == "other") is None  # not consumed when the condition fails
    assert faults.take() == "boom"
    assert faults.take() is None
    assert faults.active() == {"b": "only-b"}
    faults.clear("b")
    assert faults.active() == {}


async def test_expiry() -> None:
    faults: FaultInjector[str] = FaultInjector()
    faults.set("short", expires_in_s=0.05)
    assert faults.take() == "short"
    await asyncio.sleep(0.1)
    assert faults.take() is None


async def test_clear_wakes_an_injected_sleep() -> None:
    faults: FaultInjector[str] = FaultInjector(max_sleep_s=30)
    start = time.monotonic()
    sleeper = asyncio.ensure_future(faults.sleep(30))
    await asyncio.sleep(0.05)
    faults.clear()
    assert await asyncio.wait_for(sleeper, 5) is True
    assert time.monotonic() - start < 5
    assert await faults.sleep(0.01) is False
