"""Planning the MSSanté deliveries of a document: from the DPI's MetaDMPMSS (inside ``document.process``) or from a
REST request, one ``Delivery`` per destination with its outgoing ``Mail`` and its ``mss.send`` job.
"""

from __future__ import annotations

import hashlib
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.documents.delivery import DeliveryStatus
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.flows.mss_outbound.common import DEST_FLAGS, DEST_PATIENT, DEST_PS, MssOutboundError, norm
from opensegur.flows.mss_outbound.tracking import enqueue_send, fail_delivery
from opensegur.identity.rniv import IdentityStatus
from opensegur.store.models import AuditEvent, Delivery, Document, Mail, Patient
from opensegur.transactions.mss_mail import MailError, is_patient_mailbox, patient_mailbox

# A document not yet validated (or refused) has nothing to send.
_NOT_READY = (DocumentStatus.RECEIVED, DocumentStatus.REJECTED, DocumentStatus.WAITING_IDENTITY)


def _recipients_for(s: Session, doc: Document, destination: str) -> tuple[list[str], str | None]:
    """The addresses of one destination, or why there is none (French, shown in the flow view)."""
    if destination == DEST_PATIENT:
        patient = s.get(Patient, doc.patient_id) if doc.patient_id else None
        qualified = patient is not None and patient.status == IdentityStatus.QUAL.value
        try:
            return [patient_mailbox(doc.ins_matricule or "", ins_qualified=qualified)], None
        except MailError as exc:
            return [], exc.message_fr
    listed = (doc.context.get("mssante") or {}).get("recipients", [])
    out: list[str] = []
    for r in listed:
        address = str(r.get("address") or "").strip()
        # A patient address among the RCT is the patient destination's business (DESTMSSANTEPAT), never the PS one.
        if address and not is_patient_mailbox(address) and norm(address) not in {norm(a) for a in out}:
            out.append(address)
    if not out:
        return [], "Aucune adresse MSSanté de professionnel (PRT RCT) pour ce document"
    return out, None


def _new_mail(s: Session, doc: Document, d: Delivery, recipients: list[str], detail: dict[str, Any]) -> Mail:
    known = {norm(r["address"]): r for r in (doc.context.get("mssante") or {}).get("recipients", [])}
    per_recipient = {
        norm(a): {"status": "pending", "id": (known.get(norm(a)) or {}).get("id")} for a in recipients
    }
    mail = Mail(
        direction="out",
        key=f"out:{d.id}",
        mailbox="",
        recipients=recipients,
        structure_id=doc.structure_id,
        patient_id=doc.patient_id,
        document_id=doc.id,
        delivery_id=d.id,
        status="pending",
        detail={"kind": "document", **detail, "recipients": per_recipient},
    )
    s.add(mail)
    s.flush()
    return mail


def plan_mss_deliveries(s: Session, doc: Document, *, update_status: bool) -> bool:
    """Create the MSSanté deliveries a validated document asks for; False when it asks for none.

    Run again (the processing job re-ran), it creates nothing twice. ``update_status``: the document is for
    MSSanté only, so its flow-view status is the MSSanté one.
    """
    flags = doc.flags or {}
    wanted = [dest for dest, flag in DEST_FLAGS if flags.get(flag)]
    if not wanted:
        return False
    ctx = doc.context.get("mssante") or {}
    progressed = False
    for destination in wanted:
        key = f"{doc.unique_id}:{destination}:send"
        d = s.scalar(select(Delivery).where(Delivery.key == key))
        if d is not None:
            progressed = progressed or d.status not in (DeliveryStatus.PENDING, DeliveryStatus.HELD)
            if d.status == DeliveryStatus.PENDING:
                enqueue_send(s, doc, d)
            continue
        recipients, problem = _recipients_for(s, doc, destination)
        d = Delivery(
            document_id=doc.id,
            destination=destination,
            action="send",
            key=key,
            status=DeliveryStatus.HELD if doc.held else DeliveryStatus.PENDING,
        )
        s.add(d)
        s.flush()
        to_patient = destination == DEST_PATIENT
        mail = _new_mail(
            s,
            doc,
            d,
            recipients,
            {
                "body": ctx.get("body_patient") if to_patient else ctx.get("body_ps"),
                "reply_to": None if to_patient and ctx.get("patient_no_reply") else ctx.get("reply_to"),
                "no_reply": bool(to_patient and ctx.get("patient_no_reply")),
                "return_receipt": bool(flags.get("ack_reception")),
                "read_receipt": bool(flags.get("ack_lecture_mss")),
                "zam": True,
            },
        )
        if problem is not None:
            fallback = f"{doc.ins_matricule}@patient.mssante.fr" if to_patient else None
            fail_delivery(s, d, mail, "MSS_NO_RECIPIENT", problem, zam_address=fallback)
            progressed = True
            continue
        if not doc.held:
            enqueue_send(s, doc, d)
    if update_status and not progressed:
        set_status(doc, DocumentStatus.HELD if doc.held else DocumentStatus.VALIDATED)
    return True


