"""IMAP access to one mailbox folder with ``imapclient``: list new mail, fetch it without marking it read, mark done.

Blocking by design (one socket, one selected folder); async callers run each call in a worker thread and never
share an :class:`ImapSession` between two threads at once, except :meth:`ImapSession.interrupt`.

Decisions:
- Security is explicit: ``tls`` (implicit TLS, 993), ``starttls`` (143; refused when not offered, never
  downgraded) or ``plain``, allowed on loopback only.
- Sizes are fetched first (``RFC822.SIZE``); a message above the limit is never downloaded whole: only its header
  block, capped, is fetched, and it comes back with ``complete=False`` so the caller can answer "trop volumineux"
  to the sender and keep a trace.
- Bodies are fetched with ``BODY.PEEK[]``: nothing is flagged until :meth:`ImapSession.mark_done`, so a crash
  between reading and storing means the message is read again, never lost.
- Done = ``\\Seen`` then ``UID MOVE`` to the processed folder (created on first use, ``/`` in its name mapped to
  the server's hierarchy delimiter and personal namespace); servers without MOVE only get the ``\\Seen`` flag.
- :meth:`ImapSession.wait_for_news` uses IDLE when offered (each wait bounded, well below the 29 minutes after
  which RFC 2177 lets a server drop an idle client) and falls back to polling with NOOP + SEARCH.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from opensegur.errors import OpenSegurError, RetryLater
from opensegur.transport.smtp import is_loopback, tls_client_context

__all__ = [
    "DEFAULT_HEADER_BYTES",
    "MAX_IDLE_SECONDS",
    "ImapAuthError",
    "ImapCommandError",
    "ImapError",
    "ImapMessage",
    "ImapSecurity",
    "ImapSession",
    "ImapSettings",
    "ImapUnavailableError",
]

ImapSecurity = Literal["plain", "starttls", "tls"]
DEFAULT_HEADER_BYTES = 64 * 1024
MAX_IDLE_SECONDS = 25 * 60
_SEEN = b"\\Seen"
_NEWS = (b"EXISTS", b"RECENT")

log = logging.getLogger(__name__)


class ImapError(OpenSegurError):
    """Base of the IMAP errors; messages name the server and the step, never a password."""


class ImapUnavailableError(ImapError, RetryLater):
    """Connection refused or lost, timeout, TLS failure: drop the session and try again later."""


class ImapAuthError(ImapError):
    """The server refused the login (wrong user or password, account locked)."""


class ImapCommandError(ImapError):
    """The server answered NO or BAD to a command (unknown folder, quota, forbidden folder name…)."""


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    security: ImapSecurity = "tls"
    client_cert: Path | None = None
    client_key: Path | None = None
    ca: Path | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.security not in ("plain", "starttls", "tls"):
            raise ValueError(f"unknown IMAP security mode {self.security!r}")
        if self.security == "plain" and not is_loopback(self.host):
            raise ValueError(f"plain IMAP (no TLS) is allowed on loopback only, not to {self.host!r}")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("an IMAP client key needs its certificate")


@dataclass(frozen=True)
class ImapMessage:
    """``raw`` is the whole message, or only its header block (capped) when ``complete`` is False."""

    uid: int
    size: int
    raw: bytes
    complete: bool = True


class ImapSession:
    """One authenticated connection with one folder selected."""

    def __init__(self, settings: ImapSettings, username: str, password: str, folder: str = "INBOX") -> None:
        self.settings = settings
        self.username = username
        self._password = password
        self.folder = folder
        self._client: IMAPClient | None = None
        self.uidvalidity: int | None = None
        self._folders_ready: set[str] = set()

    # ------------------------------------------------------------------------------------------ connection

    @property
    def is_open(self) -> bool:
        return self._client is not None

    @contextlib.contextmanager
    def _errors(self, step: str, *, protocol_errors_mean_unavailable: bool = False) -> Iterator[None]:
        where = f"IMAP {self.settings.host}:{self.settings.port} ({step})"
        try:
            yield
        except ImapError:
            raise
        except LoginError as exc:
            raise ImapAuthError(f"{where}: login refused for {self.username}: {_text(exc)}") from exc
        except IMAPClientAbortError as exc:
            self._drop()
            raise ImapUnavailableError(f"{where}: connection lost: {_text(exc)}") from exc
        except IMAPClientError as exc:
            if protocol_errors_mean_unavailable:
                # While connecting this means no usable IMAP server there (bad greeting, not IMAP at all).
                self._drop()
                raise ImapUnavailableError(f"{where}: {_text(exc)}") from exc
            raise ImapCommandError(f"{where}: {_text(exc)}") from exc
        except ssl.SSLError as exc:
            self._drop()
            raise ImapUnavailableError(f"{where}: TLS failed: {exc}") from exc
        except OSError as exc:  # refused, reset, timeouts (socket.timeout is TimeoutError, an OSError)
            self._drop()
            raise ImapUnavailableError(f"{where}: {exc!r}") from exc

    def _require(self) -> IMAPClient:
        if self._client is None:
            raise ImapUnavailableError(f"IMAP session for {self.username} is not open")
        return self._client

    def open(self) -> None:
        """Connect, secure, log in and select the folder (read-write)."""
        if self._client is not None:
            return
        s = self.settings
        context = tls_client_context(s.ca, s.client_cert, s.client_key) if s.security != "plain" else None
        with self._errors("connect", protocol_errors_mean_unavailable=True):
            client = IMAPClient(
                s.host, s.port, ssl=s.security == "tls", ssl_context=context, timeout=s.timeout
            )
        self._client = client
        try:
            if s.security == "starttls":
                with self._errors("starttls", protocol_errors_mean_unavailable=True):
                    if not client.has_capability("STARTTLS"):
                        raise ImapUnavailableError(
                            f"IMAP {s.host}:{s.port} does not offer STARTTLS; refusing to log in in clear"
                        )
                    client.starttls(context)
            with self._errors("login"):
                client.login(self.username, self._password)
            with self._errors("select"):
                selected = client.select_folder(self.folder)
            self.uidvalidity = int(selected.get(b"UIDVALIDITY", 0))  # RFC 3501 makes it mandatory
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._folders_ready.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()

    def close(self) -> None:
        """Log out politely; never raises (the connection may already be dead)."""
        client, self._client = self._client, None
        self._folders_ready.clear()
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()

    def interrupt(self) -> None:
        """From another thread: break a blocking wait (IDLE, slow read); the owner then sees a lost connection."""
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.socket().shutdown(socket.SHUT_RDWR)

    @property
    def supports_idle(self) -> bool:
        return self._require().has_capability("IDLE")

    @property
    def supports_move(self) -> bool:
        return self._require().has_capability("MOVE")

    # ---------------------------------------------------------------------------------------------- reading

    def search_new(self, *, since_uid: int | None = None, unseen_only: bool = True) -> list[int]:
        """UIDs (ascending) of messages not deleted, unseen unless told otherwise, above ``since_uid`` if given."""
        client = self._require()
        criteria: list[Any] = ["NOT", "DELETED"]
        if unseen_only:
            criteria.append("UNSEEN")
        if since_uid is not None:
            criteria += ["UID", f"{since_uid + 1}:*"]
        with self._errors("search"):
            uids = client.search(criteria)
        # "n:*" always matches the last message, even when its UID is below n (RFC 3501 §6.4.8).
        return sorted(u for u in uids if since_uid is None or u > since_uid)

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        if not uids:
            return {}
        client = self._require()
        with self._errors("fetch size"):
            data = client.fetch(list(uids), ["RFC822.SIZE"])
        return {uid: int(item[b"RFC822.SIZE"]) for uid, item in data.items() if b"RFC822.SIZE" in item}

    def fetch(
        self, uids: Sequence[int], *, max_bytes: int, header_bytes: int = DEFAULT_HEADER_BYTES
    ) -> list[ImapMessage]:
        """Messages in UID order without setting ``\\Seen``; those above ``max_bytes`` as headers only.

        UIDs that vanished meanwhile (expunged by another client) are skipped.
        """
        client = self._require()
        sizes = self.sizes(uids)
        whole = [u for u in uids if u in sizes and sizes[u] <= max_bytes]
        headers_only = [u for u in uids if u in sizes and sizes[u] > max_bytes]
        out: dict[int, ImapMessage] = {}
        if whole:
            with self._errors("fetch"):
                data = client.fetch(whole, ["BODY.PEEK[]"])
            for uid, item in data.items():
                raw = item.get(b"BODY[]")
                if raw is None or uid not in sizes:
                    continue
                raw = bytes(raw)
                if len(raw) > max_bytes:  # the announced size was wrong: keep the promise made to the caller
                    out[uid] = ImapMessage(uid, len(raw), _header_block(raw, header_bytes), complete=False)
                else:
                    out[uid] = ImapMessage(uid, sizes[uid], raw)
        if headers_only:
            with self._errors("fetch headers"):
                data = client.fetch(headers_only, [f"BODY.PEEK[HEADER]<0.{header_bytes}>"])
            for uid, item in data.items():
                header = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER]")), None)
                if header is not None and uid in sizes:
                    out[uid] = ImapMessage(uid, sizes[uid], bytes(header), complete=False)
        return [out[u] for u in sorted(out)]

    # ---------------------------------------------------------------------------------------------- writing

    def folder_name(self, path: str) -> str:
        """Server name of a ``/``-separated folder path, inside the personal namespace."""
        client = self._require()
        prefix, delimiter = "", "/"
        with self._errors("namespace"):
            if client.has_capability("NAMESPACE"):
                personal = client.namespace().personal
                if personal:
                    prefix, delimiter = personal[0][0] or "", personal[0][1] or delimiter
            else:
                listed = client.list_folders("", "INBOX")
                if listed and listed[0][1]:
                    delimiter = listed[0][1].decode() if isinstance(listed[0][1], bytes) else listed[0][1]
        name = delimiter.join(part for part in path.split("/") if part)
        return name if not prefix or name.startswith(prefix) else prefix + name

    def ensure_folder(self, path: str) -> str:
        name = self.folder_name(path)
        if name in self._folders_ready:
            return name
        client = self._require()
        with self._errors("create folder"):
            if not client.folder_exists(name):
                try:
                    client.create_folder(name)
                except IMAPClientError:
                    if not client.folder_exists(name):  # created meanwhile by another session: fine
                        raise
        self._folders_ready.add(name)
        return name

    def mark_done(self, uids: Sequence[int], processed_folder: str | None) -> bool:
        """``\\Seen`` then move to ``processed_folder``; returns False when the server could only flag."""
        if not uids:
            return False
        client = self._require()
        with self._errors("flag"):
            client.add_flags(list(uids), [_SEEN], silent=True)
        if processed_folder is None or not client.has_capability("MOVE"):
            return False
        target = self.ensure_folder(processed_folder)
        with self._errors("move"):
            client.move(list(uids), target)
        return True

    def append(self, raw: bytes, folder: str | None = None, flags: Sequence[bytes] = ()) -> None:
        client = self._require()
        with self._errors("append"):
            client.append(folder or self.folder, raw, flags=tuple(flags))

    # ---------------------------------------------------------------------------------------------- waiting

    def wait_for_news(self, timeout: float, *, since_uid: int | None, poll_interval: float = 30.0) -> bool:
        """True as soon as an unseen message with a UID above ``since_uid`` is there (or may be: IDLE said so).

        Unseen only, as the poll fetches: a mail read elsewhere (a webmail) would otherwise announce news forever."""
        if self.search_new(since_uid=since_uid, unseen_only=True):
            return True
        timeout = max(0.0, min(timeout, MAX_IDLE_SECONDS))
        if self.supports_idle:
            return self._idle(timeout)
        deadline = time.monotonic() + timeout
        client = self._require()
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(poll_interval, remaining))
            with self._errors("noop"):
                client.noop()
            if self.search_new(since_uid=since_uid, unseen_only=True):
                return True
        return False

    def _idle(self, timeout: float) -> bool:
        client = self._require()
        deadline = time.monotonic() + timeout
        news = False
        with self._errors("idle"):
            client.idle()
            try:
                while not news and (remaining := deadline - time.monotonic()) > 0:
                    responses = client.idle_check(timeout=remaining)
                    news = any(len(r) >= 2 and r[1] in _NEWS for r in responses)
                    if not responses and time.monotonic() < deadline - 0.05:
                        break  # woken with nothing to read: the connection was closed under us
            finally:
                client.idle_done()
        return news


def _text(exc: BaseException) -> str:
    text = " ".join(str(a.decode("utf-8", "replace") if isinstance(a, bytes) else a) for a in exc.args)
    return text or type(exc).__name__


def _header_block(raw: bytes, limit: int) -> bytes:
    """Header block with its closing blank line, as ``BODY[HEADER]`` would give it, at most ``limit`` bytes."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(separator)
        if end >= 0:
            return raw[: min(limit, end + len(separator))]
    return raw[:limit]
