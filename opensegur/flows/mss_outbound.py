"""Flow: documents and appointments from the DPI → MSSanté mails to professionals and patients → DSN/MDN → ZAM.

Steps, each a job so a crash resumes where it stopped:
- planning (inside ``document.process``, see ``dmp_feed._plan_deliveries``): one ``Delivery`` per MSSanté destination
  requested by MetaDMPMSS (``MSSANTE_PS``: the PRT RCT addresses; ``MSSANTE_PAT``: ``<matricule>@patient.mssante.fr``)
  and its outgoing ``Mail`` row (key ``out:<delivery id>``), without waiting for the DMP. The patient address needs
  a qualified INS: planning happens only behind the identity gate, so a document of an unqualified patient waits for
  the identity like its DMP delivery (mss_mail.patient_mailbox; the volet sends the patient nothing else);
- ``mss.send``: the XDM package (with the XDS metadata already computed for the DMP) and the mail are built once,
  stored, marked ``sending`` and committed *before* the SMTP transaction; a replacement waits for the mail of the
  document it replaces (same destination), as in the DMP flow;
- :func:`record_report`, called by the inbound poller for every ``multipart/report``: a DSN gives ``ZAM^Z02``
  (ACK_RECEPTION_MSS), an MDN ``ZAM^Z03`` (ACK_LECTURE_MSS) — profils-messages.md, "Evènements déclenchants des
  messages d'accusés métier";
- ``mss.zam``: the ZAM to the DPI (one per recipient: OBX DESTINATAIRE_MSS / LECTEUR_MSS carries one address);
- appointments (MSSanté citoyenne): ``accept_appointment`` (SIU from the DPI) or :func:`schedule_appointment`
  (REST) store an outgoing ``Mail``; ``mss.appointment`` sends it to the patient's Mon espace santé address.

At most one mail per delivery: a job that finds its mail ``sending`` was interrupted during or right after the SMTP
transaction. The mail may have left, so it is never sent again automatically: the delivery fails with
``MSS_UNCERTAIN`` and a professional decides (``dmp_feed.retry`` puts it back, and only then is it re-sent, with
the same Message-ID).

Acknowledgements: a successful Z02/Z03 is sent only when the DPI asked for it (ACK_RECEPTION / ACK_LECTURE_MSS);
a failure is always reported, since the DPI would otherwise believe the document delivered. A document that is
also for the DMP keeps the DMP's status in the flow view; the MSSanté deliveries show their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email import policy
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur import __version__
from opensegur.content.xds_metadata import MetadataError, submission_set_metadata
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.documents.metadata import DocumentMetadata, metadata_from_dict
from opensegur.errors import OpenSegurError, RetryLater
from opensegur.flows.identity_feed import find_by_identifier, read_ins, resolve_site
from opensegur.flows.jobs import JobKind
from opensegur.flows.mssante_ports import DpiSender, MailSender, MailSendResult, MailUnavailableError
from opensegur.flows.worker import PermanentError
from opensegur.identity.rniv import IdentityStatus
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.documents import document_with_content
from opensegur.store.models import (
    AuditEvent,
    Delivery,
    Document,
    Exchange,
    Job,
    Mail,
    Patient,
    Payload,
    Structure,
    utcnow,
)
from opensegur.store.payloads import store_payload
from opensegur.transactions import hl7v2
from opensegur.transactions.hl7v2 import Hl7Error
from opensegur.transactions.mdn import Dsn, Mdn, MdnError, parse_dsn, parse_mdn
from opensegur.transactions.mss_mail import (
    MailError,
    MailPatient,
    SmtpEnvelope,
    build_document_mail,
    build_patient_appointment_mail,
    is_patient_mailbox,
    patient_mailbox,
    smtp_envelope,
)
from opensegur.transactions.siu import Appointment
from opensegur.transactions.xdm import XdmError, XdmOrigin, build_xdm, intended_recipient, readme_text
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

__all__ = [
    "DEST_PATIENT",
    "DEST_PS",
    "AcceptedAppointment",
    "MssOutboundConfig",
    "MssOutboundError",
    "accept_appointment",
    "make_appointment_handler",
    "make_mss_send_handler",
    "make_mss_zam_handler",
    "plan_mss_deliveries",
    "record_report",
    "request_document_send",
    "schedule_appointment",
    "send_appointment_mail",
    "send_document_mail",
    "send_mss_zam",
]

# A document not yet validated (or refused) has nothing to send.
_NOT_READY = (DocumentStatus.RECEIVED, DocumentStatus.REJECTED, DocumentStatus.WAITING_IDENTITY)
DEST_PS = "MSSANTE_PS"
DEST_PATIENT = "MSSANTE_PAT"
_DEST_FLAGS = ((DEST_PS, "dest_mssante_ps"), (DEST_PATIENT, "dest_mssante_pat"))
_DONE = ("sent", "delivered", "read", "failed", "cancelled")
_DELIVERED_ACTIONS = ("delivered", "relayed", "expanded")
_READ_DISPOSITIONS = ("displayed", "processed", "dispatched")
_SMTP_CODE = re.compile(r"^\s*([245]\d\d)\b")
UNCERTAIN = "MSS_UNCERTAIN"
UNCERTAIN_TEXT = (
    "Envoi interrompu pendant l'échange avec le serveur de messagerie : le courriel est peut-être parti. "
    "Vérifier auprès du destinataire avant de relancer l'envoi."
)


@dataclass(frozen=True)
class MssOutboundConfig:
    """What the mails need from the settings; a site may name its own mailbox (``settings["mssante_sender"]``)."""

    sender: str  # the hospital's applicative mailbox (mapping-mss.md: FROM = BAL applicative)
    nil: str  # X-MSS-NIL, the product reference given by the Convergence platform
    source_oid: str  # sourceId of the XDM submission sets (the platform's OID arc)
    product: str = "OpenSégur"
    vendor: str = "Projet OpenSégur (logiciel libre)"


class MssOutboundError(OpenSegurError):
    """A request the flow refuses. ``code`` is stable for programs, ``message_fr`` is shown to the user."""

    def __init__(self, code: str, message_fr: str) -> None:
        super().__init__(f"{code}: {message_fr}")
        self.code = code
        self.message_fr = message_fr


def _norm(address: str) -> str:
    return parseaddr(address)[1].strip().lower()


def _smtp_code(text: str | None, default: str) -> str:
    match = _SMTP_CODE.match(text or "")
    return match.group(1) if match else default


def _sender_for(s: Session, cfg: MssOutboundConfig, structure_id: int | None) -> str:
    site = s.get(Structure, structure_id) if structure_id else None
    return str((site.settings or {}).get("mssante_sender") or cfg.sender) if site else cfg.sender


# ---- planning (inside the document.process transaction) ---------------------------------------------------


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
        if address and not is_patient_mailbox(address) and _norm(address) not in {_norm(a) for a in out}:
            out.append(address)
    if not out:
        return [], "Aucune adresse MSSanté de professionnel (PRT RCT) pour ce document"
    return out, None


def _new_mail(s: Session, doc: Document, d: Delivery, recipients: list[str], detail: dict[str, Any]) -> Mail:
    known = {_norm(r["address"]): r for r in (doc.context.get("mssante") or {}).get("recipients", [])}
    per_recipient = {
        _norm(a): {"status": "pending", "id": (known.get(_norm(a)) or {}).get("id")} for a in recipients
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


def _enqueue_send(s: Session, doc: Document, d: Delivery, suffix: str = "") -> None:
    jobs.enqueue(
        s,
        JobKind.MSS_SEND,
        f"{JobKind.MSS_SEND}:{d.id}{suffix}",
        {"delivery_id": d.id},
        structure_id=doc.structure_id,
        patient_id=doc.patient_id,
    )


def plan_mss_deliveries(s: Session, doc: Document, *, update_status: bool) -> bool:
    """Create the MSSanté deliveries a validated document asks for; False when it asks for none.

    Run again (the processing job re-ran), it creates nothing twice. ``update_status``: the document is for
    MSSanté only, so its flow-view status is the MSSanté one.
    """
    flags = doc.flags or {}
    wanted = [dest for dest, flag in _DEST_FLAGS if flags.get(flag)]
    if not wanted:
        return False
    ctx = doc.context.get("mssante") or {}
    progressed = False
    for destination in wanted:
        key = f"{doc.unique_id}:{destination}:send"
        d = s.scalar(select(Delivery).where(Delivery.key == key))
        if d is not None:
            progressed = progressed or d.status not in ("pending", "held")
            if d.status == "pending":
                _enqueue_send(s, doc, d)
            continue
        recipients, problem = _recipients_for(s, doc, destination)
        d = Delivery(
            document_id=doc.id,
            destination=destination,
            action="send",
            key=key,
            status="held" if doc.held else "pending",
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
            _fail_delivery(s, d, mail, "MSS_NO_RECIPIENT", problem, zam_address=fallback)
            progressed = True
            continue
        if not doc.held:
            _enqueue_send(s, doc, d)
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
        if _norm(address) not in {_norm(a) for a in cleaned}:
            cleaned.append(address)
    if not cleaned and not to_patient:
        raise MssOutboundError(
            "NO_RECIPIENT", "Aucun destinataire : choisir des professionnels ou le patient"
        )
    wanted = ([DEST_PS] if cleaned else []) + ([DEST_PATIENT] if to_patient else [])
    request = "|".join(
        [*sorted(_norm(a) for a in cleaned), str(return_receipt), str(read_receipt), body or ""]
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
                status="held" if doc.held else "pending",
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
                _enqueue_send(s, doc, d)
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


# ---- mss.send ---------------------------------------------------------------------------------------------


@dataclass
class _Ready:
    mail_id: int
    raw: bytes
    envelope: SmtpEnvelope


def _record_exchange(
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


def _enqueue_zam(
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
        return  # success acknowledgements only when asked for; failures always (see module doc)
    info = (mail.detail.get("recipients") or {}).get(_norm(recipient)) or {}
    jobs.enqueue(
        s,
        JobKind.MSS_ZAM,
        f"{JobKind.MSS_ZAM}:{mail.id}:{kind}:{_norm(recipient)}:{'Y' if ok else 'N'}",
        {
            "mail_id": mail.id,
            "kind": kind,
            "recipient": _norm(recipient),
            "recipient_id": info.get("id"),
            "ok": ok,
            "code": code,
            "label": label[:200],
            "at": (at or utcnow()).isoformat(),
        },
        structure_id=mail.structure_id,
        patient_id=mail.patient_id,
    )


def _set_recipient(mail: Mail, address: str, **values: Any) -> None:
    # JSON columns are not mutation-tracked: rebuild the dicts so the change reaches the UPDATE.
    recipients = {k: dict(v) for k, v in (mail.detail.get("recipients") or {}).items()}
    recipients[_norm(address)] = {**recipients.get(_norm(address), {}), **values}
    mail.detail = {**mail.detail, "recipients": recipients}


def _aggregate(mail: Mail) -> str:
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


def _document_only_for_mss(doc: Document) -> bool:
    return doc.flags.get("dest_dmp", True) is False


def _fail_delivery(
    s: Session, d: Delivery, mail: Mail, code: str, message: str, *, zam_address: str | None = None
) -> None:
    d.status, d.error_code, d.last_error = "dead", code, message
    mail.status, mail.reason = "failed", message
    doc = d.document
    if _document_only_for_mss(doc):
        set_status(doc, DocumentStatus.ERROR, f"{code} : {message}")
    addresses = mail.recipients or ([zam_address] if zam_address else [])
    for address in addresses:
        _set_recipient(mail, address, status="failed", code=code)
        _enqueue_zam(s, mail, "reception_mss", address, ok=False, code="554", label=message)
    if not addresses:
        log.warning("delivery %s failed before any recipient was known: no ZAM sent", d.id)
    _wake_waiting(s, d)


def _wake_waiting(s: Session, parent: Delivery) -> None:
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
            Delivery.status == "waiting",
        )
    ).all()
    for child in waiting:
        child.status = "pending"
        _enqueue_send(s, child.document, child, f":after:{parent.id}:{utcnow().isoformat()}")


def _parent_delivery(s: Session, doc: Document, d: Delivery) -> tuple[bool, Delivery | None]:
    """(whether this mail must wait, the parent's delivery) for a replacement document."""
    if doc.kind != "replacement" or not doc.parent_unique_id:
        return False, None
    parent_doc = document_with_content(s, doc.structure_id, doc.parent_unique_id)
    flag = dict(_DEST_FLAGS)[d.destination]
    if parent_doc is None or not (parent_doc.flags or {}).get(flag):
        return False, None  # the replaced document never went this way: nothing to overtake
    # Locked so the parent's delivery cannot finish between this check and the "waiting" mark (PostgreSQL).
    parent = s.scalar(
        select(Delivery)
        .where(Delivery.key == f"{parent_doc.unique_id}:{d.destination}:send")
        .with_for_update()
    )
    return parent is None or parent.status not in ("delivered", "dead"), parent


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
    sender = _sender_for(s, cfg, doc.structure_id)
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


def _envelope(mail: Mail) -> SmtpEnvelope:
    e = mail.detail["envelope"]
    return SmtpEnvelope(
        e["mail_from"], tuple(e["rcpt_to"]), tuple(e["mail_options"]), tuple(e["rcpt_options"])
    )


def _prepare_document_mail(db: Database, cfg: MssOutboundConfig, delivery_id: int) -> _Ready | dict[str, Any]:
    with db.session() as s:
        d = s.get_one(Delivery, delivery_id)
        doc = d.document
        mail = s.scalar(select(Mail).where(Mail.key == f"out:{d.id}").with_for_update())
        assert mail is not None, "every MSSanté delivery is created with its mail"
        if d.status in ("held", "delivered", "dead", "waiting"):
            return {"skipped": d.status}
        if mail.status == "sending" and d.status == "sending":
            # The previous run stopped between the SMTP transaction and its outcome: never send twice.
            d.status, d.error_code, d.last_error = "dead", UNCERTAIN, UNCERTAIN_TEXT
            _record_exchange(s, d, mail, "uncertain", UNCERTAIN_TEXT)
            if _document_only_for_mss(doc):
                set_status(doc, DocumentStatus.ERROR, UNCERTAIN_TEXT)
            return {"skipped": "uncertain", "mail_id": mail.id}
        if mail.status in _DONE and d.status != "pending":
            return {"skipped": f"mail {mail.status}"}
        waits, parent = _parent_delivery(s, doc, d)
        if waits:
            d.status = "waiting"
            return {"waiting": parent.id if parent is not None else None}
        if mail.payload_sha256 is None:
            try:
                raw, envelope = _build_document_mail(s, cfg, d, doc, mail)
            except (MailError, MssOutboundError) as exc:
                _fail_delivery(s, d, mail, exc.code, exc.message_fr)
                return {"failed": exc.code}
            except (XdmError, MetadataError) as exc:
                _fail_delivery(s, d, mail, exc.code, exc.message_fr)
                return {"failed": exc.code}
        else:
            # A human retry after a failure or an uncertain send: the same bytes, hence the same Message-ID.
            raw, envelope = s.get_one(Payload, mail.payload_sha256).data, _envelope(mail)
        mail.status, mail.reason = "sending", None
        d.status, d.submitted_at = "sending", utcnow()
        if _document_only_for_mss(doc):
            set_status(doc, DocumentStatus.SENDING)
        return _Ready(mail.id, raw, envelope)


def _temporarily_refused(result: MailSendResult, envelope: SmtpEnvelope) -> str | None:
    """The 4xx reply when every recipient was refused for now (full mailbox, greylisting): the mail is retried."""
    refused = {_norm(a): text for a, text in result.refused.items()}
    if result.accepted or not refused or any(_norm(a) not in refused for a in envelope.rcpt_to):
        return None
    if all(_smtp_code(text, "5").startswith("4") for text in refused.values()):
        return "; ".join(refused.values())
    return None


async def _send(db: Database, mailer: MailSender, ready: _Ready) -> dict[str, Any]:
    """One SMTP transaction and its outcome; a refusal that may pass later is retried like an outage."""
    try:
        result = await mailer.send(ready.raw, ready.envelope)
        later = _temporarily_refused(result, ready.envelope)
        if later is not None:
            raise MailUnavailableError(later)
    except MailUnavailableError as exc:
        await asyncio.to_thread(_unavailable, db, ready.mail_id, str(exc))
        raise RetryLater(f"Opérateur MSSanté injoignable : {exc}") from exc
    return await asyncio.to_thread(_after_send, db, ready.mail_id, result)


def _unavailable(db: Database, mail_id: int, message: str) -> None:
    with db.session() as s:
        mail = s.get_one(Mail, mail_id)
        mail.status, mail.reason = "pending", message
        if mail.delivery_id is not None:
            d = s.get_one(Delivery, mail.delivery_id)
            d.status, d.error_code, d.last_error = "failed", "MSS_UNAVAILABLE", message
            _record_exchange(s, d, mail, "retry", message)
            if _document_only_for_mss(d.document):
                set_status(d.document, DocumentStatus.ERROR, f"MSS_UNAVAILABLE : {message}")


def _after_send(db: Database, mail_id: int, result: MailSendResult) -> dict[str, Any]:
    with db.session() as s:
        mail = s.get_one(Mail, mail_id)
        refused = {_norm(a): text for a, text in result.refused.items()}
        accepted = [_norm(a) for a in result.accepted] or [
            _norm(a) for a in mail.recipients if _norm(a) not in refused
        ]
        now = utcnow()
        for address in accepted:
            _set_recipient(mail, address, status="sent")
        for address, text in refused.items():
            _set_recipient(
                mail, address, status="failed", code=_smtp_code(text, "554"), diagnostic=text[:300]
            )
            _enqueue_zam(s, mail, "reception_mss", address, ok=False, code=_smtp_code(text, "554"), at=now)
        mail.status = _aggregate(mail)
        summary = "; ".join(f"{a} : {t}" for a, t in refused.items()) or None
        mail.reason = summary
        d = s.get(Delivery, mail.delivery_id) if mail.delivery_id else None
        if d is None:
            return {"mail_id": mail.id, "accepted": len(accepted), "refused": len(refused)}
        doc = d.document
        if accepted:
            d.status, d.delivered_at, d.error_code, d.last_error = "delivered", now, None, summary
            _record_exchange(s, d, mail, "success", summary)
            if _document_only_for_mss(doc):
                set_status(doc, DocumentStatus.SENT)
        else:
            first = next(iter(refused.values()), "Destinataires refusés")
            d.status, d.error_code, d.last_error = "dead", _smtp_code(first, "554"), summary or first
            _record_exchange(s, d, mail, "rejected", summary)
            if _document_only_for_mss(doc):
                set_status(doc, DocumentStatus.ERROR, f"Courriel refusé : {summary}")
        _wake_waiting(s, d)
        return {"mail_id": mail.id, "accepted": len(accepted), "refused": len(refused)}


async def _send_prepared(
    db: Database, mailer: MailSender, ready: _Ready | dict[str, Any], *, not_built: str, all_refused: str
) -> dict[str, Any]:
    """Send what a prepare step stored, or pass on why it stored nothing; a mail no recipient took is a failure."""
    if not isinstance(ready, _Ready):
        if "failed" in ready:
            raise PermanentError(f"{not_built} : {ready['failed']}")
        return ready
    outcome = await _send(db, mailer, ready)
    if not outcome["accepted"]:
        raise PermanentError(all_refused)
    return outcome


async def send_document_mail(
    db: Database, mailer: MailSender, cfg: MssOutboundConfig, delivery_id: int
) -> dict[str, Any]:
    ready = await asyncio.to_thread(_prepare_document_mail, db, cfg, delivery_id)
    return await _send_prepared(
        db,
        mailer,
        ready,
        not_built="courriel non construit",
        all_refused="tous les destinataires ont été refusés",
    )


# ---- DSN / MDN → ZAM ----------------------------------------------------------------------------------------


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
    known = {_norm(a) for a in mail.recipients}
    matched = False
    for r in dsn.recipients:
        address = next(
            (a for a in (_norm(r.original_recipient or ""), _norm(r.final_recipient or "")) if a in known),
            None,
        )
        if address is None:
            continue
        matched = True
        current = (mail.detail.get("recipients") or {}).get(address, {}).get("status")
        if r.action in _DELIVERED_ACTIONS:
            if current != "read":
                _set_recipient(mail, address, status="delivered", dsn_status=r.status)
            _enqueue_zam(s, mail, "reception_mss", address, ok=True, at=at)
        elif r.action == "failed":
            code = _smtp_code(r.diagnostic.split(";", 1)[-1] if r.diagnostic else None, "554")
            _set_recipient(mail, address, status="failed", code=code, diagnostic=(r.diagnostic or "")[:300])
            _enqueue_zam(s, mail, "reception_mss", address, ok=False, code=code, at=at)
        else:  # "delayed": the operator keeps trying; only the final DSN is an acknowledgement
            _set_recipient(mail, address, dsn_status=r.status, delayed=True)
    return matched


def _record_mdn(s: Session, mail: Mail, mdn: Mdn, at: datetime) -> bool:
    known = {_norm(a) for a in mail.recipients}
    candidates = (mdn.original_recipient, mdn.final_recipient, mdn.from_addr)
    address = next((_norm(a) for a in candidates if a and _norm(a) in known), None)
    if address is None:
        return False
    ok = mdn.ok and mdn.disposition in _READ_DISPOSITIONS
    if ok:
        _set_recipient(mail, address, status="read", disposition=mdn.disposition)
        _enqueue_zam(s, mail, "lecture_mss", address, ok=True, at=at)
    else:
        code = mdn.error_code or "906"
        _set_recipient(mail, address, status="failed", disposition=mdn.disposition, code=code)
        mail.mdn_code = code[:8]
        _enqueue_zam(s, mail, "lecture_mss", address, ok=False, code=code, label=mdn.error_label or "", at=at)
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
    mail.status = _aggregate(mail)
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
            d.status, d.error_code = "dead", str(code)
            d.last_error = "Courriel non distribué ou non intégré par le destinataire"
            if _document_only_for_mss(d.document):
                set_status(d.document, DocumentStatus.ERROR, d.last_error)
        elif d.status in ("dead", "sending") and d.error_code == UNCERTAIN:
            # The report proves the interrupted send did go out.
            d.status, d.error_code, d.last_error, d.delivered_at = "delivered", None, None, at
        only_mss = _document_only_for_mss(d.document)
        if only_mss and mail.status in ("delivered", "read") and d.document.status == "sent":
            set_status(d.document, DocumentStatus.ACKNOWLEDGED)
    log.info("MSSanté report applied to mail %s: now %s", mail.id, mail.status)
    return True


# ---- mss.zam ----------------------------------------------------------------------------------------------


def _ack_code(ack: bytes) -> str:
    try:
        message, _ = hl7v2.parse(ack)
    except Hl7Error:
        return ""
    msa = hl7v2.segments(message, "MSA")
    return hl7v2.get_field(msa[0], 1) if msa else ""


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


# ---- appointments (MSSanté citoyenne) -----------------------------------------------------------------------


@dataclass
class AcceptedAppointment:
    patient_id: int
    structure_id: int
    mail_id: int | None
    warnings: list[Hl7Error]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _appointment_prefix(structure_id: int, appointment_id: str) -> str:
    # Hashed: an appointment id may hold ":" or LIKE wildcards, and the prefix must name one appointment only.
    return f"out:appt:{structure_id}:{_hash(appointment_id)}:"


def _appointment_mails(s: Session, structure_id: int, appointment_id: str) -> list[Mail]:
    prefix = _appointment_prefix(structure_id, appointment_id)
    return list(
        s.scalars(
            select(Mail)
            .where(Mail.direction == "out", Mail.key.startswith(prefix, autoescape=True))
            .order_by(Mail.id)
            .with_for_update()
        )
    )


def _new_appointment_mail(
    s: Session,
    site_id: int,
    patient: Patient,
    appointment_id: str,
    suffix: str,
    details: dict[str, Any],
) -> Mail:
    address = patient_mailbox(patient.ins_matricule or "", ins_qualified=True)
    for previous in _appointment_mails(s, site_id, appointment_id):
        if previous.status == "pending":
            # A newer version of the appointment replaces a reminder that has not left yet.
            previous.status, previous.reason = "cancelled", "Remplacé par une modification du rendez-vous"
    mail = Mail(
        direction="out",
        key=_appointment_prefix(site_id, appointment_id) + suffix,
        mailbox="",
        recipients=[address],
        structure_id=site_id,
        patient_id=patient.id,
        status="pending",
        detail={
            "kind": "appointment",
            "appointment_id": appointment_id,
            "recipients": {_norm(address): {"status": "pending"}},
            **details,
        },
    )
    s.add(mail)
    s.flush()
    jobs.enqueue(
        s,
        JobKind.MSS_APPOINTMENT,
        f"{JobKind.MSS_APPOINTMENT}:{mail.id}",
        {"mail_id": mail.id},
        structure_id=site_id,
        patient_id=patient.id,
    )
    return mail


def _hl7_error(message: str, location: str, code: str = "207") -> Hl7Error:
    return Hl7Error(code, message, location=location, severity="E", application_code="906")


def _find_patient(s: Session, site: Structure, appt: Appointment) -> Patient:
    """The patient by IPP, else by INS. An appointment never creates an identity: the GAM's feed does."""
    ipp = appt.patient.ipp
    patient = find_by_identifier(s, ipp, site) if ipp is not None else None
    ins = read_ins(appt.patient)
    if patient is None and ins is not None:
        patient = s.scalar(
            select(Patient).where(
                Patient.structure_id == site.id,
                Patient.active.is_(True),
                Patient.ins_matricule == ins.matricule,
                Patient.ins_oid == ins.oid,
            )
        )
    if patient is None:
        raise _hl7_error(
            "Patient inconnu de la plateforme : son identité n'a pas été reçue du GAM", "PID^1^3"
        )
    return patient


def accept_appointment(s: Session, appt: Appointment, sender: str) -> AcceptedAppointment:
    """Record an SIU's appointment and queue the patient's mail (inside the HL7 intake transaction).

    Raises Hl7Error (AE) for a patient without a qualified INS: Mon espace santé is addressed by the INS only.
    """
    ipp = appt.patient.ipp
    candidates = [ipp.authority_oid, ipp.assigning_authority_name] if ipp is not None else []
    site = resolve_site(s, [*candidates, appt.header.sending_facility or ""])
    if site is None:
        raise _hl7_error("Établissement émetteur inconnu : aucun site du GHT ne le déclare", "MSH^1^4")
    patient = _find_patient(s, site, appt)
    warnings: list[Hl7Error] = []
    if appt.event == "cancelled":
        return _cancel_appointment(s, site.id, patient, appt, warnings)
    ins = read_ins(appt.patient)
    if ins is None:
        raise _hl7_error(
            "INS du patient absent : rendez-vous non transmissible à Mon espace santé", "PID^1^3"
        )
    if patient.status != IdentityStatus.QUAL.value or not patient.ins_matricule:
        raise _hl7_error(
            "Identité INS du patient non qualifiée : rendez-vous non transmissible à Mon espace santé",
            "PID^1^32",
        )
    if patient.ins_matricule != ins.matricule:
        raise _hl7_error("L'INS du message n'est pas celui de l'identité qualifiée du patient", "PID^1^3")
    assert appt.start is not None  # parse_siu requires it for a booking or a modification
    if appt.start <= datetime.now(UTC):
        warnings.append(
            Hl7Error(
                "207",
                "Rendez-vous passé : aucun courriel envoyé au patient",
                location="TQ1^1^7",
                severity="W",
                application_code="906",
            )
        )
        return AcceptedAppointment(patient.id, site.id, None, warnings)
    place = appt.place
    if appt.service:
        place = f"{place} — {appt.service}"
    if appt.professionals:
        place = f"{place}, avec {', '.join(appt.professionals)}"
    mail = _new_appointment_mail(
        s,
        site.id,
        patient,
        appt.appointment_id,
        _hash(f"{sender}|{appt.header.control_id}"),
        {
            "event": appt.event,
            "start": appt.start.isoformat(),
            "place": place,
            "preparation": appt.preparation,
            "no_reply": True,
            "source": "hl7",
        },
    )
    return AcceptedAppointment(patient.id, site.id, mail.id, warnings)


def _cancel_appointment(
    s: Session, site_id: int, patient: Patient, appt: Appointment, warnings: list[Hl7Error]
) -> AcceptedAppointment:
    already_sent = False
    for mail in _appointment_mails(s, site_id, appt.appointment_id):
        if mail.status == "pending":
            mail.status, mail.reason = "cancelled", "Rendez-vous annulé avant l'envoi du courriel"
        elif mail.status in ("sending", "sent", "delivered", "read"):
            already_sent = True
    if already_sent:
        # mss_mail has no cancellation mail yet: say so to the DPI rather than let it believe the patient knows.
        warnings.append(
            Hl7Error(
                "207",
                "Annulation enregistrée mais non envoyée : le patient a reçu la confirmation, le prévenir directement",
                location="SCH^1^2",
                severity="W",
                application_code="906",
            )
        )
    return AcceptedAppointment(patient.id, site_id, None, warnings)


def schedule_appointment(
    s: Session,
    patient_id: int,
    *,
    start: datetime,
    place: str,
    preparation: str,
    allow_reply: bool,
    actor: str,
) -> Mail:
    """An appointment mail requested through the API (same rules as an SIU)."""
    patient = s.get(Patient, patient_id)
    if patient is None or not patient.active:
        raise MssOutboundError("NOT_FOUND", "Patient inconnu")
    if patient.status != IdentityStatus.QUAL.value or not patient.ins_matricule:
        raise MssOutboundError(
            "INS_NOT_QUALIFIED",
            "Identité INS du patient non qualifiée : rendez-vous non transmissible à Mon espace santé",
        )
    if start.tzinfo is None:
        raise MssOutboundError("START_NAIVE", "Date du rendez-vous sans fuseau horaire")
    if start <= datetime.now(UTC):
        raise MssOutboundError("START_PAST", "Date du rendez-vous passée")
    if not place.strip():
        raise MssOutboundError("PLACE_MISSING", "Lieu du rendez-vous absent")
    appointment_id = f"api:{uuid.uuid4()}"
    mail = _new_appointment_mail(
        s,
        patient.structure_id,
        patient,
        appointment_id,
        "api",
        {
            "event": "booked",
            "start": start.isoformat(),
            "place": " ".join(place.split()),
            "preparation": preparation.strip(),
            "no_reply": not allow_reply,
            "source": "api",
        },
    )
    s.add(
        AuditEvent(
            actor=actor,
            action="mss_appointment",
            patient_id=patient.id,
            reason="api",
            detail={"mail_id": mail.id},
        )
    )
    return mail


def _prepare_appointment(db: Database, cfg: MssOutboundConfig, mail_id: int) -> _Ready | dict[str, Any]:
    with db.session() as s:
        mail = s.scalar(select(Mail).where(Mail.id == mail_id).with_for_update())
        assert mail is not None
        if mail.status == "sending":
            mail.status, mail.reason = "failed", UNCERTAIN_TEXT
            return {"skipped": "uncertain"}
        if mail.status != "pending":
            return {"skipped": mail.status}
        detail = mail.detail
        start = datetime.fromisoformat(detail["start"])
        patient = s.get(Patient, mail.patient_id) if mail.patient_id else None
        if start <= datetime.now(UTC):
            mail.status, mail.reason = "failed", "Rendez-vous passé avant l'envoi : rappel non envoyé"
            return {"failed": "START_PAST"}
        if mail.payload_sha256 is None:
            sender = _sender_for(s, cfg, mail.structure_id)
            try:
                msg = build_patient_appointment_mail(
                    sender=sender,
                    patient_ins=(patient.ins_matricule or "") if patient is not None else "",
                    qualified=patient is not None and patient.status == IdentityStatus.QUAL.value,
                    when=start,
                    place=detail["place"],
                    preparation=detail.get("preparation", ""),
                    nil=cfg.nil,
                    no_reply=bool(detail.get("no_reply", True)),
                )
            except MailError as exc:
                mail.status, mail.reason = "failed", exc.message_fr
                return {"failed": exc.code}
            envelope = smtp_envelope(msg, return_receipt=False)
            raw = msg.as_bytes(policy=policy.SMTP)
            mail.payload_sha256 = store_payload(s, raw)
            mail.message_id, mail.subject = str(msg["Message-ID"]), str(msg["Subject"])[:500]
            mail.sender = mail.mailbox = sender
            mail.detail = {**detail, "envelope": asdict(envelope)}
        else:
            raw, envelope = s.get_one(Payload, mail.payload_sha256).data, _envelope(mail)
        mail.status = "sending"
        return _Ready(mail.id, raw, envelope)


async def send_appointment_mail(
    db: Database, mailer: MailSender, cfg: MssOutboundConfig, mail_id: int
) -> dict[str, Any]:
    ready = await asyncio.to_thread(_prepare_appointment, db, cfg, mail_id)
    return await _send_prepared(
        db,
        mailer,
        ready,
        not_built="rappel de rendez-vous non envoyé",
        all_refused="adresse du patient refusée par l'opérateur",
    )


# ---- job handlers -----------------------------------------------------------------------------------------


def make_mss_send_handler(db: Database, mailer: MailSender, cfg: MssOutboundConfig) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_document_mail(db, mailer, cfg, int(job.args["delivery_id"]))

    return handle


def make_appointment_handler(db: Database, mailer: MailSender, cfg: MssOutboundConfig) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_appointment_mail(db, mailer, cfg, int(job.args["mail_id"]))

    return handle


def make_mss_zam_handler(db: Database, dpi: DpiSender, *, app: str = "OPENSEGUR") -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_mss_zam(db, dpi, job.id, dict(job.args), app=app)

    return handle
