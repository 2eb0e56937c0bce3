"""The MDN back to the sender (``mss.mdn``, RFC 8098): sent only when asked, automatically only to the
Return-Path, otherwise held until a person confirms it."""

from __future__ import annotations

import asyncio
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select

from opensegur.errors import RetryLater
from opensegur.flows.mss_inbound.context import (
    SYSTEM_ACTOR,
    InboundError,
    MailLimits,
    MssInboundContext,
    audit,
    enqueue_mdn,
    header_value,
    read_headers,
)
from opensegur.flows.mssante_ports import MailUnavailableError
from opensegur.store.db import Database
from opensegur.store.models import Mail
from opensegur.store.payloads import load_payload, store_payload
from opensegur.transactions.mdn import MdnError, build_mdn
from opensegur.transactions.mss_mail import InboundMail, MailError, parse_inbound_mail, smtp_envelope


def _original_for_mdn(
    raw: bytes, limits: MailLimits
) -> tuple[InboundMail | dict[str, str], str | None, str | None]:
    """(what build_mdn quotes, Disposition-Notification-To, Return-Path) — headers only for an unreadable mail."""
    try:
        inbound = parse_inbound_mail(raw, max_bytes=limits.max_bytes, max_attachment=limits.max_attachment)
    except MailError:
        headers = read_headers(raw)
        fields = {
            name: header_value(headers, name) or ""
            for name in ("Message-ID", "Subject", "Disposition-Notification-To", "Original-Recipient")
        }
        notify = parseaddr(fields["Disposition-Notification-To"])[1] or None
        return_path = parseaddr(header_value(headers, "Return-Path") or "")[1] or None
        return fields, notify, return_path
    return inbound, inbound.disposition_notification_to, inbound.return_path


async def send_mdn(ctx: MssInboundContext, mail_id: int, code: str | None, manual: bool) -> dict[str, Any]:
    """The ``mss.mdn`` job. Sends at most one MDN per mail and outcome (``out:mdn:<mail>:<code|ok>``)."""
    out_key = f"out:mdn:{mail_id}:{code or 'ok'}"

    def _prepare() -> tuple[bytes, Any, str] | dict[str, Any]:
        with ctx.db.session() as s:
            mail = s.get_one(Mail, mail_id)
            sent = s.scalar(select(Mail).where(Mail.key == out_key))
            if sent is not None and sent.status == "sent":
                return {"skipped": "already sent"}
            raw = load_payload(s, mail.payload_sha256 or "")
            original, notify, return_path = _original_for_mdn(raw, ctx.limits)
            if not notify:
                mail.detail = {**mail.detail, "mdn": "not_requested"}
                return {"skipped": "not requested"}
            if not manual and return_path and return_path.lower() != notify.lower():
                mail.detail = {**mail.detail, "mdn": "confirmation_required", "mdn_pending_code": code}
                audit(
                    s,
                    SYSTEM_ACTOR,
                    "mss_mdn_held",
                    mail.id,
                    mail.patient_id,
                    "Return-Path différent de l'adresse de l'accusé",
                )
                return {"skipped": "confirmation required"}
            try:
                msg = build_mdn(
                    original,
                    from_addr=mail.mailbox,
                    final_recipient=mail.mailbox,
                    disposition="processed",
                    code=code,
                    automatic=not manual,
                    reporting_ua=ctx.reporting_ua,
                )
            except MdnError as exc:
                mail.detail = {**mail.detail, "mdn": "not_requested"}
                return {"skipped": exc.code}
            raw_mdn = msg.as_bytes()
            envelope = smtp_envelope(msg, return_receipt=False)
            if sent is None:
                sent = Mail(
                    direction="out",
                    key=out_key,
                    mailbox=mail.mailbox,
                    recipients=list(envelope.rcpt_to),
                    structure_id=mail.structure_id,
                    patient_id=mail.patient_id,
                    document_id=mail.document_id,
                    status="pending",
                    mdn_code=code,
                    detail={"kind": "mdn", "in_reply_to_mail_id": mail_id},
                )
                s.add(sent)
            sent.message_id = str(msg["Message-ID"])[:300]
            sent.subject = str(msg["Subject"])[:500]
            sent.sender = mail.mailbox
            sent.payload_sha256 = store_payload(s, raw_mdn)
            return raw_mdn, envelope, sent.message_id

    prepared = await asyncio.to_thread(_prepare)
    if isinstance(prepared, dict):
        return prepared
    raw_mdn, envelope, message_id = prepared
    try:
        result = await ctx.mail_sender.send(raw_mdn, envelope)
    except MailUnavailableError as exc:
        raise RetryLater(f"MSSanté operator unavailable for the MDN: {exc}") from exc

    def _record() -> None:
        with ctx.db.session() as s:
            out = s.scalar(select(Mail).where(Mail.key == out_key))
            mail = s.get_one(Mail, mail_id)
            assert out is not None
            out.status = "sent" if result.accepted else "failed"
            out.reason = "; ".join(f"{k} : {v}" for k, v in result.refused.items())[:2000] or None
            mail.detail = {**mail.detail, "mdn": out.status, "mdn_message_id": message_id}
            audit(s, SYSTEM_ACTOR, "mss_mdn", mail.id, mail.patient_id, out.status, code=code, manual=manual)

    await asyncio.to_thread(_record)
    return {"mdn": "sent" if result.accepted else "refused", "code": code}


def confirm_mdn(db: Database, mail_id: int, actor: str) -> None:
    """Send an MDN held because its address differs from the Return-Path, once a person has checked it."""
    with db.session() as s:
        mail = s.get_one(Mail, mail_id, with_for_update=True)
        if mail.detail.get("mdn") != "confirmation_required":
            raise InboundError("MDN_NOT_HELD", "Aucun accusé en attente de confirmation pour ce courriel")
        code = mail.detail.get("mdn_pending_code")
        mail.detail = {**mail.detail, "mdn": "confirmed"}
        audit(s, actor, "mss_mdn_confirm", mail.id, mail.patient_id, "confirmation de l'accusé", code=code)
        # Its own key: the automatic MDN job of the same code was held, not sent.
        enqueue_mdn(s, mail, code, manual=True, key_suffix=":confirmed")
