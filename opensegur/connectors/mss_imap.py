"""MailboxReader over IMAP (``transport/imap.py``): one connection per polled MSSanté mailbox, kept open.

- A session is opened on first use and reused; after a lost connection it is dropped, and a call that failed on
  a *reused* session is tried once more on a fresh one (servers close idle connections without notice).
- Oversized messages come back as :class:`OversizedMail`: the header block only, so the inbound flow can answer
  "message trop volumineux" to the sender without loading the message. They stay on the server and are marked
  done like any other once the flow has recorded them.
- ``mark_done`` refuses to touch UIDs read under another UIDVALIDITY (the server renumbered the folder): the
  mails are then simply read again and the flow's idempotence key recognises them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from opensegur.flows.mssante_ports import FetchedMail, MailUnavailableError
from opensegur.transactions.mss_mail import DEFAULT_MAX_BYTES
from opensegur.transport.imap import (
    DEFAULT_HEADER_BYTES,
    ImapAuthError,
    ImapError,
    ImapSecurity,
    ImapSession,
    ImapSettings,
    ImapUnavailableError,
)

__all__ = ["ImapMailboxReader", "OversizedMail"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class OversizedMail(FetchedMail):
    """A mail above the size limit: ``raw`` holds its header block only; ``size`` is what the server announced."""

    size: int = 0


@dataclass
class _Mailbox:
    session: ImapSession
    lock: threading.Lock = field(default_factory=threading.Lock)
    uidvalidity: int | None = None  # of the last fetch_new, so mark_done never flags renumbered messages
    last_uid: int | None = None  # highest UID handed out, for wait_for_news


class ImapMailboxReader:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        credentials: Mapping[str, str],
        security: ImapSecurity = "tls",
        client_cert: Path | None = None,
        client_key: Path | None = None,
        ca: Path | None = None,
        timeout: float = 30.0,
        folder: str = "INBOX",
        processed_folder: str | None = "OpenSegur/Traites",
        max_message_bytes: int = DEFAULT_MAX_BYTES,
        header_bytes: int = DEFAULT_HEADER_BYTES,
        poll_interval: float = 30.0,
    ) -> None:
        self.settings = ImapSettings(
            host=host,
            port=port,
            security=security,
            client_cert=client_cert,
            client_key=client_key,
            ca=ca,
            timeout=timeout,
        )
        self._credentials = dict(credentials)
        self.folder = folder
        self.processed_folder = processed_folder
        self.max_message_bytes = max_message_bytes
        self.header_bytes = header_bytes
        self.poll_interval = poll_interval
        self._boxes: dict[str, _Mailbox] = {}
        self._boxes_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------------------------------------ port

    async def fetch_new(self, mailbox: str, limit: int) -> list[FetchedMail]:
        box = self._box(mailbox)

        def run(session: ImapSession) -> list[FetchedMail]:
            uids = session.search_new()[: max(0, limit)]
            messages = session.fetch(uids, max_bytes=self.max_message_bytes, header_bytes=self.header_bytes)
            box.uidvalidity = session.uidvalidity
            if messages:
                box.last_uid = max(box.last_uid or 0, messages[-1].uid)
            return [
                FetchedMail(mailbox, m.uid, m.raw)
                if m.complete
                else OversizedMail(mailbox, m.uid, m.raw, size=m.size)
                for m in messages
            ]

        return await asyncio.to_thread(self._call, mailbox, box, "lecture", run)

    async def mark_done(self, mailbox: str, uids: list[int]) -> None:
        if not uids:
            return
        box = self._box(mailbox)

        def run(session: ImapSession) -> None:
            if box.uidvalidity is not None and session.uidvalidity != box.uidvalidity:
                log.warning(
                    "UIDVALIDITY of an IMAP mailbox changed since the fetch: %d message(s) left as they are,"
                    " they will be read again",
                    len(uids),
                )
                return
            if not session.mark_done(sorted(set(uids)), self.processed_folder) and self.processed_folder:
                log.info("IMAP server without MOVE: processed messages are flagged \\Seen and left in place")

        await asyncio.to_thread(self._call, mailbox, box, "marquage", run)

    # ------------------------------------------------------------------------------------------------ extra

    async def wait_for_news(self, mailbox: str, timeout: float) -> bool:
        """Block (IDLE, or polling when the server has no IDLE) until new mail or ``timeout``; True if new mail.

        Other calls on the same mailbox wait meanwhile (one connection per mailbox): call it between polls.
        """
        box = self._box(mailbox)

        def run(session: ImapSession) -> bool:
            return session.wait_for_news(timeout, since_uid=box.last_uid, poll_interval=self.poll_interval)

        return await asyncio.to_thread(self._call, mailbox, box, "attente", run)

    async def close(self) -> None:
        """Break any IDLE in progress and log out of every mailbox; the reader is not usable afterwards."""
        with self._boxes_lock:
            self._closed = True
            boxes = list(self._boxes.values())
        for box in boxes:
            box.session.interrupt()
        for box in boxes:
            await asyncio.to_thread(self._close_box, box)

    # ------------------------------------------------------------------------------------------- internals

    @staticmethod
    def _close_box(box: _Mailbox) -> None:
        with box.lock:
            box.session.close()

    def _box(self, mailbox: str) -> _Mailbox:
        with self._boxes_lock:
            box = self._boxes.get(mailbox)
            if box is None:
                password = self._credentials.get(mailbox)
                if password is None:
                    raise MailUnavailableError(
                        f"Aucun identifiant IMAP configuré pour la boîte aux lettres {mailbox}"
                    )
                box = _Mailbox(ImapSession(self.settings, mailbox, password, self.folder))
                self._boxes[mailbox] = box
            return box

    def _call(self, mailbox: str, box: _Mailbox, step: str, run: Callable[[ImapSession], T]) -> T:
        with box.lock:
            if self._closed:
                raise MailUnavailableError("Lecteur IMAP MSSanté arrêté")
            session = box.session
            try:
                reused = session.is_open
                try:
                    session.open()
                    return run(session)
                except ImapUnavailableError:
                    session.close()
                    if not reused or self._closed:
                        raise
                # The kept-open connection had died (servers drop idle clients silently): one fresh try.
                session.open()
                return run(session)
            except ImapUnavailableError as exc:
                session.close()
                raise MailUnavailableError(
                    f"Serveur IMAP MSSanté injoignable ({step}, {mailbox}) : {exc}"
                ) from exc
            except ImapAuthError as exc:
                session.close()
                raise MailUnavailableError(
                    f"Authentification IMAP refusée pour la boîte aux lettres {mailbox} :"
                    f" vérifier l'identifiant et le mot de passe configurés ({exc})"
                ) from exc
            except ImapError as exc:
                raise MailUnavailableError(
                    f"Le serveur IMAP MSSanté a refusé l'opération ({step}) : {exc}"
                ) from exc
