"""Failures in the application log without their message.

An exception's message can quote what failed (a name from a PID segment, an INS, a piece of CDA or mail), and the
log must never carry patient data. The exception's type and the code path are enough to find a bug; the message
itself stays in the record of what failed (the job's ``last_error``, the exchange, the stored message), which
only authorised people read.
"""

from __future__ import annotations

import traceback
from pathlib import Path

_FRAMES = 8  # the innermost frames: where it broke and how it got there


def failure(exc: BaseException) -> str:
    """``ValueError in cda.py:120 parse_cda ← dmp_feed.py:340 process`` — the type and the frames, no message."""
    frames = traceback.extract_tb(exc.__traceback__)[-_FRAMES:]
    where = " ← ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__} in {where}" if where else type(exc).__name__
