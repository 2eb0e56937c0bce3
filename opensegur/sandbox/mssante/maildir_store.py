"""Maildir store of the MSSanté sandbox: one Maildir per address, with folders, flags and UIDs that stay stable.

Storage is one stdlib ``mailbox.Maildir`` per address (``<root>/<address>/``, folder ``A/B`` as the Maildir++
sub-directory ``.A.B``); flags live in the Maildir file names (``S`` seen, ``R`` answered, ``F`` flagged, ``T``
deleted, ``D`` draft) and UIDs in ``opensegur-imap.json`` next to ``cur/new/tmp``. The SMTP side of the operator
delivers into it and the IMAP server (``imap_server``) serves it.
"""

from __future__ import annotations

import contextlib
import json
import mailbox
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opensegur.errors import OpenSegurError

__all__ = [
    "INBOX",
    "DEFAULT_FOLDERS",
    "DELIMITER",
    "FLAG_LETTERS",
    "FolderState",
    "MaildirStore",
    "StoreError",
    "StoredMessage",
    "canonical_address",
]

INBOX = "INBOX"
DEFAULT_FOLDERS = ("Traites",)
_STATE_FILE = "opensegur-imap.json"
_ADDRESS_RE = re.compile(r"^[a-z0-9_+-][a-z0-9._+-]{0,63}@[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})+$")
# One level of a folder name; IMAP "A/B" is the Maildir++ folder ".A.B".
_FOLDER_PART_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9 _-]{0,63}$")
_MAX_FOLDER_DEPTH = 4
DELIMITER = "/"
# IMAP system flag (lower-cased) -> Maildir info letter; the IMAP server maps the client's flags with it.
FLAG_LETTERS = {"\\seen": "S", "\\answered": "R", "\\flagged": "F", "\\deleted": "T", "\\draft": "D"}
_LETTER_FLAGS = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "T": "\\Deleted", "D": "\\Draft"}


