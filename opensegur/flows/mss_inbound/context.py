"""What every step of the inbound MSSanté flow shares: its context and limits, the triage error, and the small
writes on a mail (status, audit, MDN job) and reads of its headers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from email import policy
from email.errors import HeaderParseError
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from opensegur.errors import OpenSegurError
from opensegur.flows.jobs import JobKind
from opensegur.flows.mssante_ports import DpiSender, MailSender
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import AuditEvent, Mail
from opensegur.transactions.lps_mdm import MessageRoute
from opensegur.transactions.mss_mail import DEFAULT_MAX_ATTACHMENT, DEFAULT_MAX_BYTES
from opensegur.transactions.xdm import DEFAULT_MAX_FILES, DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL

SYSTEM_ACTOR = "mss-inbound"

# The blank line that ends a mail's header block, whatever its line endings (RFC 5322 CRLF, or bare LF).
_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class MailLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_attachment: int = DEFAULT_MAX_ATTACHMENT
    xdm_max_total: int = DEFAULT_MAX_TOTAL
    xdm_max_ratio: float = DEFAULT_MAX_RATIO
    xdm_max_files: int = DEFAULT_MAX_FILES


@dataclass
class MssInboundContext:
    db: Database
    dpi: DpiSender
    mail_sender: MailSender
    # MSH-3 to MSH-6 and MSH-11/18 of the messages sent to the DPI.
    endpoint: MessageRoute = MessageRoute()
    limits: MailLimits = field(default_factory=MailLimits)
    # Hospital mailbox (lower case) → site id: patients are then matched in that site only (one GHT, several
    # DPIs), and a mail in triage is seen by that site's staff.
    mailbox_structures: dict[str, int] = field(default_factory=dict)
    # An AR means "rejected for a circumstantial reason, send again later" (volet): that many attempts first.
    ar_attempts: int = 3
    reporting_ua: str = "OpenSegur"
    # Also send the structured results of a CR de biologie to the DPI as an ORU^R01, once it took the document.
    forward_results_oru: bool = False


class InboundError(OpenSegurError, ValueError):
    """A triage action that cannot be done. ``message_fr`` is shown to the user."""

    def __init__(self, code: str, message_fr: str) -> None:
        super().__init__(f"{code}: {message_fr}")
        self.code = code
        self.message_fr = message_fr


# Every mail received and every change of its status is audited: a Core INSERT, as no ORM object of the entry is
# used afterwards (an ORM entity cost the poll a flush of its own per mail).
_AUDIT = insert(cast(Table, AuditEvent.__table__))


def audit(
    s: Session,
    actor: str,
    action: str,
    mail_id: int,
    patient_id: int | None,
    reason: str | None,
    **detail: Any,
) -> None:
    s.execute(
        _AUDIT,
        {
            "actor": actor,
            "action": action,
            "patient_id": patient_id,
            "reason": (reason or "")[:200] or None,
            "detail": {"mail_id": mail_id, **detail},
        },
    )


@dataclass
class MailRow:
    """The columns of an inbound mail that integration reads and sets, read under the row's lock and written back by
    :func:`save_mail`."""

    id: int
    mailbox: str
    status: str
    reason: str | None
    mdn_code: str | None
    structure_id: int | None
    patient_id: int | None
    document_id: int | None
    detail: dict[str, Any]


# A mail is integrated once, its columns read and then written: Core statements on the row instead of an entity
# loaded, tracked and flushed by the unit of work.
_MAIL = cast(Table, Mail.__table__)
_LOCK_MAIL = (
    select(*(_MAIL.c[f.name] for f in fields(MailRow))).where(_MAIL.c.id == bindparam("mail_id")).with_for_update()
)
_SAVE_MAIL = update(_MAIL).where(_MAIL.c.id == bindparam("mail_id"))


def lock_mail(s: Session, mail_id: int) -> MailRow:
    """The mail's row, locked until the transaction ends (FOR UPDATE; SQLite's writer lock already holds it)."""
    return MailRow(*s.execute(_LOCK_MAIL, {"mail_id": mail_id}).one())


def save_mail(s: Session, mail: MailRow) -> None:
    s.execute(
        _SAVE_MAIL,
        {
            "mail_id": mail.id,
            "status": mail.status,
            "reason": mail.reason,
            "mdn_code": mail.mdn_code,
            "structure_id": mail.structure_id,
            "patient_id": mail.patient_id,
            "document_id": mail.document_id,
            "detail": mail.detail,
        },
    )


def set_mail_status(
    s: Session, mail: Mail | MailRow, status: str, reason: str | None, code: str | None, actor: str, action: str
) -> None:
    before = mail.status
    mail.status, mail.reason, mail.mdn_code = status, reason, code
    audit(
        s,
        actor,
        action,
        mail.id,
        mail.patient_id,
        reason,
        status_before=before,
        status_after=status,
        code=code,
    )


def header_value(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError, HeaderParseError):
        return None
    return " ".join(str(value).split()) if value is not None else None


def read_headers(raw: bytes) -> Message:
    # Headers only: enough to key, route and answer a mail whose body may be hostile or unreadable. The parser is
    # handed the header block alone: in headers-only mode it still splits the whole body into lines, which on a
    # mail carrying an XDM package cost several times what reading the headers does.
    end = _HEADER_END.search(raw)
    return BytesHeaderParser(policy=policy.default).parsebytes(raw[: end.end()] if end else raw)


def enqueue_mdn(s: Session, mail: Mail | MailRow, code: str | None, manual: bool, key_suffix: str = "") -> None:
    jobs.enqueue(
        s,
        JobKind.MSS_MDN,
        f"{JobKind.MSS_MDN}:{mail.id}:{code or 'ok'}{key_suffix}",
        {"mail_id": mail.id, "code": code, "manual": manual},
        structure_id=mail.structure_id,
        patient_id=mail.patient_id,
        lane=jobs.Lane.PROMPT,
    )
