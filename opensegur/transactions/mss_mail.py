"""MSSanté mails, both ways: document mails (``IHE_XDM.ZIP`` attached) and patient mails out, inbound mails in.

Sources (reference/digests/standards.md §4): Référentiel socle MSSanté #2 "Clients de messagerie" ECO.2.x as
quoted by third parties (▲), the HL7 volet's mapping-mss.md (FROM / TO / REPLY-TO / X-MSS-MES) and the inbound
volet (subject convention). Decisions:

- Subject: ``XDM/1.0/DDM+<libellé> <NOM> <prénom> <JJ/MM/AAAA>`` — the inbound volet's form; its examples show
  the family name upper-cased and the birth date as ``12/10/1988``.
- ``X-MSS-CODECDA`` / ``X-MSS-INS`` are *derived from the XDM package* being sent, never passed in, so they cannot
  disagree with the attachment (ECO.2.4.1/2.4.2). ``X-MSS-INS`` is the flag ``O``/``N`` ("a qualified INS is in
  the archive"), not a matricule: ``O`` needs the caller's word that the identity is qualified *and* every CDA
  carrying the INS (matricule + OID) with the traits.
- ``X-MSS-NIL`` (product reference from the Convergence platform) goes on every mail, so it is a required argument.
- ``X-MSS-MES: FIN`` only on mails to a patient address when the professional forbids replies (ECO.2.2.8).
- Patient address ``<matricule>@patient.mssante.fr`` only for a qualified INS (digest §4.2; the rule text itself
  was not found, the Ségur identity rules make it implicit): refused otherwise, and only the patient's own.
- DSN is requested at SMTP level (RFC 3461 ``NOTIFY``/``RET``/``ENVID``): :func:`smtp_envelope` gives the
  parameters for ``smtplib.SMTP.send_message``; the message itself carries nothing for it.
- Inbound ``X-MSS-INS`` is *untrusted*: :func:`verify_ins_claim` checks it against the CDA(s) of the package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from email import policy
from email.errors import (
    CloseBoundaryNotFoundDefect,
    InvalidMultipartContentTransferEncodingDefect,
    MessageDefect,
    MissingHeaderBodySeparatorDefect,
    MultipartInvariantViolationDefect,
    NoBoundaryInMultipartDefect,
    StartBoundaryNotFoundDefect,
)
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr
from zoneinfo import ZoneInfo

from opensegur.content.cda import CdaError, CdaHeader, parse_cda
from opensegur.errors import OpenSegurError
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import nir_key
from opensegur.transactions.xdm import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL,
    XDM_ZIP_NAME,
    XdmPackage,
    cx_identifier,
    read_xdm,
)

__all__ = [
    "PATIENT_DOMAIN",
    "XDM_SUBJECT_PREFIX",
    "MailError",
    "MailPatient",
    "Attachment",
    "InsClaim",
    "InboundMail",
    "SmtpEnvelope",
    "patient_mailbox",
    "is_patient_mailbox",
    "document_subject",
    "build_document_mail",
    "build_patient_appointment_mail",
    "smtp_envelope",
    "parse_inbound_mail",
    "open_packages",
    "verify_ins_claim",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ATTACHMENT",
]

PATIENT_DOMAIN = "patient.mssante.fr"
XDM_SUBJECT_PREFIX = "XDM/1.0/DDM"
# MSSanté operators cap messages around 10-25 MB; these defaults leave room for base64 overhead.
DEFAULT_MAX_BYTES = 40_000_000
DEFAULT_MAX_ATTACHMENT = 25_000_000
_MAX_PARTS = 64
_MAX_DEPTH = 4
_MATRICULE_RE = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}$")  # 13 characters + 2-digit key
_PARIS = ZoneInfo("Europe/Paris")
_STRUCTURAL_DEFECTS: tuple[type[MessageDefect], ...] = (
    NoBoundaryInMultipartDefect,
    StartBoundaryNotFoundDefect,
    CloseBoundaryNotFoundDefect,
    MultipartInvariantViolationDefect,
    InvalidMultipartContentTransferEncodingDefect,
    MissingHeaderBodySeparatorDefect,
)


class MailError(OpenSegurError, ValueError):
    """A mail cannot be built or accepted. ``code`` is stable for programs, ``message_fr`` is shown to staff."""

    def __init__(self, code: str, message_fr: str) -> None:
        super().__init__(f"{code}: {message_fr}")
        self.code = code
        self.message_fr = message_fr


@dataclass(frozen=True)
class MailPatient:
    """The patient as the subject names them; ``ins_matricule`` is the 15-character matricule."""

    ins_matricule: str
    family: str
    given: str
    birth_date: date


@dataclass
class Attachment:
    filename: str
    content_type: str
    content: bytes


@dataclass
class InsClaim:
    """What the sender's ``X-MSS-INS`` header says. Never trusted until :func:`verify_ins_claim` matched it."""

    raw: str
    qualified: bool | None  # "O" / "N"
    matricule: str | None  # non-conformant senders put the matricule itself in the header
    trusted: bool = False


