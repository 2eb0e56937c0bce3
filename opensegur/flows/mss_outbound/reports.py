"""DSN and MDN reports on our mails (handed over by the inbound poller), and the ``mss.zam`` step that sends the ZAM
each one gives the DPI: ``ZAM^Z02`` for a DSN, ``ZAM^Z03`` for an MDN.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.documents.delivery import DeliveryStatus, set_delivery_status
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.errors import RetryLater
from opensegur.flows.mss_outbound.common import UNCERTAIN, norm, smtp_code
from opensegur.flows.mss_outbound.tracking import aggregate, document_only_for_mss, enqueue_zam, set_recipient
from opensegur.flows.mssante_ports import DpiSender
from opensegur.store.db import Database
from opensegur.store.models import Delivery, Document, Mail, utcnow
from opensegur.store.payloads import store_payload
from opensegur.transactions import hl7v2
from opensegur.transactions.hl7v2 import Hl7Error
from opensegur.transactions.hl7v2_message import get_field, segments
from opensegur.transactions.mdn import Dsn, Mdn, MdnError, parse_dsn, parse_mdn
from opensegur.transactions.zam import (
    APPLICATION_ERROR_CODES,
    SMTP_ERROR_CODES,
    ZamError,
    ZamKind,
    ZamStatus,
    build_zam,
    original_header,
)

log = logging.getLogger(__name__)


_DELIVERED_ACTIONS = ("delivered", "relayed", "expanded")
_READ_DISPOSITIONS = ("displayed", "processed", "dispatched")


def _find_out_mail(s: Session, ids: list[str | None]) -> Mail | None:
    wanted: set[str] = set()
    for value in ids:
        if value:
            bare = value.strip().strip("<>")
            wanted |= {bare, f"<{bare}>"}
    if not wanted:
        return None
    return s.scalar(
        select(Mail)
        .where(Mail.direction == "out", Mail.message_id.in_(sorted(wanted)))
        .order_by(Mail.id)
        .limit(1)
        .with_for_update()
    )


def _in_reply_to(raw: bytes) -> str | None:
    headers = BytesHeaderParser(policy=policy.default).parsebytes(raw[:200_000])
    value = headers.get("In-Reply-To") or headers.get("References")
    return str(value).split()[0] if value else None


def _record_dsn(s: Session, mail: Mail, dsn: Dsn, at: datetime) -> bool:
    known = {norm(a) for a in mail.recipients}
    matched = False
    for r in dsn.recipients:
        address = next(
            (a for a in (norm(r.original_recipient or ""), norm(r.final_recipient or "")) if a in known),
            None,
        )
        if address is None:
            continue
        matched = True
        current = (mail.detail.get("recipients") or {}).get(address, {}).get("status")
        if r.action in _DELIVERED_ACTIONS:
            if current != "read":
                set_recipient(mail, address, status="delivered", dsn_status=r.status)
            enqueue_zam(s, mail, "reception_mss", address, ok=True, at=at)
        elif r.action == "failed":
            code = smtp_code(r.diagnostic.split(";", 1)[-1] if r.diagnostic else None, "554")
            set_recipient(mail, address, status="failed", code=code, diagnostic=(r.diagnostic or "")[:300])
            enqueue_zam(s, mail, "reception_mss", address, ok=False, code=code, at=at)
        else:  # "delayed": the operator keeps trying; only the final DSN is an acknowledgement
            set_recipient(mail, address, dsn_status=r.status, delayed=True)
    return matched


def _record_mdn(s: Session, mail: Mail, mdn: Mdn, at: datetime) -> bool:
    known = {norm(a) for a in mail.recipients}
    candidates = (mdn.original_recipient, mdn.final_recipient, mdn.from_addr)
    address = next((norm(a) for a in candidates if a and norm(a) in known), None)
    if address is None:
        return False
    ok = mdn.ok and mdn.disposition in _READ_DISPOSITIONS
    if ok:
        set_recipient(mail, address, status="read", disposition=mdn.disposition)
        enqueue_zam(s, mail, "lecture_mss", address, ok=True, at=at)
    else:
        code = mdn.error_code or "906"
        set_recipient(mail, address, status="failed", disposition=mdn.disposition, code=code)
        mail.mdn_code = code[:8]
        enqueue_zam(s, mail, "lecture_mss", address, ok=False, code=code, label=mdn.error_label or "", at=at)
    return True


def record_report(s: Session, raw: bytes, mailbox: str) -> bool:
    """Apply a DSN or an MDN to the mail it reports on; False when it is about no mail of ours (to triage).

    Called again with the same report (the poller crashed before marking it done), it changes nothing more: the ZAM
    jobs are keyed by mail, kind, recipient and outcome.
    """
    at = utcnow()
    report: Dsn | Mdn
    try:
        report = parse_dsn(raw)
    except MdnError:
        try:
            report = parse_mdn(raw)
        except MdnError:
            return False
    if isinstance(report, Dsn):
        mail = _find_out_mail(s, [report.envelope_id, report.original_message_id])
        matched = mail is not None and _record_dsn(s, mail, report, at)
    else:
        mail = _find_out_mail(s, [report.original_message_id, _in_reply_to(raw)])
        matched = mail is not None and _record_mdn(s, mail, report, at)
    if mail is None or not matched:
        return False
    mail.status = aggregate(mail)
    # The poller keeps no copy of a report it hands over: the raw bytes stay with the mail they concern.
    digest = store_payload(s, raw)
    reports = [r for r in mail.detail.get("reports", []) if r.get("payload") != digest]
    reports.append(
        {"kind": type(report).__name__, "mailbox": mailbox, "at": at.isoformat(), "payload": digest}
    )
    mail.detail = {**mail.detail, "reports": reports[-50:]}
    d = s.get(Delivery, mail.delivery_id) if mail.delivery_id else None
    if d is not None:
        if mail.status == "failed":
            statuses = mail.detail.get("recipients") or {}
            code = next((v.get("code") for v in statuses.values() if v.get("code")), "554")
            set_delivery_status(d, DeliveryStatus.DEAD)
            d.error_code = str(code)
            d.last_error = "Courriel non distribué ou non intégré par le destinataire"
            if document_only_for_mss(d.document):
                set_status(d.document, DocumentStatus.ERROR, d.last_error)
        elif d.status in (DeliveryStatus.DEAD, DeliveryStatus.SENDING) and d.error_code == UNCERTAIN:
            # The report proves the interrupted send did go out.
            set_delivery_status(d, DeliveryStatus.DELIVERED)
            d.error_code, d.last_error, d.delivered_at = None, None, at
        only_mss = document_only_for_mss(d.document)
        if only_mss and mail.status in ("delivered", "read") and d.document.status == DocumentStatus.SENT:
            set_status(d.document, DocumentStatus.ACKNOWLEDGED)
    log.info("MSSanté report applied to mail %s: now %s", mail.id, mail.status)
    return True


# ---- mss.zam ----------------------------------------------------------------------------------------------


def _ack_code(ack: bytes) -> str:
    try:
        message, _ = hl7v2.parse(ack)
    except Hl7Error:
        return ""
    msa = segments(message, "MSA")
    return get_field(msa[0], 1) if msa else ""


async def send_mss_zam(
    db: Database, dpi: DpiSender, job_id: int, args: dict[str, Any], *, app: str = "OPENSEGUR"
) -> dict[str, Any]:
    def _load() -> dict[str, Any]:
        with db.session() as s:
            mail = s.get_one(Mail, int(args["mail_id"]))
            doc = s.get(Document, mail.document_id) if mail.document_id else None
            return dict(doc.context.get("zam") or {}) if doc is not None else {}

    zam = await asyncio.to_thread(_load)
    if not zam:
        return {"skipped": "no DPI to acknowledge"}
    kind: ZamKind = args["kind"]
    ok = bool(args["ok"])
    errors = []
    if not ok:
        code = str(args.get("code") or ("554" if kind == "reception_mss" else "906"))
        table = SMTP_ERROR_CODES if kind == "reception_mss" else APPLICATION_ERROR_CODES
        # The volet's label when it knows the code; ours (French) otherwise.
        errors = [ZamError(code=code, label="" if code in table else str(args.get("label") or ""))]
    status = ZamStatus(
        kind=kind,
        success=ok,
        timestamp=datetime.fromisoformat(args["at"]),
        recipient_address=args["recipient"],
        recipient_id=args.get("recipient_id"),
        errors=errors,
    )
    now = datetime.now(UTC)
    # The control id is the job's, so a resend after a lost ACK carries the same MSH-10 for the DPI to dedupe.
    payload = build_zam(
        original_header(zam), status, control_id=f"MSSZAM{job_id}", now=now, app=app, facility=app
    )
    ack = await dpi.send(payload)
    code = _ack_code(ack)
    if code not in ("AA", "CA"):
        raise RetryLater(f"Le DPI n'a pas accepté l'accusé métier MSSanté ({code or 'réponse illisible'})")
    return {"zam": kind, "ok": ok}
