"""The state of an outgoing mail and of its delivery as they move — per-recipient statuses, their aggregate, the
SMTP exchange record, a failed delivery — and the jobs a change queues: the mail's send, a ZAM, the replacements
that waited for it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.documents.delivery import DeliveryStatus, set_delivery_status
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_outbound.common import norm
from opensegur.store import jobs
from opensegur.store.models import Delivery, Document, Exchange, Mail, utcnow
from opensegur.transactions.zam import ZamKind

log = logging.getLogger(__name__)


def enqueue_send(s: Session, doc: Document, d: Delivery, suffix: str = "") -> None:
    jobs.enqueue(
        s,
        JobKind.MSS_SEND,
        f"{JobKind.MSS_SEND}:{d.id}{suffix}",
        {"delivery_id": d.id},
        structure_id=doc.structure_id,
        patient_id=doc.patient_id,
    )


def record_exchange(
    s: Session, d: Delivery, mail: Mail, outcome: str, detail: str | None, duration_ms: int | None = None
) -> None:
    s.add(
        Exchange(
            delivery_id=d.id,
            document_id=d.document_id,
            transaction="SMTP",
            endpoint=f"mssante:{mail.mailbox}"[:300],
            request_sha256=mail.payload_sha256,
            response_sha256=None,
            http_status=None,
            outcome=outcome,
            detail=detail,
            duration_ms=duration_ms,
        )
    )


def enqueue_zam(
    s: Session,
    mail: Mail,
    kind: ZamKind,
    recipient: str,
    ok: bool,
    *,
    code: str = "",
    label: str = "",
    at: datetime | None = None,
) -> None:
    """Queue one ZAM about ``recipient``; nothing when no DPI waits for one (REST intake, manual send)."""
    doc = s.get(Document, mail.document_id) if mail.document_id else None
    if doc is None or not doc.context.get("zam") or not mail.detail.get("zam", False):
        return
    flag = "ack_reception" if kind == "reception_mss" else "ack_lecture_mss"
    if ok and not doc.flags.get(flag):
        return  # success acknowledgements only when asked for; failures always (see the package doc)
    info = (mail.detail.get("recipients") or {}).get(norm(recipient)) or {}
    jobs.enqueue(
        s,
        JobKind.MSS_ZAM,
        f"{JobKind.MSS_ZAM}:{mail.id}:{kind}:{norm(recipient)}:{'Y' if ok else 'N'}",
        {
            "mail_id": mail.id,
            "kind": kind,
            "recipient": norm(recipient),
            "recipient_id": info.get("id"),
            "ok": ok,
            "code": code,
            "label": label[:200],
            "at": (at or utcnow()).isoformat(),
        },
        structure_id=mail.structure_id,
        patient_id=mail.patient_id,
        lane=jobs.Lane.PROMPT,
    )


def set_recipient(mail: Mail, address: str, **values: Any) -> None:
    # JSON columns are not mutation-tracked: rebuild the dicts so the change reaches the UPDATE.
    recipients = {k: dict(v) for k, v in (mail.detail.get("recipients") or {}).items()}
    recipients[norm(address)] = {**recipients.get(norm(address), {}), **values}
    mail.detail = {**mail.detail, "recipients": recipients}


def aggregate(mail: Mail) -> str:
    statuses = [v.get("status", "pending") for v in (mail.detail.get("recipients") or {}).values()]
    if not statuses:
        return mail.status
    if all(x == "failed" for x in statuses):
        return "failed"
    live = [x for x in statuses if x != "failed"]
    if all(x == "read" for x in live):
        return "read"
    if all(x in ("delivered", "read") for x in live):
        return "delivered"
    return "sent"


def document_only_for_mss(doc: Document) -> bool:
    return doc.flags.get("dest_dmp", True) is False


def fail_delivery(
    s: Session, d: Delivery, mail: Mail, code: str, message: str, *, zam_address: str | None = None
) -> None:
    set_delivery_status(d, DeliveryStatus.DEAD)
    d.error_code, d.last_error = code, message
    mail.status, mail.reason = "failed", message
    doc = d.document
    if document_only_for_mss(doc):
        set_status(doc, DocumentStatus.ERROR, f"{code} : {message}")
    addresses = mail.recipients or ([zam_address] if zam_address else [])
    for address in addresses:
        set_recipient(mail, address, status="failed", code=code)
        enqueue_zam(s, mail, "reception_mss", address, ok=False, code="554", label=message)
    if not addresses:
        log.warning("delivery %s failed before any recipient was known: no ZAM sent", d.id)
    wake_waiting(s, d)


def wake_waiting(s: Session, parent: Delivery) -> None:
    """Queue the replacement mails that waited for this one (same destination)."""
    doc = parent.document
    waiting = s.scalars(
        select(Delivery)
        .join(Document)
        .where(
            Document.structure_id == doc.structure_id,
            Document.kind == "replacement",
            Document.parent_unique_id == doc.unique_id,
            Delivery.destination == parent.destination,
            Delivery.status == DeliveryStatus.WAITING,
        )
    ).all()
    for child in waiting:
        set_delivery_status(child, DeliveryStatus.PENDING)
        enqueue_send(s, child.document, child, f":after:{parent.id}:{utcnow().isoformat()}")
