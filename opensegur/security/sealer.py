"""The serving process's audit sealer: chains new audit entries every few seconds and anchors the chain head
every minute (table and file), so that the window in which an entry sits unsealed stays short."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from opensegur.security import audit
from opensegur.store.db import Database

log = logging.getLogger(__name__)

ANCHOR_FILE = "audit-anchors.jsonl"  # beside the database, as `opensegur audit verify` expects


async def run_sealer(
    db: Database,
    anchor_file: Path,
    stop: asyncio.Event,
    *,
    seal_every_s: float = 2.0,
    anchor_every_s: float = 60.0,
) -> None:
    """Until ``stop``: seal, and anchor now and then; a last seal and anchor on the way out."""
    last_anchor = 0.0
    while True:
        stopping = stop.is_set()
        try:
            await asyncio.to_thread(audit.seal_pending, db)
            if stopping or time.monotonic() - last_anchor >= anchor_every_s:
                await asyncio.to_thread(audit.anchor, db, anchor_file)
                last_anchor = time.monotonic()
        except Exception:  # a database hiccup must not end the sealer: the next round seals what is left
            log.exception("Scellement de la trace d'audit en échec : nouvel essai au prochain tour")
        if stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seal_every_s)
