"""Failures in the application log without their message, and at a bounded rate.

An exception's message can quote what failed (a name from a PID segment, an INS, a piece of CDA or mail), and the
log must never carry patient data. The exception's type and the code path are enough to find a bug; the message
itself stays in the record of what failed (the job's ``last_error``, the exchange, the stored message), which
only authorised people read.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path

_FRAMES = 8  # the innermost frames: where it broke and how it got there


def failure(exc: BaseException) -> str:
    """``ValueError in cda.py:120 parse_cda ← dmp_feed.py:340 process`` — the type and the frames, no message."""
    frames = traceback.extract_tb(exc.__traceback__)[-_FRAMES:]
    where = " ← ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__} in {where}" if where else type(exc).__name__


class Throttled:
    """At most one record per key every ``every`` seconds, then one line saying how many were held back: a peer
    opening 20,000 connections, or sending the same broken frame in a loop, must not write 20,000 lines."""

    def __init__(
        self, logger: logging.Logger, every: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            msg += " (et %d message(s) semblable(s) non journalisé(s) depuis %.0f s)"
            args = (*args, held, now - last if last is not None else 0.0)
        self._logger.log(level, msg, *args)
