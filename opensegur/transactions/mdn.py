"""Acknowledgements of MSSanté mails: MDN (RFC 8098) built and parsed, DSN (RFC 3464) parsed.

The MDN follows the inbound volet (struct-msg-mdn.md): ``multipart/report; report-type=disposition-notification``
with a human part, the ``message/disposition-notification`` part (``Final-Recipient``, ``Original-Recipient``,
``Original-Message-ID``, ``Disposition``), the original message, then the original attachments again.

Decisions where the volet and the RFCs disagree:
- The volet writes errors as ``Disposition: …; processed/Error: 902^label``. RFC 8098 only allows atoms as
  disposition modifiers, so ``Error: 902^label`` is not RFC syntax. Receivers built on the volet look for it, so it
  is emitted as the volet says, *and* the RFC 8098 ``Error:`` field carries the same ``code^label``; the parser
  accepts either.
- The volet appends the original attachments after the original message; RFC 6522 says a report has 2 or 3 parts.
  The volet wins by default (``append_attachments=True``) since the PFI on the other side implements the volet.
- The machine-readable part is sent 7-bit: labels there are stripped of accents (the human part keeps them).
- DSN: the MSSanté sources do not specify it (digest §4.3 ⚠); it is plain RFC 3464, requested by the SMTP envelope
  (:func:`opensegur.transactions.mss_mail.smtp_envelope`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Literal
from zoneinfo import ZoneInfo

from opensegur.errors import OpenSegurError
from opensegur.transactions.mss_mail import InboundMail

__all__ = [
    "ERROR_LABELS",
    "KO_SUBJECT_PREFIX",
    "MdnError",
    "Mdn",
    "Dsn",
    "DsnRecipient",
    "Disposition",
    "build_mdn",
    "parse_mdn",
    "parse_dsn",
]

# applicationErrorCondition of the inbound volet (error-codes.md), returned by the DPI in ERR-5.
ERROR_LABELS = {
    "900": "Version du document incorrecte lors d'une demande de remplacement/suppression",
    "901": "Auteur non autorisé à remplacer ou supprimer un document",
    "902": "Identifiant patient inconnu",
    "903": "INS non présent dans le document",
    "904": "L'INS transmis ne correspond pas exactement à celui stocké dans la base du consommateur",
    "905": "L'INS transmis n'est pas complet",
    "906": "Erreur 'Autre'",
}
KO_SUBJECT_PREFIX = "[KO Intégration système !]"
Disposition = Literal["displayed", "processed", "deleted", "dispatched", "failed"]
_DISPOSITIONS = ("displayed", "processed", "deleted", "dispatched", "failed")
_PARIS = ZoneInfo("Europe/Paris")
_DEFAULT_MAX_BYTES = 40_000_000
_SUBJECT_CODE_RE = re.compile(r"^\s*\[[^\]]*\]\s*\[(\d{3})\]")


class MdnError(OpenSegurError, ValueError):
    def __init__(self, code: str, message_fr: str) -> None:
        super().__init__(f"{code}: {message_fr}")
        self.code = code
        self.message_fr = message_fr


@dataclass
class Mdn:
    original_message_id: str | None
    final_recipient: str | None
    original_recipient: str | None
    action_mode: str | None  # automatic-action / manual-action
    sending_mode: str | None  # MDN-sent-automatically / MDN-sent-manually
    disposition: str  # displayed / processed / deleted / dispatched / failed
    modifiers: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_label: str | None = None
    reporting_ua: str | None = None
    subject: str = ""
    from_addr: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None and "error" not in self.modifiers and self.disposition != "failed"


@dataclass
class DsnRecipient:
    final_recipient: str | None
    original_recipient: str | None
    action: str  # failed / delayed / delivered / relayed / expanded
    status: str  # RFC 3463 enhanced code, e.g. "5.1.1"
    diagnostic: str | None = None
    remote_mta: str | None = None

    @property
    def permanent_failure(self) -> bool:
        return self.action == "failed" or self.status.startswith("5.")


@dataclass
class Dsn:
    reporting_mta: str | None
    envelope_id: str | None
    original_message_id: str | None
    recipients: list[DsnRecipient]
    arrival_date: str | None = None


# --------------------------------------------------------------------------------------------------------------
# Building


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.encode("ascii", "replace").decode("ascii").replace("?", "'").split())


def _one_line(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def _addr_type(address: str) -> str:
    return f"rfc822;{parseaddr(address)[1] or address.strip()}"


def build_mdn(
    original: InboundMail | Mapping[str, str],
    *,
    from_addr: str,
    final_recipient: str,
    disposition: Disposition = "processed",
    code: str | None = None,
    text_fr: str | None = None,
    automatic: bool = True,
    reporting_ua: str = "OpenSegur",
    append_attachments: bool = True,
    when: datetime | None = None,
) -> EmailMessage:
    """The MDN answering ``original`` (a parsed mail, or just its headers when the mail is gone).

    ``code`` is a 900–906 volet code (or another ``code`` the caller documents); it turns the MDN into the volet's
    negative acknowledgement: subject prefixed ``[KO Intégration système !][code]``, ``processed/Error: …``.
    Raises ``MDN_NOT_REQUESTED`` when the original did not ask for one: the volet then requires a standard mail.
    """
    if disposition not in _DISPOSITIONS:
        raise ValueError(f"unknown disposition type {disposition!r}")
    headers: Mapping[str, str]
    if isinstance(original, InboundMail):
        headers = {
            "Message-ID": original.message_id or "",
            "Subject": original.subject,
            "Disposition-Notification-To": original.disposition_notification_to or "",
            "Original-Recipient": original.original_recipient or "",
        }
    else:
        headers = {k: v for k, v in original.items()}
    lookup = {k.lower(): _one_line(str(v)) for k, v in headers.items() if v}
    notify_to = lookup.get("disposition-notification-to")
    if not notify_to:
        raise MdnError(
            "MDN_NOT_REQUESTED",
            "Le courriel d'origine ne demande pas d'accusé (Disposition-Notification-To absent) : "
            "répondre par un courriel standard",
        )
    label = ERROR_LABELS.get(code, "") if code else ""
    subject = lookup.get("subject", "")
    if code:
        subject = f"{KO_SUBJECT_PREFIX}[{code}] {subject}".rstrip()
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = from_addr
    msg["To"] = notify_to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when or datetime.now(_PARIS))
    msg["Message-ID"] = make_msgid(domain=parseaddr(from_addr)[1].rpartition("@")[2] or None)
    msg["MIME-Version"] = "1.0"
    original_id = lookup.get("message-id")
    if original_id:
        # Lets ordinary mail clients thread the acknowledgement under the original.
        msg["In-Reply-To"] = original_id
        msg["References"] = original_id

    if text_fr is None:
        if code:
            text_fr = (
                "Le message ci-dessous n'a pas pu être intégré automatiquement dans le DPI pour la raison "
                f"suivante : {label or 'erreur'} (code {code})."
            )
        else:
            text_fr = f"Le message ci-dessous a été traité ({disposition})."
    human = EmailMessage(policy=policy.SMTP)
    human.set_content(text_fr + "\n", charset="utf-8")

    modes = f"{'automatic-action' if automatic else 'manual-action'}/"
    modes += "MDN-sent-automatically" if automatic else "MDN-sent-manually"
    disposition_value = f"{modes}; {disposition}"
    fields = [f"Reporting-UA: {_ascii(reporting_ua)}"]
    if lookup.get("original-recipient"):
        fields.append(f"Original-Recipient: {lookup['original-recipient']}")
    fields.append(f"Final-Recipient: {_addr_type(final_recipient)}")
    if original_id:
        fields.append(f"Original-Message-ID: {original_id}")
    if code:
        error = _ascii(f"{code}^{label}" if label else code)
        fields.append(f"Disposition: {disposition_value}/Error: {error}")
        fields.append(f"Error: {error}")
    else:
        fields.append(f"Disposition: {disposition_value}")
    report = Message(policy=policy.SMTP)
    report["Content-Type"] = "message/disposition-notification"
    report["Content-Transfer-Encoding"] = "7bit"
    report.set_payload("\r\n".join(fields) + "\r\n")

    msg["Content-Type"] = "multipart/report; report-type=disposition-notification"
    msg.set_boundary(make_msgid().strip("<>").replace("@", "."))
    parts: list[Message | str] = [human, report]
    if isinstance(original, InboundMail) and original.message is not None:
        wrapped = EmailMessage(policy=policy.SMTP)
        wrapped.set_content(original.message)
        parts.append(wrapped)
        if append_attachments:
            for a in original.attachments:
                att = EmailMessage(policy=policy.SMTP)
                maintype, _, subtype = a.content_type.partition("/")
                att.set_content(
                    a.content, maintype=maintype, subtype=subtype or "octet-stream", filename=a.filename
                )
                parts.append(att)
    else:
        headers_part = Message(policy=policy.SMTP)
        headers_part["Content-Type"] = "text/rfc822-headers"
        headers_part.set_payload("".join(f"{k}: {_ascii(str(v))}\r\n" for k, v in headers.items() if v))
        parts.append(headers_part)
    msg.set_payload(parts)
    return msg


# --------------------------------------------------------------------------------------------------------------
# Parsing


def _parse(raw: bytes, max_bytes: int) -> EmailMessage:
    if not isinstance(raw, bytes | bytearray):
        raise MdnError("MAIL_MALFORMED", "Le message doit être fourni en octets")
    if len(raw) > max_bytes:
        raise MdnError("MAIL_TOO_LARGE", f"Message trop volumineux ({len(raw)} octets > {max_bytes})")
    msg = BytesParser(policy=policy.default).parsebytes(bytes(raw))
    assert isinstance(msg, EmailMessage)
    return msg


def _field_blocks(part: Message) -> list[Message]:
    """Header blocks of a ``message/disposition-notification`` or ``message/delivery-status`` part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    if str(part.get("Content-Transfer-Encoding", "")).lower() in ("base64", "quoted-printable"):
        decoded = part.get_payload(decode=True)
        text = decoded.decode("utf-8", "replace") if isinstance(decoded, bytes) else text
    blocks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [HeaderParser(policy=policy.compat32).parsestr(b.strip() + "\n") for b in blocks if b.strip()]


