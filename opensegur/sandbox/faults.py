"""Fault injection shared by the sandbox simulators: set a fault (for N calls or a while), clear it, take it.

Each simulator keeps its own fault model (a pydantic object the admin API receives); this class only holds the
active ones, consumes them and lets injected delays be cut short when the faults are cleared, so a test that
clears a fault never waits for the full delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["DEFAULT_KEY", "FaultInjector"]

C = TypeVar("C")
DEFAULT_KEY = "*"


@dataclass
class _Active(Generic[C]):
    config: C
    remaining: int | None
    expires_at: float | None


class FaultInjector(Generic[C]):
    """Active faults by key (``"*"`` when a simulator has only one at a time)."""

    def __init__(self, *, max_sleep_s: float = 30.0) -> None:
        self.max_sleep_s = max_sleep_s
        self._active: dict[str, _Active[C]] = {}
        self._cleared = asyncio.Event()

    def set(
        self,
        config: C,
        *,
        key: str = DEFAULT_KEY,
        count: int | None = None,
        expires_in_s: float | None = None,
    ) -> None:
        """Activate ``config`` under ``key`` for ``count`` calls and/or ``expires_in_s`` s (else until cleared)."""
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        expires_at = time.monotonic() + expires_in_s if expires_in_s is not None else None
        self._active[key] = _Active(config, count, expires_at)

    def clear(self, key: str | None = None) -> None:
        """Remove one fault, or all of them; wakes every injected sleep either way."""
        if key is None:
            self._active.clear()
        else:
            self._active.pop(key, None)
        self._cleared.set()
        self._cleared = asyncio.Event()

    def active(self) -> dict[str, C]:
        self._expire()
        return {k: a.config for k, a in self._active.items()}

    def take(self, *keys: str, when: Callable[[C], bool] | None = None) -> C | None:
        """The first active fault among ``keys`` (default: the single key) accepted by ``when``, counting one use."""
        self._expire()
        for key in keys or (DEFAULT_KEY,):
            active = self._active.get(key)
            if active is None or (when is not None and not when(active.config)):
                continue
            if active.remaining is not None:
                active.remaining -= 1
                if active.remaining <= 0:
                    del self._active[key]
            return active.config
        return None

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (capped); returns True when cut short because faults were cleared."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cleared.wait(), min(seconds, self.max_sleep_s))
            return True
        return False

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, a in self._active.items() if a.expires_at is not None and a.expires_at <= now]:
            del self._active[key]
