"""The Pro Santé Connect access tokens of the professionals logged in through PSC, kept in the serving process's
memory for the length of the token, so that this platform can ask another DRIMbox for images in the
professional's name (DRIM-M: the source introspects the token at PSC).

Never written down — not in the database, not in a job, not in a log: a token lets whoever holds it act as the
professional at every PSC-protected service. The price is that a token is known only to the process the login
went through; a load balancer in front of several serving processes keeps a session on one of them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

__all__ = ["PscDelegation"]

MAX_SESSIONS = 10_000  # a bound on memory; beyond, the oldest sessions ask the professional to log in again


@dataclass(frozen=True)
class _Held:
    token: str
    expires_at: float  # time.time()


class PscDelegation:
    def __init__(self) -> None:
        self._held: dict[int, _Held] = {}
        self._lock = threading.Lock()

    def keep(self, session_id: int, token: str, expires_in: float) -> None:
        with self._lock:
            if len(self._held) >= MAX_SESSIONS:
                self._forget_expired()
                while len(self._held) >= MAX_SESSIONS:
                    self._held.pop(next(iter(self._held)))
            self._held[session_id] = _Held(token, time.time() + expires_in)

    def token(self, session_id: int | None, *, valid_for: float = 30.0) -> str | None:
        """The session's token if it stays valid ``valid_for`` seconds more, else None."""
        if session_id is None:
            return None
        with self._lock:
            held = self._held.get(session_id)
            if held is None or held.expires_at - valid_for <= time.time():
                return None
            return held.token

    def forget(self, session_id: int) -> None:
        with self._lock:
            self._held.pop(session_id, None)

    def _forget_expired(self) -> None:
        now = time.time()
        for sid in [sid for sid, held in self._held.items() if held.expires_at <= now]:
            del self._held[sid]