@dataclass
class InboundMail:
    message_id: str | None
    from_addr: str
    to: list[str]
    cc: list[str]
    subject: str
    date: str | None
    body_text: str
    xdm_zips: list[bytes] = field(default_factory=list)
    cda_attachments: list[Attachment] = field(default_factory=list)
    pdf_attachments: list[Attachment] = field(default_factory=list)
    other_attachments: list[Attachment] = field(default_factory=list)
    mss_headers: dict[str, str] = field(default_factory=dict)  # X-MSS-* as received
    cda_codes: list[str] = field(default_factory=list)  # X-MSS-CODECDA split on commas
    ins_claim: InsClaim | None = None
    disposition_notification_to: str | None = None
    original_recipient: str | None = None
    return_path: str | None = None
    raw: bytes = b""
    message: EmailMessage | None = None

    @property
    def attachments(self) -> list[Attachment]:
        xdm = [Attachment(XDM_ZIP_NAME, "application/zip", z) for z in self.xdm_zips]
        return [*xdm, *self.cda_attachments, *self.pdf_attachments, *self.other_attachments]


@dataclass(frozen=True)
class SmtpEnvelope:
    """Arguments of ``smtplib.SMTP.send_message(msg, mail_from, rcpt_to, mail_options, rcpt_options)``."""

    mail_from: str
    rcpt_to: tuple[str, ...]
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------------
# Addresses and subject


def is_patient_mailbox(address: str) -> bool:
    return parseaddr(address)[1].lower().endswith("@" + PATIENT_DOMAIN)


def patient_mailbox(matricule: str, *, ins_qualified: bool) -> str:
    """``<matricule>@patient.mssante.fr`` — only for a qualified INS: a provisional identity may be someone else."""
    if not ins_qualified:
        raise MailError(
            "MSS_INS_NOT_QUALIFIED",
            "Envoi à la messagerie de Mon espace santé impossible : l'identité INS du patient n'est pas qualifiée",
        )
    value = "".join(matricule.split()).upper()
    try:
        valid = bool(_MATRICULE_RE.match(value)) and int(value[13:]) == nir_key(value[:13])
    except IdentityError:
        valid = False
    if not valid:
        raise MailError("MSS_INS_INVALID", f"Matricule INS mal formé : « {matricule} »")
    return f"{value}@{PATIENT_DOMAIN}"


def _ascii_safe(text: str) -> str:
    # Header values must not smuggle line breaks (header injection) whatever the source of the text.
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def document_subject(label: str, patient: MailPatient) -> str:
    """``XDM/1.0/DDM+<libellé> <NOM> <prénom> <JJ/MM/AAAA>`` (inbound volet, struct-msg-mdn.md)."""
    parts = [label, patient.family.upper(), patient.given, patient.birth_date.strftime("%d/%m/%Y")]
    return f"{XDM_SUBJECT_PREFIX}+" + " ".join(_ascii_safe(p) for p in parts if p.strip())


# --------------------------------------------------------------------------------------------------------------
# Outbound


