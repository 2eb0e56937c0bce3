"""One SMTP transaction for a mail a prepare step stored (a document or an appointment), and its outcome: accepted,
refused (for now or for good), or the operator unreachable (retried later).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.documents.delivery import DeliveryStatus, give_up, set_delivery_status
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.errors import RetryLater
from opensegur.flows.mss_outbound.common import norm, smtp_code
from opensegur.flows.mss_outbound.tracking import (
    aggregate,
    document_only_for_mss,
    enqueue_zam,
    record_exchange,
    set_recipient,
    wake_waiting,
)
from opensegur.flows.mssante_ports import MailSender, MailSendResult, MailUnavailableError
from opensegur.flows.worker import PermanentError
from opensegur.store.db import Database
from opensegur.store.models import Delivery, Job, Mail, utcnow
from opensegur.transactions.mss_mail import SmtpEnvelope


@dataclass
class Ready:
    mail_id: int
    raw: bytes
    envelope: SmtpEnvelope


def stored_envelope(mail: Mail) -> SmtpEnvelope:
    e = mail.detail["envelope"]
    return SmtpEnvelope(
        e["mail_from"], tuple(e["rcpt_to"]), tuple(e["mail_options"]), tuple(e["rcpt_options"])
    )


def _temporarily_refused(result: MailSendResult, envelope: SmtpEnvelope) -> str | None:
    """The 4xx reply when every recipient was refused for now (full mailbox, greylisting): the mail is retried."""
    refused = {norm(a): text for a, text in result.refused.items()}
    if result.accepted or not refused or any(norm(a) not in refused for a in envelope.rcpt_to):
        return None
    if all(smtp_code(text, "5").startswith("4") for text in refused.values()):
        return "; ".join(refused.values())
    return None


async def _send(db: Database, mailer: MailSender, ready: Ready) -> dict[str, Any]:
    """One SMTP transaction and its outcome; a refusal that may pass later is retried like an outage."""
    try:
        result = await mailer.send(ready.raw, ready.envelope)
        later = _temporarily_refused(result, ready.envelope)
        if later is not None:
            raise MailUnavailableError(later)
    except MailUnavailableError as exc:
        await asyncio.to_thread(_unavailable, db, ready.mail_id, str(exc))
        # The operator down is waited out; a full mailbox or greylisting spends the attempts.
        raise RetryLater(f"Opérateur MSSanté injoignable : {exc}", outage=exc.outage) from exc
    return await asyncio.to_thread(_after_send, db, ready.mail_id, result)


def mail_given_up(s: Session, job: Job) -> None:
    """The mail's job is in the dead letters (the operator unreachable past the outage time, or a mailbox full at
    every attempt): its delivery and the mail waiting to go show that it failed for good, not that a new try is
    planned. An operator's « Relancer » of the job sends it again."""
    d = s.get(Delivery, int(job.args["delivery_id"]))
    if d is None or give_up(d) is None:
        return
    for mail in s.scalars(select(Mail).where(Mail.delivery_id == d.id, Mail.status == "pending")):
        mail.status = "failed"


def _unavailable(db: Database, mail_id: int, message: str) -> None:
    with db.session() as s:
        mail = s.get_one(Mail, mail_id)
        mail.status, mail.reason = "pending", message
        if mail.delivery_id is not None:
            d = s.get_one(Delivery, mail.delivery_id)
            set_delivery_status(d, DeliveryStatus.FAILED)
            d.error_code, d.last_error = "MSS_UNAVAILABLE", message
            record_exchange(s, d, mail, "retry", message)
            if document_only_for_mss(d.document):
                set_status(d.document, DocumentStatus.ERROR, f"MSS_UNAVAILABLE : {message}")


def _after_send(db: Database, mail_id: int, result: MailSendResult) -> dict[str, Any]:
    with db.session() as s:
        mail = s.get_one(Mail, mail_id)
        refused = {norm(a): text for a, text in result.refused.items()}
        accepted = [norm(a) for a in result.accepted] or [
            norm(a) for a in mail.recipients if norm(a) not in refused
        ]
        now = utcnow()
        for address in accepted:
            set_recipient(mail, address, status="sent")
        for address, text in refused.items():
            set_recipient(mail, address, status="failed", code=smtp_code(text, "554"), diagnostic=text[:300])
            enqueue_zam(s, mail, "reception_mss", address, ok=False, code=smtp_code(text, "554"), at=now)
        mail.status = aggregate(mail)
        summary = "; ".join(f"{a} : {t}" for a, t in refused.items()) or None
        mail.reason = summary
        d = s.get(Delivery, mail.delivery_id) if mail.delivery_id else None
        if d is None:
            return {"mail_id": mail.id, "accepted": len(accepted), "refused": len(refused)}
        doc = d.document
        if accepted:
            set_delivery_status(d, DeliveryStatus.DELIVERED)
            d.delivered_at, d.error_code, d.last_error = now, None, summary
            record_exchange(s, d, mail, "success", summary)
            if document_only_for_mss(doc):
                set_status(doc, DocumentStatus.SENT)
        else:
            first = next(iter(refused.values()), "Destinataires refusés")
            set_delivery_status(d, DeliveryStatus.DEAD)
            d.error_code, d.last_error = smtp_code(first, "554"), summary or first
            record_exchange(s, d, mail, "rejected", summary)
            if document_only_for_mss(doc):
                set_status(doc, DocumentStatus.ERROR, f"Courriel refusé : {summary}")
        wake_waiting(s, d)
        return {"mail_id": mail.id, "accepted": len(accepted), "refused": len(refused)}


async def send_prepared(
    db: Database, mailer: MailSender, ready: Ready | dict[str, Any], *, not_built: str, all_refused: str
) -> dict[str, Any]:
    """Send what a prepare step stored, or pass on why it stored nothing; a mail no recipient took is a failure."""
    if not isinstance(ready, Ready):
        if "failed" in ready:
            raise PermanentError(f"{not_built} : {ready['failed']}")
        return ready
    outcome = await _send(db, mailer, ready)
    if not outcome["accepted"]:
        raise PermanentError(all_refused)
    return outcome
