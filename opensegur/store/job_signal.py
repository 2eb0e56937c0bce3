"""Wake the workers of other processes when a job is committed: PostgreSQL ``LISTEN``/``NOTIFY``.

Inside one process :meth:`Database.on_jobs_committed` tells the local pool. With ``serve`` and N ``opensegur worker``
processes on other hosts, a transaction that queued a job also sends ``NOTIFY`` on :data:`CHANNEL` — PostgreSQL
delivers it only if the transaction commits, once per transaction — and each worker process keeps one connection
that ``LISTEN``\\s. A notification lost with a dropped connection costs only the pool's polling interval: the queue
table stays the truth, the signal only saves the wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from opensegur.logsafe import failure

log = logging.getLogger(__name__)

CHANNEL = "opensegur_jobs"
NOTIFY = f"NOTIFY {CHANNEL}"
RECONNECT_S = 2.0


def conninfo(url: str) -> str:
    """The libpq address of a SQLAlchemy URL (``postgresql+psycopg://`` names the driver, libpq does not)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


async def listen(url: str, on_notify: Callable[[], None], on_listening: Callable[[bool], None]) -> None:
    """Call ``on_notify`` for each notification until cancelled; a lost connection is opened again after
    :data:`RECONNECT_S`, ``on_listening`` saying when notifications can (True) or cannot (False) arrive."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                on_listening(True)
                async for _ in conn.notifies():
                    on_notify()
        except psycopg.Error as exc:
            log.warning("job notifications lost, polling until they are back: %s", failure(exc))
        on_listening(False)
        await asyncio.sleep(RECONNECT_S)
