"""ANS volet "Transmission au LPS d'un document CDA provenant d'un courriel MSSanté" (v1.1): the MDM the
GESTIONNAIRE (our PFI) sends to the CONSOMMATEUR (DPI/RIS) for each CDA found in a polled mail, and its ACK.

Layout (profils-messages.md, checked against the ANS example messages of the volet)::

    MSH|^~\\&|<PFI>|<PFI facility>|<DPI>|<DPI facility>|<now>||MDM^T02^MDM_T02|<id>|P|2.6|||||FRA|UNICODE UTF-8
        |||1.1^CISIS_CDA_HL7_LPS
    EVN||<now>
    PID|||<INS>^^^ASIP-SANTE-INS-NIR&<OID>&ISO^INS~<IPP>^^^<ns>&<oid>&ISO^PI||<NOM>^<prénom>^<prénoms>^^^^L||…
    PV1|1|N
    ORC|NW                               (RO replacement, CA deletion)
    OBR|1|||<type code>^<label>^LN
    TXA|1|<type code>|TEXT|<date>||||||||<document id>|<parent id>||||AU
    OBX|1|ED|<type code>^<label>^LN||^text^XML^Base64^<CDA>||||||F      (C replacement, D deletion)
    PRT||UC||SB^^participation|…|||||||||||^^X.400^<sender address>
    PRT||UC||RCT^^participation|…|||||||||||^^X.400^<recipient address>      (one per recipient, if known)
    PRT||UC||REPLY^^participation|||||||||||^^X.400^<reply-to address>        (optional)
    OBX|2|ED|<Message-ID>^<subject>||^text^^Base64^<mail body>||||||F
    OBX|3..6|CWE|MASQUE_PS / INVISIBLE_PATIENT / INVISIBLE_REP_LEGAUX / MODIF_CONF_CODE ^…^MetaDMPMSS
        ||Y|N^^expandedYes-NoIndicator||||||F

Choices where the volet's text and its examples disagree (the text wins, the examples are illustrations):
- TXA-12/13 follow the volet's rule (``ext^^root^ISO`` or the bare root OID); the examples write
  ``<root>.<ext>^Organisation-Y``.
- OBX-2 of the mail carries the Message-ID in OBX-3.1 as the text asks; the examples put ``1`` there.
- PID-3: the volet asks for the CDA's patient identifiers; the DPI files documents under *its* IPP, which the
  sender's local identifiers never are, so PID-3 is the INS (only for a qualified identity, RNIV) and our IPP.
- MSH-9 is the three-component ``MDM^T02^MDM_T02`` (the volet's MSH example repeats ``MDM^T02`` by mistake), MSH-21
  ``1.1^CISIS_CDA_HL7_LPS`` without the stray space of the volet's example.
- The mail body OBX uses ``^text^^Base64^`` exactly as the examples (no data subtype for plain text).
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from opensegur.identity.ins import OID_NIA, OID_NIA_TEST
from opensegur.transactions.hl7v2 import (
    Hl7Error,
    charset_to_codec,
    escape_text,
    format_dtm,
    parse,
)
from opensegur.transactions.hl7v2_message import get_field, segments

# error-codes.md: the consumer's applicationErrorCondition (ERR-5 of its ACK) is the MDN's table.
from opensegur.transactions.mdn import ERROR_LABELS

__all__ = [
    "PROFILE",
    "LpsAck",
    "LpsAckError",
    "LpsDocument",
    "LpsMail",
    "LpsMdmRequest",
    "LpsParticipant",
    "LpsPatient",
    "MessageRoute",
    "MetaDmpMss",
    "build_lps_mdm",
    "document_number",
    "encode_message",
    "msh_segment",
    "parse_lps_ack",
    "pid_segment",
]

PROFILE = "1.1^CISIS_CDA_HL7_LPS"
ALLOWED_CHARSETS = ("UNICODE UTF-8", "8859/15")  # MSH-18 values the volet allows

Kind = Literal["initial", "replacement", "deletion"]
# kind -> (MSH-9.2 trigger, ORC-1 order control, OBX-11 result status) — evenements-declenchants.md
_EVENTS: dict[Kind, tuple[str, str, str]] = {
    "initial": ("T02", "NW", "F"),
    "replacement": ("T10", "RO", "C"),
    "deletion": ("T04", "CA", "D"),
}
# meta-dmp-mss.md, in the order the volet requires them (OBX 3 to 6).
_META = (
    ("MASQUE_PS", "Masqué aux professionnels de Santé"),
    ("INVISIBLE_PATIENT", "Document Non Visible par le patient"),
    ("INVISIBLE_REP_LEGAUX", "Non visible par les représentants Légaux du patient"),
    ("MODIF_CONF_CODE", "Modification Confidentiality Code"),
)


@dataclass(frozen=True)
class LpsPatient:
    """PID content. ``ins_*`` is sent only for a qualified identity (the caller decides, RNIV)."""

    birth_name: str
    first_names: str  # all birth first names, space-separated
    birth_date: str | None  # YYYYMMDD
    sex: str  # M, F, or U
    ins_matricule: str | None = None
    ins_oid: str | None = None
    ipp: str | None = None
    ipp_namespace: str = ""
    ipp_authority: str = ""  # OID (ISO) or FINESS (M)
    used_name: str | None = None
    used_first_name: str | None = None
    birth_place: str | None = None  # COG code
    identity_status: str | None = None  # PID-32: PROV, RECUP, VALI, QUAL


@dataclass(frozen=True)
class LpsParticipant:
    """One PRT: the mail address (PRT-15) and, when the directory knows them, the person or organisation."""

    address: str
    person_id: str | None = None  # PRT-5.1, e.g. the IDNPS
    family: str | None = None
    given: str | None = None
    person_authority: str = "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO"  # PRT-5.9 (HD)
    person_id_type: str = "IDNPS"  # PRT-5.13 (table 0203 Interop'Santé)
    organization_name: str | None = None  # PRT-8.1
    organization_id: str | None = None  # PRT-8.10
    organization_authority: str = ""  # PRT-8.6 (HD)
    organization_id_type: str = ""  # PRT-8.7, e.g. UF, FINEG


@dataclass(frozen=True)
class MetaDmpMss:
    masque_ps: bool = False
    invisible_patient: bool = False
    invisible_rep_legaux: bool = False
    modif_conf_code: bool = False


@dataclass(frozen=True)
class LpsDocument:
    cda: bytes
    type_code: str  # TXA-2 / OBR-4.1 / OBX-3.1 (JDV_J07-XdsTypeCode-CISIS)
    type_label: str
    type_system: str  # LN or TRE_A05…
    id_root: str
    id_extension: str | None = None
    parent_root: str | None = None  # required for a replacement
    parent_extension: str | None = None
    activity_time: str | None = None  # TXA-4: the CDA effectiveTime


@dataclass(frozen=True)
class LpsMail:
    message_id: str
    subject: str
    body: str
    sender: LpsParticipant
    recipients: Sequence[LpsParticipant] = ()
    reply_to: Sequence[str] = ()


@dataclass(frozen=True)
class MessageRoute:
    """MSH-3 to MSH-6, MSH-11 and MSH-18 of the messages the PFI sends to the DPI."""

    sending_application: str = "OPENSEGUR"
    sending_facility: str = "OPENSEGUR"
    receiving_application: str = "DPI"
    receiving_facility: str = ""
    processing_id: str = "P"
    charset: str = "UNICODE UTF-8"


@dataclass(frozen=True)
class LpsMdmRequest:
    kind: Kind
    patient: LpsPatient
    document: LpsDocument
    mail: LpsMail
    meta: MetaDmpMss = MetaDmpMss()
    route: MessageRoute = MessageRoute()


@dataclass(frozen=True)
class LpsAckError:
    hl7_code: str  # ERR-3.1 (table 0357)
    severity: str  # ERR-4
    application_code: str | None  # ERR-5.1 (900–906)
    application_label: str | None  # ERR-5.2
    location: str  # ERR-2 as sent
    text: str  # ERR-8 (user message), when sent


@dataclass
class LpsAck:
    code: str  # MSA-1: AA, AE or AR (CA/CE/CR accepted and mapped)
    control_id: str  # MSA-2
    errors: list[LpsAckError] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.code == "AA"

    @property
    def volet_code(self) -> str | None:
        """The 900–906 code to report to the sender (MDN), None for an acceptance.

        A technical refusal (ERR-3 without ERR-5, note 2 of the volet) has no application code: 906 "Autre".
        """
        if self.accepted:
            return None
        for e in self.errors:
            if e.application_code in ERROR_LABELS:
                return e.application_code
        return "906"

    @property
    def reason_fr(self) -> str:
        if self.accepted:
            return "Document intégré par le DPI"
        code = self.volet_code or "906"
        details = [e.text or e.application_label or "" for e in self.errors]
        label = ERROR_LABELS[code]
        detail = next((d for d in details if d and d != label), "")
        return f"Refus du DPI ({self.code}) : {code} {label}" + (f" — {detail}" if detail else "")


# ----------------------------------------------------------------------------------------------------------
# Building


def msh_segment(
    route: MessageRoute, *, message_type: str, control_id: str, version: str, now: datetime, profile: str = ""
) -> str:
    """MSH with the default delimiters; ``message_type`` (MSH-9) and ``profile`` (MSH-21) are written as given."""
    fields = [
        "MSH",
        "^~\\&",
        escape_text(route.sending_application),
        escape_text(route.sending_facility),
        escape_text(route.receiving_application),
        escape_text(route.receiving_facility),
        format_dtm(now),
        "",
        message_type,
        escape_text(control_id),
        escape_text(route.processing_id),
        version,
        "",
        "",
        "",
        "",
        "FRA",
        route.charset,
        "",
        "",
        profile,
    ]
    while fields[-1] == "":
        fields.pop()
    return "|".join(fields)


def document_number(root: str, extension: str | None) -> str:
    """TXA-12/13 (EI) per the volet: ``ext^^root^ISO`` when the CDA id has an extension, else the root OID."""
    if extension:
        return f"{escape_text(extension)}^^{escape_text(root)}^ISO"
    return escape_text(root)


def _ins_namespace(oid: str) -> str:
    return "ASIP-SANTE-INS-NIA" if oid in (OID_NIA, OID_NIA_TEST) else "ASIP-SANTE-INS-NIR"


def pid_segment(p: LpsPatient) -> str:
    """PID with the INS (qualified identities only) and the IPP in PID-3, as every message to the DPI sends it."""
    ids = []
    if p.ins_matricule and p.ins_oid:
        ids.append(
            f"{escape_text(p.ins_matricule)}^^^{_ins_namespace(p.ins_oid)}&{escape_text(p.ins_oid)}&ISO^INS"
        )
    if p.ipp:
        kind = "ISO" if "." in p.ipp_authority else "M"
        authority = (
            f"{escape_text(p.ipp_namespace)}&{escape_text(p.ipp_authority)}&{kind}" if p.ipp_authority else ""
        )
        ids.append(f"{escape_text(p.ipp)}^^^{authority}^PI")
    first = p.first_names.split(" ", 1)[0] if p.first_names else ""
    names = [f"{escape_text(p.birth_name)}^{escape_text(first)}^{escape_text(p.first_names)}^^^^L"]
    if p.used_name or p.used_first_name:
        names.append(
            f"{escape_text(p.used_name or p.birth_name)}^{escape_text(p.used_first_name or first)}^^^^^D"
        )
    fields = [""] * 33
    fields[0] = "PID"
    fields[3] = "~".join(ids)
    fields[5] = "~".join(names)
    fields[7] = escape_text(p.birth_date or "")
    fields[8] = escape_text(p.sex)
    fields[11] = f"^^^^^^BDL^^{escape_text(p.birth_place)}" if p.birth_place else ""
    fields[32] = escape_text(p.identity_status or "")
    while fields[-1] == "":
        fields.pop()
    return "|".join(fields)


def _prt(code: str, participant: LpsParticipant) -> str:
    fields = [""] * 16
    fields[0] = "PRT"
    fields[2] = "UC"
    fields[4] = f"{code}^^participation"
    if participant.person_id or participant.family:
        xcn = [""] * 13
        xcn[0] = escape_text(participant.person_id or "")
        xcn[1] = escape_text(participant.family or "")
        xcn[2] = escape_text(participant.given or "")
        xcn[9] = "D"  # nom d'exercice, as in the volet's examples
        if participant.person_id:
            xcn[8] = participant.person_authority
            xcn[12] = escape_text(participant.person_id_type)
        fields[5] = "^".join(xcn).rstrip("^")
    if participant.organization_name or participant.organization_id:
        xon = [""] * 10
        xon[0] = escape_text(participant.organization_name or "")
        xon[5] = participant.organization_authority
        xon[6] = escape_text(participant.organization_id_type)
        xon[9] = escape_text(participant.organization_id or "")
        fields[8] = "^".join(xon).rstrip("^")
    fields[15] = f"^^X.400^{escape_text(participant.address)}"
    return "|".join(fields)


def build_lps_mdm(request: LpsMdmRequest, *, control_id: str, now: datetime) -> bytes:
    """The MDM^T02/T10/T04 of the volet carrying one CDA and the mail it came from, encoded per MSH-18."""
    if request.route.charset not in ALLOWED_CHARSETS:
        raise ValueError(
            f"MSH-18 {request.route.charset!r} not allowed by the volet ({', '.join(ALLOWED_CHARSETS)})"
        )
    doc, mail = request.document, request.mail
    if request.kind == "replacement" and not doc.parent_root:
        raise ValueError("a replacement (T10) requires the parent document id (TXA-13)")
    trigger, order_control, result_status = _EVENTS[request.kind]
    stamp = format_dtm(now)
    doc_type = f"{escape_text(doc.type_code)}^{escape_text(doc.type_label)}^{escape_text(doc.type_system)}"
    parent = document_number(doc.parent_root, doc.parent_extension) if doc.parent_root else ""
    msh = msh_segment(
        request.route,
        message_type=f"MDM^{trigger}^MDM_T02",
        control_id=control_id,
        version="2.6",
        now=now,
        profile=PROFILE,
    )
    txa = [""] * 18
    txa[0], txa[1], txa[2], txa[3] = "TXA", "1", doc_type.split("^", 1)[0], "TEXT"
    txa[4] = escape_text(doc.activity_time or "")
    txa[12] = document_number(doc.id_root, doc.id_extension)
    txa[13] = parent
    txa[17] = "AU"
    cda64 = base64.b64encode(doc.cda).decode("ascii")
    body64 = base64.b64encode(mail.body.encode("utf-8")).decode("ascii")
    lines = [
        msh,
        f"EVN||{stamp}",
        pid_segment(request.patient),
        "PV1|1|N",
        f"ORC|{order_control}",
        f"OBR|1|||{doc_type}",
        "|".join(txa),
        f"OBX|1|ED|{doc_type}||^text^XML^Base64^{cda64}||||||{result_status}",
        _prt("SB", mail.sender),
        *(_prt("RCT", r) for r in mail.recipients),
        *(_prt("REPLY", LpsParticipant(a)) for a in mail.reply_to),
        f"OBX|2|ED|{escape_text(mail.message_id)}^{escape_text(mail.subject)}||^text^^Base64^{body64}||||||F",
    ]
    meta = request.meta
    values = (meta.masque_ps, meta.invisible_patient, meta.invisible_rep_legaux, meta.modif_conf_code)
    for n, ((code, label), on) in enumerate(zip(_META, values, strict=True), start=3):
        yes_no = "Y" if on else "N"
        lines.append(
            f"OBX|{n}|CWE|{code}^{escape_text(label)}^MetaDMPMSS||{yes_no}^^expandedYes-NoIndicator||||||F"
        )
    return encode_message(lines, request.route.charset)


def encode_message(lines: Sequence[str], charset: str) -> bytes:
    """Segments joined with CR and encoded per MSH-18 (``charset``, HL7 table 0211)."""
    text = "\r".join(lines) + "\r"
    codec = charset_to_codec(charset) or "utf-8"
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        # 8859/15 lacks some typographic characters senders put in subjects (’, …): transliterate them.
        folded = unicodedata.normalize("NFKC", text.replace("’", "'").replace("…", "..."))
        return folded.encode(codec, errors="replace")


# ----------------------------------------------------------------------------------------------------------
# ACK


_ACK_CODES = {"AA": "AA", "AE": "AE", "AR": "AR", "CA": "AA", "CE": "AE", "CR": "AR"}


def parse_lps_ack(raw: bytes) -> LpsAck:
    """Read the consumer's ACK^T0n^ACK. Hl7Error when it is not an acknowledgement at all."""
    message, header = parse(raw)
    if header.message_type != "ACK":
        raise Hl7Error(
            "200", f"Réponse du DPI qui n'est pas un ACK : {header.message_type[:10]}", location="MSH^1^9"
        )
    msas = segments(message, "MSA")
    if not msas:
        raise Hl7Error("100", "Segment MSA absent de l'ACK du DPI", location="MSA^1")
    code = _ACK_CODES.get(get_field(msas[0], 1))
    if code is None:
        raise Hl7Error(
            "103", f"Code d'acquittement inconnu : {get_field(msas[0], 1)[:5]!r}", location="MSA^1^1"
        )
    errors = [
        LpsAckError(
            hl7_code=get_field(err, 3, 1, 1),
            severity=get_field(err, 4).strip() or "E",
            application_code=get_field(err, 5, 1, 1) or None,
            application_label=get_field(err, 5, 1, 2) or None,
            location=get_field(err, 2),
            text=get_field(err, 8),
        )
        for err in segments(message, "ERR")
    ]
    return LpsAck(code=code, control_id=get_field(msas[0], 2), errors=errors)
