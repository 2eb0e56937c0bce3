"""A watched drop folder for HL7 v2 messages: what a teleradiology platform, or a PACS that writes its reports as
files, leaves there goes through the same intake as a message over MLLP — stored, validated, sent to the DMP and
the DRIMbox — so that every imaging report reaches the DMP whatever wrote it.

Each file is one message. It is handed to the intake, which commits it before answering; then the file moves to
``traites/`` (ACK AA) or ``refuses/`` (AE, AR), its ACK written beside it as ``<name>.ack``, where the sender reads
it. A file changed in the last seconds is left for the next round: it may still be being written. A file moved
after a crash between the commit and the move is read again at the next start, and answered as a duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DONE", "REFUSED", "Answer", "DropFolder"]

log = logging.getLogger(__name__)

DONE, REFUSED = "traites", "refuses"
SUFFIXES = (".hl7", ".er7", ".txt", ".msg")


@dataclass(frozen=True)
class Answer:
    ack: bytes
    accepted: bool


@dataclass
class DropFolder:
    folder: Path
    handle: Callable[[bytes], Answer]  # the intake: commits the message, then answers
    settle_s: float = 2.0  # a file younger than this may still be being written
    max_bytes: int = 64 * 1024 * 1024

    def process_once(self, now: float | None = None) -> list[tuple[str, bool]]:
        """The files ready in the folder, each handled and moved; (name, accepted) for each."""
        now = time.time() if now is None else now
        done = []
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in SUFFIXES:
                continue
            stat = path.stat()
            if now - stat.st_mtime < self.settle_s:
                continue
            if stat.st_size > self.max_bytes:
                self._move(
                    path,
                    REFUSED,
                    f"Fichier de plus de {self.max_bytes // (1024 * 1024)} Mo refusé\n".encode(),
                )
                done.append((path.name, False))
                continue
            answer = self.handle(path.read_bytes())
            self._move(path, DONE if answer.accepted else REFUSED, answer.ack)
            done.append((path.name, answer.accepted))
        return done

    def _move(self, path: Path, where: str, ack: bytes) -> None:
        target = self.folder / where
        target.mkdir(exist_ok=True)
        # Written aside then renamed: a sender polling for its .ack never reads one half written.
        partial = target / f".{path.name}.ack.part"
        partial.write_bytes(ack)
        partial.replace(target / f"{path.name}.ack")
        path.replace(target / path.name)

    async def watch(self, stop: asyncio.Event, interval_s: float = 2.0) -> None:
        """Until ``stop``: a round every ``interval_s``; a round that fails is logged and the next one tries again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            try:
                handled = await asyncio.to_thread(self.process_once)
                if handled:
                    log.info("drop folder: %d message(s) handled", len(handled))
            except Exception:  # the next round tries again; the files stay where they are
                log.exception("drop folder: round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