def _has_qualified_ins(header: CdaHeader, matricule: str) -> bool:
    p = header.patient
    traits = (
        p.birth_family,
        p.first_given or (p.given_names[0] if p.given_names else None),
        p.birth_time,
        p.gender,
    )
    return p.ins_matricule == matricule and bool(p.ins_oid) and all(traits)


def _check_recipients(recipients: Sequence[str], patient: MailPatient, ins_qualified: bool) -> list[str]:
    out = []
    for r in recipients:
        addr = parseaddr(r)[1]
        if not addr or "@" not in addr:
            raise MailError("MSS_ADDRESS_INVALID", f"Adresse de destinataire invalide : « {r} »")
        if is_patient_mailbox(addr):
            own = patient_mailbox(patient.ins_matricule, ins_qualified=ins_qualified)
            if addr.lower() != own.lower():
                raise MailError(
                    "MSS_WRONG_PATIENT",
                    "L'adresse patient du destinataire ne correspond pas à l'INS du patient du document",
                )
        out.append(addr)
    return out


def _base_message(
    sender: str, to: Sequence[str], subject: str, nil: str, when: datetime | None
) -> EmailMessage:
    if not nil.strip():
        raise ValueError("X-MSS-NIL (référence produit Convergence) is required on every MSSanté mail")
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when or datetime.now(_PARIS))
    msg["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    msg["MIME-Version"] = "1.0"
    msg["X-MSS-NIL"] = _ascii_safe(nil)
    return msg


def build_document_mail(
    *,
    sender: str,
    recipients: Sequence[str],
    patient: MailPatient,
    document_label: str,
    xdm_zip: bytes,
    body_text: str,
    nil: str,
    ins_qualified: bool,
    send_to_patient: bool = False,
    patient_no_reply: bool = False,
    reply_to: str | None = None,
    read_receipt_to: str | None = None,
    pdf_attachments: Sequence[tuple[str, bytes]] = (),
    cda_attachments: Sequence[tuple[str, bytes]] = (),
    when: datetime | None = None,
) -> EmailMessage:
    """One patient's document mail. ``sender`` is the application mailbox (mapping-mss.md: FROM = BAL applicative).

    The XDM package is re-read with :func:`read_xdm` so the X-MSS headers describe what is actually attached and a
    package of another patient cannot be sent under this patient's subject.
    """
    package = read_xdm(xdm_zip)
    ident, _ = cx_identifier(package.patient_id)
    if ident != patient.ins_matricule:
        raise MailError(
            "MSS_WRONG_PATIENT", "L'archive IHE_XDM concerne un autre patient que celui du courriel"
        )
    to = _check_recipients(recipients, patient, ins_qualified)
    if send_to_patient:
        own = patient_mailbox(patient.ins_matricule, ins_qualified=ins_qualified)
        if own.lower() not in (a.lower() for a in to):
            to.append(own)
    if not to:
        raise MailError("MSS_NO_RECIPIENT", "Aucun destinataire pour le courriel MSSanté")
    msg = _base_message(sender, to, document_subject(document_label, patient), nil, when)
    if reply_to:
        msg["Reply-To"] = reply_to
    cdas = [d.cda for d in package.documents if d.cda is not None]
    if cdas:
        codes = [h.code.code for h in cdas if h.code is not None]
        if codes:
            msg["X-MSS-CODECDA"] = ",".join(codes)
        qualified = ins_qualified and all(_has_qualified_ins(h, patient.ins_matricule) for h in cdas)
        msg["X-MSS-INS"] = "O" if qualified else "N"
    if patient_no_reply and any(is_patient_mailbox(a) for a in to):
        msg["X-MSS-MES"] = "FIN"
    if read_receipt_to:
        msg["Disposition-Notification-To"] = read_receipt_to
    msg.set_content(body_text, charset="utf-8")
    msg.add_attachment(xdm_zip, maintype="application", subtype="zip", filename=XDM_ZIP_NAME)
    for name, content in pdf_attachments:
        msg.add_attachment(content, maintype="application", subtype="pdf", filename=name)
    for name, content in cda_attachments:
        msg.add_attachment(content, maintype="text", subtype="xml", filename=name)
    return msg


def smtp_envelope(msg: EmailMessage, *, return_receipt: bool, bounce_to: str | None = None) -> SmtpEnvelope:
    """SMTP envelope, with RFC 3461 DSN parameters when a delivery receipt ("accusé de réception") is wanted.

    ``ENVID`` is the Message-ID so a DSN can be tied back to the mail even when it quotes headers only.
    """
    recipients = tuple(a for _, a in getaddresses([*msg.get_all("To", []), *msg.get_all("Cc", [])]) if a)
    mail_from = bounce_to or parseaddr(str(msg["From"]))[1]
    if not return_receipt:
        return SmtpEnvelope(mail_from, recipients)
    envid = re.sub(r"[^!-*,-<>-~]", "", str(msg["Message-ID"] or ""))  # xtext-safe subset (RFC 3461 §4)
    mail_options = ("RET=HDRS", f"ENVID={envid}") if envid else ("RET=HDRS",)
    return SmtpEnvelope(mail_from, recipients, mail_options, ("NOTIFY=SUCCESS,FAILURE,DELAY",))


def build_patient_appointment_mail(
    *,
    sender: str,
    patient_ins: str,
    qualified: bool,
    when: datetime,
    place: str,
    preparation: str,
    nil: str,
    no_reply: bool = True,
    sent_at: datetime | None = None,
) -> EmailMessage:
    """Appointment reminder to the patient's Mon espace santé mailbox.

    No-reply: the référentiel defines only ``X-MSS-MES: FIN`` (ECO.2.2.8 — MES then prevents the patient from
    answering); it defines no appointment format, so the text below is ours. No Reply-To is set when replies are
    forbidden, so the mail offers no way back that MES would have to block.
    """
    to = patient_mailbox(patient_ins, ins_qualified=qualified)
    local = when.astimezone(_PARIS) if when.tzinfo else when
    day = f"{local.day:02d}/{local.month:02d}/{local.year}"
    hour = f"{local.hour:02d}h{local.minute:02d}"
    msg = _base_message(sender, [to], f"Votre rendez-vous du {day} à {hour}", nil, sent_at)
    if no_reply:
        msg["X-MSS-MES"] = "FIN"
    lines = [
        "Bonjour,",
        "",
        f"Nous vous confirmons votre rendez-vous le {day} à {hour}.",
        f"Lieu : {place}",
    ]
    if preparation.strip():
        lines += ["", "Préparation :", preparation.strip()]
    lines += [""]
    if no_reply:
        lines += ["Ce message est envoyé automatiquement : il n'est pas possible d'y répondre."]
        lines += ["Pour toute question, contactez directement le service."]
    lines += ["", "Cordialement."]
    msg.set_content("\n".join(lines) + "\n", charset="utf-8")
    return msg


# --------------------------------------------------------------------------------------------------------------
# Inbound


def _addresses(msg: Message, name: str) -> list[str]:
    try:
        values = [str(v) for v in msg.get_all(name, [])]
    except (ValueError, TypeError, IndexError) as exc:
        raise MailError("MAIL_MALFORMED", f"En-tête {name} illisible : {exc}") from exc
    return [a for _, a in getaddresses(values) if a]


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError) as exc:
        raise MailError("MAIL_MALFORMED", f"En-tête {name} illisible : {exc}") from exc
    return _ascii_safe(str(value)) if value is not None else None


