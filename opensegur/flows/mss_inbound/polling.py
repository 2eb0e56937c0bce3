"""Polling the hospital mailboxes: every fetched mail stored, with its ``mss.integrate`` job, before the server is
told it was processed; DSN/MDN reports handed to the outbound flow."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from email.errors import HeaderParseError
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_inbound.context import SYSTEM_ACTOR, audit, enqueue_mdn, header_value, read_headers
from opensegur.flows.mss_outbound import record_report
from opensegur.flows.mssante_ports import FetchedMail, IdleMailboxReader, MailboxReader, MailUnavailableError
from opensegur.logsafe import failure
from opensegur.store import jobs
from opensegur.store.db import Database, insert_unless_exists
from opensegur.store.models import Mail
from opensegur.store.payloads import store_payload

log = logging.getLogger(__name__)

_MAIL = cast(Table, Mail.__table__)


def _is_report(headers: Message) -> bool:
    try:
        return headers.get_content_type() == "multipart/report"
    except (ValueError, TypeError, IndexError, HeaderParseError):
        return False


def _store_one(s: Session, mailbox: str, fetched: FetchedMail) -> bool:
    """Store one fetched mail; False when it was already stored (re-read after a crash, or polled twice).

    A reader may hand over only the header block of a mail above its size limit, announcing the real size in
    ``size``: that mail is rejected at once (the headers are enough to answer the sender) and its header kept.
    """
    raw = fetched.raw
    announced = int(getattr(fetched, "size", 0) or 0)
    headers = read_headers(raw)
    report = _is_report(headers)
    if report and record_report(s, raw, mailbox):
        return True
    digest = store_payload(s, raw)
    message_id = header_value(headers, "Message-ID")
    status, reason, mdn_code = "received", None, None
    if announced > len(raw):
        status, mdn_code = "rejected", "906"
        reason = f"Courriel refusé : trop volumineux ({announced} octets), seul son en-tête est conservé"
    elif report:
        status, reason = "triage", "Accusé (DSN/MDN) qui ne se rapporte à aucun courriel envoyé connu"
    values = {
        "direction": "in",
        "mailbox": mailbox,
        "message_id": message_id[:300] if message_id else None,
        "sender": parseaddr(header_value(headers, "From") or "")[1] or None,
        "recipients": [a for _, a in getaddresses([header_value(headers, "To") or ""]) if a][:50],
        "subject": (header_value(headers, "Subject") or "")[:500] or None,
        "payload_sha256": digest,
        "status": status,
        "reason": reason,
        "mdn_code": mdn_code,
        "detail": {"size": max(len(raw), announced)},
    }
    by_digest = f"in:{mailbox}:{digest}"
    key = f"in:{mailbox}:{message_id}" if message_id and len(message_id) <= 300 else by_digest
    # One INSERT that yields to the row already there (re-read, or another poller in between) where a read, a
    # savepoint and an ORM flush took three statements and a unit of work per mail.
    mail_id = _insert_mail(s, {**values, "key": key})
    if mail_id is None:
        if key == by_digest or s.scalar(select(Mail.payload_sha256).where(Mail.key == key)) == digest:
            return False
        # Same Message-ID, other bytes: a different mail all the same, and nothing received is dropped.
        mail_id = _insert_mail(s, {**values, "key": by_digest})
        if mail_id is None:
            return False
    audit(
        s,
        SYSTEM_ACTOR,
        "mss_receive",
        mail_id,
        patient_id=None,
        reason=None,
        mailbox=mailbox,
        status_after=status,
    )
    if status == "received":
        jobs.enqueue(s, JobKind.MSS_INTEGRATE, f"{JobKind.MSS_INTEGRATE}:{mail_id}", {"mail_id": mail_id})
    elif status == "rejected":
        enqueue_mdn(s, s.get_one(Mail, mail_id), mdn_code, False)
    return True


def _insert_mail(s: Session, values: dict[str, Any]) -> int | None:
    """The new mail's id, or None when a mail of that key is already stored."""
    return s.scalar(insert_unless_exists(s, _MAIL, "key", "id"), values)


