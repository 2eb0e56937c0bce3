"""What the MSSanté flows need from the outside world, as small interfaces.

The flows (outbound documents and appointments, inbound polling and integration, DSN/MDN follow-up) call these;
``connectors/`` implements them over SMTP, IMAP and MLLP, and tests implement them in memory. No flow opens a
socket or builds MIME by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from opensegur.errors import RetryLater
from opensegur.transactions.mss_mail import SmtpEnvelope


class MailUnavailableError(RetryLater):
    """The operator could not be reached, timed out or answered 4xx for every recipient: retry later. Only the
    first two are an ``outage``."""


@dataclass
class MailSendResult:
    """The SMTP answer: recipients accepted, and those refused with the server's reply (e.g. ``550 5.1.1 …``)."""

    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


class MailSender(Protocol):
    async def send(self, raw: bytes, envelope: SmtpEnvelope) -> MailSendResult: ...


@dataclass(frozen=True)
class FetchedMail:
    """One message read from a polled mailbox, not yet marked as processed on the server."""

    mailbox: str
    uid: int
    raw: bytes


class MailboxReader(Protocol):
    async def fetch_new(self, mailbox: str, limit: int) -> list[FetchedMail]:
        """Messages not yet processed; the server keeps them until :meth:`mark_done`."""
        ...

    async def mark_done(self, mailbox: str, uids: list[int]) -> None:
        """Called only after the mails are committed in our store, so a crash in between re-reads them."""
        ...


@runtime_checkable
class IdleMailboxReader(MailboxReader, Protocol):
    """A reader that can also wait for new mail (IMAP IDLE where the server offers it); the poller then uses it."""

    async def wait_for_news(self, mailbox: str, timeout: float) -> bool:
        """True as soon as new mail may be there, False after ``timeout`` without any.

        Raises MailUnavailableError when the connection is lost, including when the reader is closed meanwhile.
        """
        ...


class DpiSender(Protocol):
    async def send(self, message: bytes) -> bytes:
        """Send one HL7 v2 message to the DPI over MLLP and return its ACK (raises RetryLater when down)."""
        ...