def _encoded_size(part: Message) -> int:
    payload = part.get_payload(decode=False)
    text = payload if isinstance(payload, str) else ""
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        return len(text) * 3 // 4  # upper bound of the decoded size, known before decoding anything
    return len(text)


def _check_structure(msg: Message, depth: int = 0) -> int:
    if depth > _MAX_DEPTH:
        raise MailError("MAIL_TOO_DEEP", "Courriel refusé : imbrication MIME trop profonde")
    for defect in msg.defects:
        if isinstance(defect, _STRUCTURAL_DEFECTS):
            raise MailError("MAIL_MALFORMED", f"Structure MIME invalide : {type(defect).__name__}")
    count = 1
    if msg.is_multipart():
        payload = msg.get_payload()
        if not isinstance(payload, list) or not payload:
            raise MailError("MAIL_MALFORMED", "Structure MIME invalide : partie multiple vide")
        for sub in payload:
            if not isinstance(sub, Message):
                raise MailError("MAIL_MALFORMED", "Structure MIME invalide : partie illisible")
            count += _check_structure(sub, depth + 1)
            if count > _MAX_PARTS:
                raise MailError("MAIL_TOO_MANY_PARTS", f"Courriel refusé : plus de {_MAX_PARTS} parties MIME")
    return count


def _parse_ins_claim(raw: str | None) -> InsClaim | None:
    if raw is None:
        return None
    value = raw.strip().upper()
    if value in ("O", "N"):
        return InsClaim(raw, value == "O", None)
    compact = "".join(value.split())
    if len(compact) == 15 and _MATRICULE_RE.match(compact):
        return InsClaim(raw, None, compact)
    return InsClaim(raw, None, None)


