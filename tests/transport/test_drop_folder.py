"""The watched drop folder: each message file through the intake, then moved with its ACK; files still being
written, other files and oversized ones handled as they should be."""

from __future__ import annotations

import os
import time
from pathlib import Path

from opensegur.transport.drop_folder import DONE, REFUSED, Answer, DropFolder


def _file(folder: Path, name: str, data: bytes, age_s: float = 60) -> Path:
    path = folder / name
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_each_message_is_handed_over_then_moved_with_its_ack(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def handle(raw: bytes) -> Answer:
        seen.append(raw)
        return Answer(b"MSA|AA|1", True) if raw.startswith(b"MSH") else Answer(b"MSA|AR|", False)

    _file(tmp_path, "cr.hl7", b"MSH|^~\\&|CR")
    _file(tmp_path, "bad.er7", b"garbage")
    _file(tmp_path, "notes.pdf", b"%PDF-")
    _file(tmp_path, ".hidden.hl7", b"MSH|")
    fresh = _file(tmp_path, "fresh.hl7", b"MSH|^~\\&|FRESH", age_s=0)
    drop = DropFolder(tmp_path, handle, settle_s=2.0)
    assert drop.process_once() == [("bad.er7", False), ("cr.hl7", True)]
    assert (tmp_path / DONE / "cr.hl7.ack").read_bytes() == b"MSA|AA|1" and (
        tmp_path / DONE / "cr.hl7"
    ).exists()
    assert (tmp_path / REFUSED / "bad.er7.ack").read_bytes() == b"MSA|AR|"
    # The ACK is written aside and renamed whole: nothing else is left beside it.
    assert sorted(p.name for p in (tmp_path / DONE).iterdir()) == ["cr.hl7", "cr.hl7.ack"]
    assert (tmp_path / "notes.pdf").exists() and (tmp_path / ".hidden.hl7").exists() and fresh.exists()
    # Once settled, the fresh file goes through too.
    assert drop.process_once(now=time.time() + 5) == [("fresh.hl7", True)]
    assert len(seen) == 3


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    def handle(raw: bytes) -> Answer:
        raise AssertionError("not read")

    _file(tmp_path, "big.hl7", b"x" * 2048)
    assert DropFolder(tmp_path, handle, max_bytes=1024).process_once() == [("big.hl7", False)]
    assert b"refus" in (tmp_path / REFUSED / "big.hl7.ack").read_bytes()