class StoreError(OpenSegurError):
    """Unknown mailbox or folder, bad name: ``code`` is an IMAP response code (``NONEXISTENT``, ``CANNOT``…)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def canonical_address(address: str) -> str:
    """Lower-cased address, refused unless it is a plain ``local@domain`` safe to use as a directory name."""
    value = address.strip().strip("<>").lower()
    if not _ADDRESS_RE.match(value) or ".." in value:
        raise StoreError("CANNOT", f"Adresse de messagerie invalide : {address[:80]!r}")
    return value


@dataclass(frozen=True)
class StoredMessage:
    uid: int
    key: str
    path: Path
    flags: str  # Maildir info letters, sorted
    size: int
    internal_date: datetime

    @property
    def imap_flags(self) -> list[str]:
        return [_LETTER_FLAGS[c] for c in self.flags if c in _LETTER_FLAGS]

    @property
    def seen(self) -> bool:
        return "S" in self.flags


@dataclass(frozen=True)
class FolderState:
    uidvalidity: int
    uidnext: int
    messages: list[StoredMessage]  # by ascending UID

    def by_uid(self) -> dict[int, StoredMessage]:
        return {m.uid: m for m in self.messages}


class MaildirStore:
    """Maildirs under ``root`` with persistent UIDs; thread-safe, so callers may run it in worker threads.

    ``on_change(address, folder)`` is called (from the calling thread) after every change of a folder.
    """

    def __init__(self, root: Path, on_change: Callable[[str, str], None] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.on_change = on_change
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------------------------------- mailboxes

    def _dir(self, address: str) -> Path:
        return self.root / canonical_address(address)

    def has_mailbox(self, address: str) -> bool:
        try:
            return (self._dir(address) / "cur").is_dir()
        except StoreError:
            return False

    def create_mailbox(self, address: str) -> bool:
        """Create the Maildir (and default folders) when missing; True when it was created."""
        path = self._dir(address)
        with self._lock:
            if (path / "cur").is_dir():
                return False
            md = mailbox.Maildir(path, create=True)
            for name in DEFAULT_FOLDERS:
                md.add_folder(name)
            return True

    def mailboxes(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if "@" in p.name and (p / "cur").is_dir())

    def folders(self, address: str) -> list[str]:
        path = self._existing(address)
        names = mailbox.Maildir(path, create=False).list_folders()
        return [INBOX, *sorted(n.replace(".", DELIMITER) for n in names)]

    @staticmethod
    def _maildir_folder(name: str) -> str | None:
        """Maildir++ name of an IMAP folder name, None when the name is not allowed."""
        parts = name.strip(DELIMITER).split(DELIMITER)
        if len(parts) > _MAX_FOLDER_DEPTH or not all(_FOLDER_PART_RE.match(p) for p in parts):
            return None
        if parts[0].upper() == INBOX:
            return None
        return ".".join(parts)

    def create_folder(self, address: str, name: str) -> None:
        """Create a folder and, as RFC 3501 §6.3.3 wants, its missing parents (``A/B`` creates ``A``)."""
        path = self._existing(address)
        target = self._maildir_folder(name)
        if target is None:
            raise StoreError(
                "CANNOT",
                "Nom de dossier invalide (lettres, chiffres, espace, _ et -, 4 niveaux separes par / au plus)",
            )
        with self._lock:
            md = mailbox.Maildir(path, create=False)
            existing = set(md.list_folders())
            if target in existing:
                raise StoreError("ALREADYEXISTS", "Ce dossier existe deja")
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                level = ".".join(parts[:depth])
                if level not in existing:
                    md.add_folder(level)

    def _existing(self, address: str) -> Path:
        path = self._dir(address)
        if not (path / "cur").is_dir():
            raise StoreError("NONEXISTENT", "Boite aux lettres inconnue")
        return path

    def _folder_path(self, address: str, folder: str) -> Path:
        path = self._existing(address)
        if folder.upper() == INBOX:
            return path
        target = self._maildir_folder(folder)
        if target is None or not (path / f".{target}" / "cur").is_dir():
            raise StoreError("NONEXISTENT", "Dossier inexistant")
        return path / f".{target}"

    @staticmethod
    def folder_name(folder: str) -> str:
        return INBOX if folder.upper() == INBOX else folder.strip(DELIMITER)

    # ------------------------------------------------------------------------------------------- UID state

    def _load_state(self, address: str) -> dict[str, Any]:
        file = self._existing(address) / _STATE_FILE
        try:
            state = json.loads(file.read_text("utf-8"))
        except FileNotFoundError:
            return {"folders": {}, "mdn_sent": []}
        if not isinstance(state, dict) or not isinstance(state.get("folders"), dict):
            raise StoreError("SERVERBUG", f"Etat IMAP illisible : {file}")
        state.setdefault("mdn_sent", [])
        return state

    def _save_state(self, address: str, state: dict[str, Any]) -> None:
        file = self._existing(address) / _STATE_FILE
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, sort_keys=True), "utf-8")
        os.replace(tmp, file)

    @staticmethod
    def _scan(path: Path) -> dict[str, tuple[Path, str, int, float]]:
        found: dict[str, tuple[Path, str, int, float]] = {}
        for sub in ("new", "cur"):
            with os.scandir(path / sub) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_file():
                        continue
                    key, _, info = entry.name.partition(":")
                    flags = "".join(sorted(info[2:])) if info.startswith("2,") else ""
                    st = entry.stat()
                    found[key] = (Path(entry.path), flags, st.st_size, st.st_mtime)
        return found

    def _reconcile(self, address: str, folder: str) -> tuple[FolderState, dict[str, Any]]:
        """Fresh view of a folder, giving UIDs to files that appeared and forgetting those that vanished."""
        path = self._folder_path(address, folder)
        name = self.folder_name(folder)
        state = self._load_state(address)
        entry = state["folders"].get(name)
        changed = False
        if entry is None:
            entry = {"uidvalidity": int(time.time()) & 0xFFFFFFFF or 1, "uidnext": 1, "uids": {}}
            state["folders"][name] = entry
            changed = True
        files = self._scan(path)
        uids: dict[str, int] = entry["uids"]
        for key in [k for k in uids if k not in files]:
            del uids[key]
            changed = True
        for key in sorted((k for k in files if k not in uids), key=lambda k: (files[k][3], k)):
            uids[key] = entry["uidnext"]
            entry["uidnext"] += 1
            changed = True
        if changed:
            self._save_state(address, state)
        messages = sorted(
            (
                StoredMessage(uid, key, files[key][0], files[key][1], files[key][2], _from_ts(files[key][3]))
                for key, uid in uids.items()
            ),
            key=lambda m: m.uid,
        )
        return FolderState(entry["uidvalidity"], entry["uidnext"], messages), state

    def folder(self, address: str, folder: str = INBOX) -> FolderState:
        with self._lock:
            return self._reconcile(address, folder)[0]

    # -------------------------------------------------------------------------------------------- messages

    def deliver(
        self,
        address: str,
        raw: bytes,
        folder: str = INBOX,
        *,
        flags: str = "",
        internal_date: float | None = None,
    ) -> int:
        """Store ``raw`` (CRLF line ends expected) and return its UID."""
        path = self._folder_path(address, folder)
        # Maildir.add writes in tmp/ then renames into new/: readers never see a partial message.
        key = mailbox.Maildir(path, create=False).add(raw)
        with self._lock:
            file = path / "new" / key
            if flags:
                target = path / "cur" / f"{key}:2,{''.join(sorted(set(flags)))}"
                os.rename(file, target)
                file = target
            if internal_date is not None:
                os.utime(file, (internal_date, internal_date))
            folder_state, _ = self._reconcile(address, folder)
            uid = next(m.uid for m in folder_state.messages if m.key == key)
        self._changed(address, folder)
        return uid

    def read(self, address: str, folder: str, uid: int) -> bytes:
        message = self.folder(address, folder).by_uid().get(uid)
        if message is None:
            raise StoreError("NONEXISTENT", f"Message UID {uid} inexistant")
        return message.path.read_bytes()

    def store_flags(self, address: str, folder: str, uids: Iterable[int], letters: str, mode: str) -> None:
        """``mode``: ``+`` add, ``-`` remove, ``=`` replace the flags of the given messages."""
        path = self._folder_path(address, folder)
        wanted = set(letters)
        with self._lock:
            messages = self._reconcile(address, folder)[0].by_uid()
            for uid in uids:
                m = messages.get(uid)
                if m is None:
                    continue
                current = set(m.flags)
                new = current | wanted if mode == "+" else current - wanted if mode == "-" else wanted
                if new == current and m.path.parent.name == "cur":
                    continue
                # Python 3.11's Maildir has no set_flags (3.13): renaming the file is how Maildir stores flags.
                os.rename(m.path, path / "cur" / f"{m.key}:2,{''.join(sorted(new))}")
        self._changed(address, folder)

    def copy(self, address: str, folder: str, uids: Sequence[int], dest: str) -> list[tuple[int, int]]:
        """Copy messages (flags and internal date kept); returns ``(source UID, new UID)`` pairs."""
        self._folder_path(address, dest)
        pairs = []
        for uid in uids:
            m = self.folder(address, folder).by_uid().get(uid)
            if m is None:
                continue
            new_uid = self.deliver(
                address, m.path.read_bytes(), dest, flags=m.flags, internal_date=m.internal_date.timestamp()
            )
            pairs.append((uid, new_uid))
        return pairs

    def remove(self, address: str, folder: str, uids: Iterable[int]) -> list[int]:
        """Delete messages for good (EXPUNGE, MOVE); returns the UIDs actually removed."""
        removed = []
        with self._lock:
            messages = self._reconcile(address, folder)[0].by_uid()
            for uid in uids:
                m = messages.get(uid)
                if m is not None:
                    with contextlib.suppress(FileNotFoundError):
                        m.path.unlink()
                    removed.append(uid)
            self._reconcile(address, folder)
        if removed:
            self._changed(address, folder)
        return removed

    def mark_mdn_sent(self, address: str, folder: str, uid: int) -> bool:
        """Remember an MDN went out for this message; False when one already had (RFC 8098 §2.1: only once)."""
        with self._lock:
            folder_state, state = self._reconcile(address, folder)
            m = folder_state.by_uid().get(uid)
            if m is None:
                raise StoreError("NONEXISTENT", f"Message UID {uid} inexistant")
            if m.key in state["mdn_sent"]:
                return False
            state["mdn_sent"].append(m.key)
            self._save_state(address, state)
            return True

    def _changed(self, address: str, folder: str) -> None:
        if self.on_change is not None:
            self.on_change(canonical_address(address), self.folder_name(folder))


def _from_ts(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts), UTC)