def _looks_like_cda(content: bytes) -> bool:
    head = content[:4096]
    return b"ClinicalDocument" in head and b"urn:hl7-org:v3" in content[:8192]


def parse_inbound_mail(
    raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_attachment: int = DEFAULT_MAX_ATTACHMENT
) -> InboundMail:
    """Parse an untrusted MSSanté mail (RFC 5322 bytes as fetched over IMAP) into its useful parts."""
    if not isinstance(raw, bytes | bytearray):
        raise MailError("MAIL_MALFORMED", "Le courriel doit être fourni en octets")
    if len(raw) > max_bytes:
        raise MailError("MAIL_TOO_LARGE", f"Courriel trop volumineux ({len(raw)} octets > {max_bytes})")
    if not raw.strip():
        raise MailError("MAIL_MALFORMED", "Courriel vide")
    msg = BytesParser(policy=policy.default).parsebytes(bytes(raw))
    assert isinstance(msg, EmailMessage)
    _check_structure(msg)
    from_list = _addresses(msg, "From")
    if len(from_list) != 1:
        raise MailError("MAIL_MALFORMED", "En-tête From absent ou multiple")
    declared = str(msg.get("Content-Type", "")).lower()
    if declared.startswith("multipart/") and not msg.is_multipart():
        raise MailError("MAIL_MALFORMED", "Structure MIME invalide : partie multiple sans frontière")
    mss = {k: _ascii_safe(str(v)) for k, v in msg.items() if k.upper().startswith("X-MSS-")}
    mss = {k.upper(): v for k, v in mss.items()}
    codes = [c.strip() for c in mss.get("X-MSS-CODECDA", "").split(",") if c.strip()]
    mail = InboundMail(
        message_id=_header(msg, "Message-ID"),
        from_addr=from_list[0],
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        subject=_header(msg, "Subject") or "",
        date=_header(msg, "Date"),
        body_text="",
        mss_headers=mss,
        cda_codes=codes,
        ins_claim=_parse_ins_claim(mss.get("X-MSS-INS")),
        disposition_notification_to=next(iter(_addresses(msg, "Disposition-Notification-To")), None),
        original_recipient=_header(msg, "Original-Recipient"),
        return_path=next(iter(_addresses(msg, "Return-Path")), None),
        raw=bytes(raw),
        message=msg,
    )
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() == "message":
            continue
        ctype = part.get_content_type()
        filename = part.get_filename() or ""
        is_attachment = part.get_content_disposition() == "attachment" or bool(filename)
        if not is_attachment and ctype == "text/plain" and not mail.body_text:
            if _encoded_size(part) > max_attachment:
                raise MailError("MAIL_ATTACHMENT_TOO_LARGE", "Corps du courriel trop volumineux")
            try:
                mail.body_text = str(part.get_content())
            except (LookupError, ValueError):
                # An unknown charset must not make the whole mail (and its documents) unreadable.
                payload = part.get_payload(decode=True)
                mail.body_text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            continue
        if not is_attachment:
            continue  # text/html alternatives and inline decorations carry nothing to integrate
        size = _encoded_size(part)
        if size > max_attachment:
            raise MailError(
                "MAIL_ATTACHMENT_TOO_LARGE",
                f"Pièce jointe « {_ascii_safe(filename)} » trop volumineuse (≈{size} octets > {max_attachment})",
            )
        try:
            content = part.get_payload(decode=True)
        except (ValueError, TypeError) as exc:
            raise MailError("MAIL_MALFORMED", f"Pièce jointe illisible : {exc}") from exc
        if not isinstance(content, bytes):
            raise MailError("MAIL_MALFORMED", "Pièce jointe illisible")
        name = _ascii_safe(filename)
        lower = name.lower()
        if lower in ("ihe_xdm.zip", "ihe-xdm.zip") or (ctype == "application/zip" and "xdm" in lower):
            mail.xdm_zips.append(content)
        elif ctype == "application/pdf" or lower.endswith(".pdf"):
            if not content.startswith(b"%PDF-"):
                raise MailError("MAIL_ATTACHMENT_INVALID", f"« {name} » annoncé PDF mais n'en est pas un")
            mail.pdf_attachments.append(Attachment(name, "application/pdf", content))
        elif (ctype in ("text/xml", "application/xml") or lower.endswith(".xml")) and _looks_like_cda(
            content
        ):
            mail.cda_attachments.append(Attachment(name, ctype, content))
        else:
            mail.other_attachments.append(Attachment(name, ctype, content))
    return mail