# ---- REST: send an existing document to chosen recipients ---------------------------------------------------


def request_document_send(
    s: Session,
    document_id: int,
    *,
    recipients: list[str],
    to_patient: bool,
    return_receipt: bool,
    read_receipt: bool,
    body: str | None,
    actor: str,
) -> list[Delivery]:
    """Deliveries (and their jobs) sending a validated document to ``recipients`` and/or the patient.

    The same request twice (same recipients, options and text) gives the same deliveries: a client retrying after a
    timeout does not send the document twice.
    """
    doc = s.get(Document, document_id)
    if doc is None:
        raise MssOutboundError("NOT_FOUND", "Document inconnu")
    if doc.kind == "deletion":
        raise MssOutboundError("NOT_SENDABLE", "Une demande de suppression ne s'envoie pas par messagerie")
    if not doc.context.get("metadata") or doc.status in _NOT_READY:
        raise MssOutboundError(
            "NOT_VALIDATED", "Document non encore validé (ou rejeté) : il ne peut pas être envoyé"
        )
    patient = s.get(Patient, doc.patient_id) if doc.patient_id else None
    if patient is None or patient.status != IdentityStatus.QUAL.value:
        raise MssOutboundError(
            "INS_NOT_QUALIFIED", "Identité INS du patient non qualifiée : envoi par messagerie impossible"
        )
    cleaned: list[str] = []
    for r in recipients:
        address = parseaddr(r)[1].strip()
        if not address or "@" not in address or address != r.strip():
            raise MssOutboundError("ADDRESS_INVALID", f"Adresse de destinataire invalide : « {r[:100]} »")
        if is_patient_mailbox(address):
            raise MssOutboundError(
                "PATIENT_ADDRESS",
                "Adresse patient parmi les professionnels : utiliser l'envoi au patient, qui la déduit de son INS",
            )
        if norm(address) not in {norm(a) for a in cleaned}:
            cleaned.append(address)
    if not cleaned and not to_patient:
        raise MssOutboundError(
            "NO_RECIPIENT", "Aucun destinataire : choisir des professionnels ou le patient"
        )
    wanted = ([DEST_PS] if cleaned else []) + ([DEST_PATIENT] if to_patient else [])
    request = "|".join(
        [*sorted(norm(a) for a in cleaned), str(return_receipt), str(read_receipt), body or ""]
    )
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()[:16]
    out = []
    for destination in wanted:
        key = f"{doc.unique_id}:{destination}:send:{digest}"
        d = s.scalar(select(Delivery).where(Delivery.key == key))
        if d is None:
            d = Delivery(
                document_id=doc.id,
                destination=destination,
                action="send",
                key=key,
                status=DeliveryStatus.HELD if doc.held else DeliveryStatus.PENDING,
            )
            s.add(d)
            s.flush()
            try:
                addresses = (
                    cleaned
                    if destination == DEST_PS
                    else [patient_mailbox(doc.ins_matricule or "", ins_qualified=True)]
                )
            except MailError as exc:
                raise MssOutboundError(exc.code, exc.message_fr) from exc
            _new_mail(
                s,
                doc,
                d,
                addresses,
                {
                    "body": body,
                    "reply_to": None,
                    "no_reply": False,
                    "return_receipt": return_receipt,
                    "read_receipt": read_receipt,
                    # The DPI did not ask for this mail: it gets no acknowledgement about it.
                    "zam": False,
                    "requested_by": actor,
                },
            )
            if not doc.held:
                enqueue_send(s, doc, d)
            s.add(
                AuditEvent(
                    actor=actor,
                    action="mss_send_document",
                    patient_id=doc.patient_id,
                    reason="api",
                    detail={"document_id": doc.id, "delivery_id": d.id, "destination": destination},
                )
            )
        out.append(d)
    return out