def _get(block: Message, name: str) -> str | None:
    value = block.get(name)
    return _one_line(str(value)) if value is not None else None


def _strip_type(value: str | None) -> str | None:
    # "rfc822; a@b.fr" -> "a@b.fr"
    if value is None:
        return None
    return value.split(";", 1)[1].strip() if ";" in value else value.strip()


def _find_part(msg: Message, types: tuple[str, ...]) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() in types:
            return part
    return None


def _split_error(text: str) -> tuple[str | None, str | None]:
    segments = text.strip().split("^")
    code = segments[0].strip() or None
    label = segments[1].strip() if len(segments) > 1 and segments[1].strip() else None
    return code, label


def parse_mdn(raw: bytes, *, max_bytes: int = _DEFAULT_MAX_BYTES) -> Mdn:
    """Read an MDN; accepts the volet's ``processed/Error: code^label`` and RFC 8098 ``Error:`` forms."""
    msg = _parse(raw, max_bytes)
    part = _find_part(msg, ("message/disposition-notification", "message/global-disposition-notification"))
    if part is None:
        raise MdnError("MDN_INVALID", "Pas de partie message/disposition-notification : ce n'est pas un MDN")
    fields: dict[str, str] = {}
    for block in _field_blocks(part):
        for key in block:
            value = _get(block, key)
            if value is not None:
                fields.setdefault(key.lower(), value)
    disposition_field = fields.get("disposition")
    if not disposition_field:
        raise MdnError("MDN_INVALID", "Champ Disposition absent du MDN")
    modes, _, rest = disposition_field.partition(";")
    if not rest:  # "Disposition: processed" without modes is invalid RFC 8098 but seen in the wild
        modes, rest = "", disposition_field
    action_mode, _, sending_mode = modes.strip().partition("/")
    dtype, _, modifier_text = rest.strip().partition("/")
    dtype = dtype.strip().lower()
    if dtype not in _DISPOSITIONS:
        raise MdnError("MDN_INVALID", f"Type de disposition inconnu : « {dtype} »")
    modifiers: list[str] = []
    code = label = None
    if modifier_text:
        head, sep, error_text = modifier_text.partition(":")
        if sep and head.strip().lower() == "error":
            modifiers.append("error")
            code, label = _split_error(error_text)
        else:
            modifiers = [m.strip().lower() for m in modifier_text.split(",") if m.strip()]
    if "error" in fields and code is None:
        code, label = _split_error(fields["error"])
        if "error" not in modifiers:
            modifiers.append("error")
    subject = str(msg.get("Subject", "") or "")
    if code is None and (found := _SUBJECT_CODE_RE.match(subject)):
        code = found.group(1)
    if code and not label:
        label = ERROR_LABELS.get(code)
    return Mdn(
        original_message_id=fields.get("original-message-id"),
        final_recipient=_strip_type(fields.get("final-recipient")),
        original_recipient=_strip_type(fields.get("original-recipient")),
        action_mode=action_mode.strip() or None,
        sending_mode=sending_mode.strip() or None,
        disposition=dtype,
        modifiers=modifiers,
        error_code=code,
        error_label=label,
        reporting_ua=fields.get("reporting-ua"),
        subject=_one_line(subject),
        from_addr=parseaddr(str(msg.get("From", "")))[1] or None,
    )


_STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def parse_dsn(raw: bytes, *, max_bytes: int = _DEFAULT_MAX_BYTES) -> Dsn:
    """Read an RFC 3464 delivery status notification (one entry per recipient)."""
    msg = _parse(raw, max_bytes)
    part = _find_part(msg, ("message/delivery-status", "message/global-delivery-status"))
    if part is None:
        raise MdnError("DSN_INVALID", "Pas de partie message/delivery-status : ce n'est pas un DSN")
    blocks = _field_blocks(part)
    if len(blocks) < 2:
        raise MdnError("DSN_INVALID", "DSN sans champ destinataire")
    per_message, per_recipient = blocks[0], blocks[1:]
    recipients = []
    for block in per_recipient:
        action = (_get(block, "Action") or "").lower()
        status = (_get(block, "Status") or "").split()[0] if _get(block, "Status") else ""
        if not action or not _STATUS_RE.match(status):
            raise MdnError(
                "DSN_INVALID", f"Champ Action/Status invalide dans le DSN (« {action} », « {status} »)"
            )
        recipients.append(
            DsnRecipient(
                final_recipient=_strip_type(_get(block, "Final-Recipient")),
                original_recipient=_strip_type(_get(block, "Original-Recipient")),
                action=action,
                status=status,
                diagnostic=_get(block, "Diagnostic-Code"),
                remote_mta=_strip_type(_get(block, "Remote-MTA")),
            )
        )
    original_id = None
    returned = _find_part(msg, ("message/rfc822", "text/rfc822-headers", "message/global-headers"))
    if returned is not None:
        payload = returned.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            original_id = _get(payload[0], "Message-ID")
        elif isinstance(payload, str):
            original_id = _get(HeaderParser(policy=policy.compat32).parsestr(payload), "Message-ID")
    envid = _get(per_message, "Original-Envelope-Id")
    return Dsn(
        reporting_mta=_strip_type(_get(per_message, "Reporting-MTA")),
        envelope_id=envid,
        original_message_id=original_id or envid,
        recipients=recipients,
        arrival_date=_get(per_message, "Arrival-Date"),
    )