def open_packages(
    mail: InboundMail,
    *,
    max_total: int = DEFAULT_MAX_TOTAL,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_files: int = DEFAULT_MAX_FILES,
) -> tuple[list[XdmPackage], list[CdaHeader]]:
    """Open every XDM package and bare CDA of the mail; refuse a mail that concerns more than one patient.

    MSSanté sends one mail per patient (digest §4.1): two patients in one mail is either a sender bug or an
    attempt to slip a document into the wrong file, and no automatic integration can choose for the user.
    """
    packages = [
        read_xdm(z, max_total=max_total, max_ratio=max_ratio, max_files=max_files) for z in mail.xdm_zips
    ]
    bare: list[CdaHeader] = []
    for a in mail.cda_attachments:
        try:
            bare.append(parse_cda(a.content)[1])
        except CdaError as exc:
            raise MailError("MAIL_ATTACHMENT_INVALID", f"« {a.filename} » : {exc.message_fr}") from exc
    patients: set[tuple[str, str | None]] = {cx_identifier(p.patient_id) for p in packages}
    patients |= {(h.patient.ins_matricule, h.patient.ins_oid) for h in bare if h.patient.ins_matricule}
    if len(patients) > 1:
        raise MailError("MSS_MULTIPLE_PATIENTS", "Le courriel contient des documents de plusieurs patients")
    return packages, bare


def verify_ins_claim(mail: InboundMail, packages: Sequence[XdmPackage]) -> InsClaim | None:
    """Match the sender's ``X-MSS-INS`` against the CDA(s); mark the claim trusted or raise ``MSS_INS_MISMATCH``.

    The header is set by the sender's software and read by no checksum: only the CDA (hash-checked against
    METADATA.XML) says who the document is about.
    """
    claim = mail.ins_claim
    if claim is None:
        return None
    headers = [d.cda for p in packages for d in p.documents if d.cda is not None]
    if not headers:
        raise MailError(
            "MSS_INS_MISMATCH", "En-tête X-MSS-INS présent mais aucun document CDA dans le courriel"
        )
    if claim.matricule is not None:
        if any(h.patient.ins_matricule != claim.matricule for h in headers):
            raise MailError(
                "MSS_INS_MISMATCH", "L'INS annoncé dans X-MSS-INS ne correspond pas à celui du document"
            )
    elif claim.qualified is True:
        if not all(
            h.patient.ins_matricule and _has_qualified_ins(h, h.patient.ins_matricule) for h in headers
        ):
            raise MailError(
                "MSS_INS_MISMATCH",
                "X-MSS-INS annonce une INS qualifiée absente ou incomplète dans le document",
            )
    elif claim.qualified is None:
        raise MailError("MSS_INS_MISMATCH", f"Valeur X-MSS-INS non reconnue : « {claim.raw} »")
    claim.trusted = True
    return claim
