"""The ``mss.send`` step: the XDM package and the document mail built once and stored, marked ``sending`` before the
SMTP transaction (the uncertain-send rule), a replacement waiting for the mail of the document it replaces.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict
from email import policy
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur import __version__
from opensegur.content.xds_metadata import MetadataError, submission_set_metadata
from opensegur.documents.delivery import DeliveryStatus, set_delivery_status
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.documents.metadata import DocumentMetadata, metadata_from_dict
from opensegur.flows.mss_outbound.common import (
    DEST_FLAGS,
    DEST_PATIENT,
    UNCERTAIN,
    UNCERTAIN_TEXT,
    MssOutboundConfig,
    MssOutboundError,
    sender_for,
)
from opensegur.flows.mss_outbound.sending import Ready, send_prepared, stored_envelope
from opensegur.flows.mss_outbound.tracking import document_only_for_mss, fail_delivery, record_exchange
from opensegur.flows.mssante_ports import MailSender
from opensegur.identity.rniv import IdentityStatus
from opensegur.store.db import Database
from opensegur.store.documents import document_with_content
from opensegur.store.models import Delivery, Document, Mail, Patient, Payload, Structure, utcnow
from opensegur.store.payloads import store_payload
from opensegur.transactions.mss_mail import (
    MailError,
    MailPatient,
    SmtpEnvelope,
    build_document_mail,
    patient_mailbox,
    smtp_envelope,
)
from opensegur.transactions.xdm import XdmError, XdmOrigin, build_xdm, intended_recipient, readme_text

_DONE = ("sent", "delivered", "read", "failed", "cancelled")
# A held delivery waits for its release, a waiting one for its parent to wake it; a finished one is done.
_NOT_TO_SEND = (DeliveryStatus.HELD, DeliveryStatus.DELIVERED, DeliveryStatus.DEAD, DeliveryStatus.WAITING)


def _parent_delivery(s: Session, doc: Document, d: Delivery) -> tuple[bool, Delivery | None]:
    """(whether this mail must wait, the parent's delivery) for a replacement document."""
    if doc.kind != "replacement" or not doc.parent_unique_id:
        return False, None
    parent_doc = document_with_content(s, doc.structure_id, doc.parent_unique_id)
    flag = dict(DEST_FLAGS)[d.destination]
    if parent_doc is None or not (parent_doc.flags or {}).get(flag):
        return False, None  # the replaced document never went this way: nothing to overtake
    # Locked so the parent's delivery cannot finish between this check and the "waiting" mark (PostgreSQL).
    parent = s.scalar(
        select(Delivery)
        .where(Delivery.key == f"{parent_doc.unique_id}:{d.destination}:send")
        .with_for_update()
    )
    return parent is None or parent.status not in (DeliveryStatus.DELIVERED, DeliveryStatus.DEAD), parent


def _metadata(doc: Document) -> DocumentMetadata:
    stored = doc.context.get("metadata")
    if not stored:
        raise MssOutboundError("NOT_VALIDATED", "Métadonnées du document absentes : document non validé")
    m = metadata_from_dict(stored)
    m.entry_uuid = None
    return m


def _build_document_mail(
    s: Session, cfg: MssOutboundConfig, d: Delivery, doc: Document, mail: Mail
) -> tuple[bytes, SmtpEnvelope]:
    patient = s.get(Patient, doc.patient_id) if doc.patient_id else None
    if patient is None or patient.birth_date is None:
        raise MssOutboundError("PATIENT_UNKNOWN", "Patient du document inconnu ou sans date de naissance")
    qualified = patient.status == IdentityStatus.QUAL.value
    if d.destination == DEST_PATIENT and not qualified:
        raise MssOutboundError(
            "MSS_INS_NOT_QUALIFIED", "Identité INS du patient plus qualifiée : envoi au patient impossible"
        )
    site = s.get_one(Structure, doc.structure_id)
    sender = sender_for(s, cfg, doc.structure_id)
    m = _metadata(doc)
    content = s.get_one(Payload, doc.payload_sha256).data if doc.payload_sha256 else b""
    submission = submission_set_metadata(
        m,
        unique_id=f"2.25.{uuid.uuid4().int}",  # ISO/IEC 9834-8 UUID OID: unique without an arc of our own
        source_id=cfg.source_oid,
        patient_class=doc.context.get("patient_class") or "I",
        title="Envoi MSSanté",
    )
    to_patient = d.destination == DEST_PATIENT
    recipients = (
        [patient_mailbox(doc.ins_matricule or "", ins_qualified=True)] if to_patient else mail.recipients
    )
    submission.intended_recipients = [intended_recipient(a) for a in recipients]
    origin = XdmOrigin(site.name, site.finess, sender, cfg.product, __version__, cfg.vendor)
    xdm = build_xdm(
        submission,
        [(m, content)],
        readme_text=readme_text(origin),
        index_html_title=f"Documents — {site.name}",
    )
    label = m.type_code.display or doc.title or m.title or "Document"
    mail_patient = MailPatient(
        ins_matricule=doc.ins_matricule or "",
        family=patient.birth_name,
        given=(patient.first_names.split() or [""])[0],
        birth_date=patient.birth_date,
    )
    detail = mail.detail
    body = detail.get("body") or _default_body(label, site.name, to_patient, patient)
    msg = build_document_mail(
        sender=sender,
        recipients=[] if to_patient else list(mail.recipients),
        patient=mail_patient,
        document_label=label,
        xdm_zip=xdm,
        body_text=body,
        nil=cfg.nil,
        ins_qualified=qualified,
        send_to_patient=to_patient,
        patient_no_reply=bool(detail.get("no_reply")),
        reply_to=detail.get("reply_to"),
        # The MDN must come back to the mailbox the inbound poller reads: ours.
        read_receipt_to=sender if detail.get("read_receipt") else None,
    )
    envelope = smtp_envelope(msg, return_receipt=bool(detail.get("return_receipt")))
    raw = msg.as_bytes(policy=policy.SMTP)
    mail.payload_sha256 = store_payload(s, raw)
    mail.message_id = str(msg["Message-ID"])
    mail.subject = str(msg["Subject"])[:500]
    mail.sender = sender
    mail.mailbox = sender
    mail.recipients = list(envelope.rcpt_to)
    mail.detail = {**detail, "envelope": asdict(envelope)}
    return raw, envelope


def _default_body(label: str, site: str, to_patient: bool, patient: Patient) -> str:
    if to_patient:
        return (
            "Bonjour,\n\n"
            f"Vous trouverez ci-joint un document vous concernant (« {label} »), transmis par {site}.\n\n"
            "Cordialement.\n"
        )
    name = f"{patient.birth_name} {(patient.first_names.split() or [''])[0]}".strip()
    return (
        "Bonjour,\n\n"
        f"Veuillez trouver ci-joint le document « {label} » concernant {name}, transmis par {site}.\n\n"
        "Ce courriel est envoyé automatiquement par la messagerie sécurisée de santé de l'établissement.\n\n"
        "Cordialement.\n"
    )


def _prepare_document_mail(db: Database, cfg: MssOutboundConfig, delivery_id: int) -> Ready | dict[str, Any]:
    with db.session() as s:
        d = s.get_one(Delivery, delivery_id)
        doc = d.document
        mail = s.scalar(select(Mail).where(Mail.key == f"out:{d.id}").with_for_update())
        assert mail is not None, "every MSSanté delivery is created with its mail"
        if d.status in _NOT_TO_SEND:
            return {"skipped": d.status}
        if mail.status == "sending" and d.status == DeliveryStatus.SENDING:
            # The previous run stopped between the SMTP transaction and its outcome: never send twice.
            set_delivery_status(d, DeliveryStatus.DEAD)
            d.error_code, d.last_error = UNCERTAIN, UNCERTAIN_TEXT
            record_exchange(s, d, mail, "uncertain", UNCERTAIN_TEXT)
            if document_only_for_mss(doc):
                set_status(doc, DocumentStatus.ERROR, UNCERTAIN_TEXT)
            return {"skipped": "uncertain", "mail_id": mail.id}
        if mail.status in _DONE and d.status != DeliveryStatus.PENDING:
            return {"skipped": f"mail {mail.status}"}
        waits, parent = _parent_delivery(s, doc, d)
        if waits:
            set_delivery_status(d, DeliveryStatus.WAITING)
            return {"waiting": parent.id if parent is not None else None}
        if mail.payload_sha256 is None:
            try:
                raw, envelope = _build_document_mail(s, cfg, d, doc, mail)
            except (MailError, MssOutboundError) as exc:
                fail_delivery(s, d, mail, exc.code, exc.message_fr)
                return {"failed": exc.code}
            except (XdmError, MetadataError) as exc:
                fail_delivery(s, d, mail, exc.code, exc.message_fr)
                return {"failed": exc.code}
        else:
            # A human retry after a failure or an uncertain send: the same bytes, hence the same Message-ID.
            raw, envelope = s.get_one(Payload, mail.payload_sha256).data, stored_envelope(mail)
        mail.status, mail.reason = "sending", None
        set_delivery_status(d, DeliveryStatus.SENDING)
        d.submitted_at = utcnow()
        if document_only_for_mss(doc):
            set_status(doc, DocumentStatus.SENDING)
        return Ready(mail.id, raw, envelope)


async def send_document_mail(
    db: Database, mailer: MailSender, cfg: MssOutboundConfig, delivery_id: int
) -> dict[str, Any]:
    ready = await asyncio.to_thread(_prepare_document_mail, db, cfg, delivery_id)
    return await send_prepared(
        db,
        mailer,
        ready,
        not_built="courriel non construit",
        all_refused="tous les destinataires ont été refusés",
    )