async def _poll(db: Database, reader: MailboxReader, mailbox: str, limit: int) -> tuple[int, int]:
    """(fetched, newly stored) for one poll of one mailbox."""
    fetched = await reader.fetch_new(mailbox, limit)
    if not fetched:
        return 0, 0

    def _store() -> int:
        with db.session() as s:
            return sum(_store_one(s, mailbox, f) for f in fetched)

    stored = await asyncio.to_thread(_store)
    await reader.mark_done(mailbox, [f.uid for f in fetched])
    if stored:
        log.info("mailbox poll: %d new mail(s) stored", stored)
    return len(fetched), stored


async def poll_mailbox(db: Database, reader: MailboxReader, mailbox: str, limit: int) -> int:
    """Fetch new mails, store them, then mark them done on the server. Returns how many were new."""
    return (await _poll(db, reader, mailbox, limit))[1]


async def _poll_loop(
    db: Database,
    reader: MailboxReader,
    mailbox: str,
    *,
    interval_s: float,
    limit: int,
    stop: asyncio.Event,
) -> None:
    """Poll one mailbox until cancelled (by :func:`run_poller` once ``stop`` is set)."""
    idle = reader if isinstance(reader, IdleMailboxReader) else None
    loop = asyncio.get_running_loop()
    announced = False  # the last wait said there was news
    while True:
        try:
            fetched, stored = await _poll(db, reader, mailbox, limit)
            if stored and fetched >= limit:
                continue  # a backlog: the next batch at once
            # News that the poll did not find (a mail someone already read in a webmail is above the reader's
            # last UID but not unread): waiting again would answer at once, so this round is a plain sleep.
            spurious, announced = announced and not fetched, False
            if idle is not None and not spurious:
                started = loop.time()
                announced = await idle.wait_for_news(mailbox, interval_s)
                if announced:
                    continue
                # No news: still at most one poll per interval, even when the wait ended early (IDLE capped by
                # the reader, a reader answering at once).
                await asyncio.sleep(interval_s - (loop.time() - started))
                continue
        except MailUnavailableError as exc:
            # Stopping closes the reader under a poll or an IDLE in progress: nothing to warn about.
            if not stop.is_set():
                log.warning("mailbox %s: poll failed, retried in %g s: %s", mailbox, interval_s, exc)
        except Exception as exc:  # the loop must outlive any one bad poll
            if not stop.is_set():
                log.error("mailbox %s: poll crashed, retried in %g s: %s", mailbox, interval_s, failure(exc))
        await asyncio.sleep(interval_s)


async def run_poller(
    db: Database,
    reader: MailboxReader,
    mailboxes: Sequence[str],
    *,
    interval_s: float,
    limit: int,
    stop: asyncio.Event,
) -> None:
    """Poll every mailbox, each in its own loop, until ``stop`` is set; survives operator outages.

    After each poll a loop waits for news when the reader offers it (:class:`IdleMailboxReader`: IMAP IDLE),
    polling again as soon as news comes and at the latest after ``interval_s``; otherwise it sleeps
    ``interval_s``. A failed poll or wait is retried after ``interval_s``. A mailbox whose server hangs holds
    only its own loop.
    """
    loops = [
        asyncio.create_task(
            _poll_loop(db, reader, box, interval_s=interval_s, limit=limit, stop=stop),
            name=f"mss-poll:{box}",
        )
        for box in dict.fromkeys(mailboxes)
    ]
    try:
        await stop.wait()
    finally:
        # Cutting a poll short loses nothing: stored mails are committed before the server is told, the others
        # are still on the server and the idempotence key absorbs the re-read. A wait abandoned in a reader's
        # thread ends when the platform closes the reader (that breaks the IDLE).
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
