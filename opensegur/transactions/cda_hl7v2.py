"""ANS volet "Transmission de document(s) CDA en HL7v2" v2.1: reading the CREATEUR (DPI/RIS/SIL) -> GESTIONNAIRE
(PFI) messages that carry a CDA-R2 document to publish on the DMP and/or send through MSSanté.

Semantics (volume2.md / evenements-declenchants.md / profils-messages.md):
- MDM (v2.6): T02 = initial transmission, T10 = replacement, T04 = deletion (MDM^T04^MDM_T02, "Document status
  change notification and content": the deletion request carries the last version of the document).
  ORU^R01 (v2.5): the request is carried by OBX-11 of the document OBX: F initial, C replacement, D deletion.
  ORC-1 must agree (NW / RO / CA) and, for MDM, so must the trigger; the volet says an incoherent message is
  rejected by the PFI.
- The document is the OBX with OBX-2 = ED (OBX-5 = source ^ type ^ XML ^ Base64 ^ data). MDM carries exactly
  one; ORU may carry two formats of the same document (N1 + N3, outside Ségur vague 2 but still allowed).
- MDM document ids: TXA-12 (unique document number, EI) and TXA-13 (parent, required for T10). Either
  ``ext^^root^ISO`` or a full OID in TXA-12.1. ORU has no HL7 field for them: the ids are those of the CDA
  (ClinicalDocument/id, relatedDocument/parentDocument/id), read here from the CDA header.
- MetaDMPMSS OBX (meta-dmp-mss.md): eight Y/N flags are required (MASQUE_PS ... DESTMSSANTEPAT), ACK_RECEPTION
  and ACK_LECTURE_MSS are optional (absent = no acknowledgement requested), CORPSMAIL_PS/CORPSMAIL_PATIENT are
  optional base64 ED texts. ``ACK_LECTURE`` (used in exemples.md) is read as ACK_LECTURE_MSS. An NTE-4 "FIN"
  after DESTMSSANTEPAT means the patient must not be able to reply.
- PRT (pre-adopted from v2.9): PRT-4 SB = sender (author of the request, needed for the DMP VIHF), RCT =
  MSSanté recipient (address in PRT-15.4), REPLY = reply-to address.

Error reporting: ERR-3 carries an HL7 table 0357 code (the volet's messageErrorCondition table,
error-codes.md); business incoherences use 207 with the volet's applicationErrorCondition code in ERR-5
(906 "Erreur 'Autre'" - the 900-905 codes concern the consumer's own store). Every error here is AE: in this
volet AE means "the message contains errors" and AR "rejected for a circumstantial reason, resend later".

Choices against the examples:
- Base64 is decoded with ``strict_mode=True`` except that missing "=" padding is tolerated (with a warning):
  two of the official v2.1 examples (MDM deletion, ORU SEGUR replacement) omit it. Lengths of 1 mod 4, foreign
  characters, whitespace or embedded padding are errors.
- CORPSMAIL texts that are not valid base64 become a warning (body None, the PFI uses its default text, as the
  volet allows when absent): every v2.1 ORU example has a truncated one.
- PID follows PAM FR, but the ANS examples carry only the INS (no IPP), so the IPP is not required here.
- The MSSanté combination matrix (regles-gestion-mssante.md) is exposed, not enforced: two official MDM
  examples use combinations the matrix does not list.

Memory: the ED payload is taken from the parsed tree without unescaping or copying (base64 has no HL7
delimiter or escape character, so a stray one makes the strict decoder fail instead of being silently
interpreted) and decoded once; the CDA header is read with an incremental parser that stops at the body.
"""

from __future__ import annotations

import binascii
import io
from dataclasses import dataclass, field
from typing import Literal
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from opensegur.transactions.hl7v2 import Hl7Error, MessageHeader
from opensegur.transactions.hl7v2_message import Hl7Message, Hl7Segment, get_field, raw_field, segments
from opensegur.transactions.pam_fr import PamPatient, parse_patient

__all__ = [
    "APPLICATION_ERROR_OTHER",
    "META_FLAGS",
    "MDM_TRIGGERS",
    "CdaHeader",
    "DocumentId",
    "DocumentKind",
    "DocumentMessage",
    "DocumentType",
    "EncapsulatedDocument",
    "MetaDmpMss",
    "Participant",
    "Visit",
    "decode_base64",
    "mssante_combination_allowed",
    "parse_document_message",
    "read_cda_header",
]

DocumentKind = Literal["initial", "replacement", "deletion"]

MDM_TRIGGERS: dict[str, DocumentKind] = {"T02": "initial", "T10": "replacement", "T04": "deletion"}
OBX_STATUS: dict[str, DocumentKind] = {"F": "initial", "C": "replacement", "D": "deletion"}
ORDER_CONTROL: dict[str, DocumentKind] = {"NW": "initial", "RO": "replacement", "CA": "deletion"}

# error-codes.md, applicationErrorCondition: 906 = "Erreur 'Autre'".
APPLICATION_ERROR_OTHER = "906"

# OBX-3.1 code -> MetaDmpMss attribute; the first eight are required by profils-messages.md.
REQUIRED_FLAGS: dict[str, str] = {
    "MASQUE_PS": "masque_ps",
    "INVISIBLE_PATIENT": "invisible_patient",
    "INVISIBLE_REP_LEGAUX": "invisible_rep_legaux",
    "CONNEXION_SECRETE": "connexion_secrete",
    "MODIF_CONF_CODE": "modif_conf_code",
    "DESTDMP": "dest_dmp",
    "DESTMSSANTEPS": "dest_mssante_ps",
    "DESTMSSANTEPAT": "dest_mssante_pat",
}
OPTIONAL_FLAGS: dict[str, str] = {
    "ACK_RECEPTION": "ack_reception",
    "ACK_LECTURE_MSS": "ack_lecture_mss",
    "ACK_LECTURE": "ack_lecture_mss",  # exemples.md spelling
}
MAIL_BODIES: dict[str, str] = {"CORPSMAIL_PS": "corpsmail_ps", "CORPSMAIL_PATIENT": "corpsmail_patient"}
META_FLAGS = frozenset(REQUIRED_FLAGS) | frozenset(OPTIONAL_FLAGS)
META_CODES = META_FLAGS | frozenset(MAIL_BODIES)

CDA_NS = "{urn:hl7-org:v3}"
MAX_DOCUMENTS = {"MDM": 1, "ORU": 2}


@dataclass(frozen=True)
class DocumentId:
    """A CDA instance identifier: ``root`` alone (full OID) or ``root`` + ``extension``."""

    root: str
    extension: str | None = None

    @classmethod
    def from_ei(cls, segment: Hl7Segment, field_no: int) -> DocumentId | None:
        # TXA-12/13 rule: ext^^root^ISO when the CDA id has an extension, else the OID alone in EI.1 (EI.2,
        # a namespace, is ignored: the ANS examples fill it with the organisation name).
        first = get_field(segment, field_no, 1, 1).strip()
        universal = get_field(segment, field_no, 1, 3).strip()
        if universal:
            return cls(universal, first or None)
        return cls(first) if first else None

    def __str__(self) -> str:
        return f"{self.root}^{self.extension}" if self.extension else self.root


@dataclass(frozen=True)
class DocumentType:
    code: str  # LOINC or TRE_A05 code (JDV_J07-XdsTypeCode-CISIS)
    label: str = ""
    system: str = ""  # LN or TRE_A05...


@dataclass
class CdaHeader:
    """What the CDA header says about its identity; None fields were absent."""

    id: DocumentId | None
    set_id: DocumentId | None
    version: str | None
    parent_id: DocumentId | None  # relatedDocument/parentDocument/id
    relation: str | None  # relatedDocument/@typeCode (RPLC...)


@dataclass
class EncapsulatedDocument:
    obx_index: int  # occurrence of the OBX in the message (1-based), for error locations
    type: DocumentType  # OBX-3
    status: str  # OBX-11
    mime_type: str  # OBX-5.2 (TEXT for ORU, text for MDM)
    subtype: str  # OBX-5.3 (XML)
    content: bytes  # decoded OBX-5.5
    header: CdaHeader | None  # None when the content is not parseable XML


@dataclass
class MetaDmpMss:
    masque_ps: bool
    invisible_patient: bool
    invisible_rep_legaux: bool
    connexion_secrete: bool
    modif_conf_code: bool
    dest_dmp: bool
    dest_mssante_ps: bool
    dest_mssante_pat: bool
    ack_reception: bool = False
    ack_lecture_mss: bool = False
    corpsmail_ps: str | None = None
    corpsmail_patient: str | None = None
    patient_reply_forbidden: bool = False  # NTE-4 "FIN" after DESTMSSANTEPAT


@dataclass
class Participant:
    role: str  # PRT-4.1: SB, RCT, REPLY
    person_id: str | None = None  # PRT-5.1 (idNat_PS, RPPS, INS...)
    family_name: str | None = None  # PRT-5.2
    given_name: str | None = None  # PRT-5.3
    person_id_authority: str | None = None  # PRT-5.9.2 (OID), else PRT-5.9.1
    person_id_type: str | None = None  # PRT-5.13: IDNPS, RPPS, INS...
    organization_name: str | None = None  # PRT-8.1
    organization_id: str | None = None  # PRT-8.10
    organization_id_authority: str | None = None  # PRT-8.6.2
    organization_id_type: str | None = None  # PRT-8.7: FINEG, FINEJ, IDNST, UF, SVR
    device_id: str | None = None  # PRT-10.1
    address: str | None = None  # PRT-15.4 (MSSanté address)


@dataclass
class Visit:
    patient_class: str  # PV1-2
    visit_number: str | None  # PV1-19.1
    visit_number_authority: str | None  # PV1-19.4.2
    unit: str | None  # PV1-3.1
    facility: str | None  # PV1-3.4.1


@dataclass
class DocumentMessage:
    header: MessageHeader
    kind: DocumentKind
    patient: PamPatient
    visit: Visit
    document_type: DocumentType  # TXA-2 (MDM) / OBR-4 (ORU)
    documents: list[EncapsulatedDocument]
    meta: MetaDmpMss
    author: Participant | None  # PRT SB
    recipients: list[Participant]  # PRT RCT
    reply_to: str | None  # PRT REPLY address
    order_control: str  # ORC-1
    placer_number: str | None = None  # ORC-2.1 / OBR-2.1
    filler_number: str | None = None  # ORC-3.1 / OBR-3.1
    unique_document_id: DocumentId | None = None  # TXA-12, else CDA ClinicalDocument/id
    parent_document_id: DocumentId | None = None  # TXA-13, else CDA relatedDocument/parentDocument/id
    completion_status: str | None = None  # TXA-17 (AU)
    warnings: list[Hl7Error] = field(default_factory=list)  # severity W, to report in an AA

    @property
    def cda(self) -> bytes:
        return self.documents[0].content


# --------------------------------------------------------------------------------------------- helpers


def _opt(value: str) -> str | None:
    value = value.strip()
    return value or None


def _error(code: str, message: str, location: str, application_code: str | None = None) -> Hl7Error:
    return Hl7Error(code, message, location=location, severity="E", application_code=application_code)


def _incoherent(message: str, location: str) -> Hl7Error:
    return _error("207", message, location, APPLICATION_ERROR_OTHER)


def decode_base64(data: str, location: str) -> tuple[bytes, Hl7Error | None]:
    """Strict base64 decoding of an ED payload; (bytes, warning when "=" padding had to be added)."""
    missing = -len(data) % 4
    if missing == 3:  # 1 char past a quantum: never valid, whatever the padding
        raise _error("102", "Données base64 invalides (longueur)", location)
    warning = None
    if missing:
        # Rare path (some ANS examples): one transient copy of the payload to append the padding.
        data = data + "=" * missing
        warning = Hl7Error("102", "Bourrage base64 (=) absent", location=location, severity="W")
    try:
        return binascii.a2b_base64(data, strict_mode=True), warning
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters in a str
        raise _error("102", "Données base64 invalides", location) from None


_PARENT_DOCUMENT = [f"{CDA_NS}relatedDocument", f"{CDA_NS}parentDocument"]
# The deepest ANS example nests 18 levels; libxml2 stops at 2048 for the full parse, expat has no limit.
_MAX_HEADER_DEPTH = 256


def read_cda_header(content: bytes) -> CdaHeader | None:
    """Ids from the CDA header, stopping at the first ``component`` (the body); None if not a CDA.

    defusedxml refuses DTDs and entities, so a hostile document cannot expand or fetch anything.
    """
    doc_id = set_id = parent_id = None
    version = relation = None
    path: list[str] = []
    seen_root = False
    try:
        for event, elem in iterparse(io.BytesIO(content), events=("start", "end")):
            if event == "end":
                path.pop()
                elem.clear()  # the header is read as it streams by: nothing of it is kept
                continue
            tag = elem.tag
            path.append(tag)
            if len(path) > _MAX_HEADER_DEPTH:
                return (
                    None  # no CDA nests its header this deep; the full parse says why the document is refused
                )
            if len(path) == 1:
                if tag != f"{CDA_NS}ClinicalDocument":
                    return None
                seen_root = True
                continue
            if len(path) == 2:
                if tag == f"{CDA_NS}component":
                    break
                if tag == f"{CDA_NS}id":
                    doc_id = _cda_id(elem.attrib)
                elif tag == f"{CDA_NS}setId":
                    set_id = _cda_id(elem.attrib)
                elif tag == f"{CDA_NS}versionNumber":
                    version = elem.attrib.get("value")
                elif tag == f"{CDA_NS}relatedDocument":
                    relation = elem.attrib.get("typeCode")
            # Constant work per element: comparing the whole path each time grew with the square of the depth.
            elif len(path) == 4 and tag == f"{CDA_NS}id" and path[1:3] == _PARENT_DOCUMENT:
                parent_id = parent_id or _cda_id(elem.attrib)
    except (ParseError, DefusedXmlException):
        return None
    if not seen_root:
        return None
    return CdaHeader(doc_id, set_id, version, parent_id, relation)


def _cda_id(attrib: dict[str, str]) -> DocumentId | None:
    root = attrib.get("root", "").strip()
    return DocumentId(root, attrib.get("extension", "").strip() or None) if root else None


def mssante_combination_allowed(meta: MetaDmpMss) -> bool:
    """Whether the flags match a row of the MSSanté matrix (regles-gestion-mssante.md).

    Meaningful only when an MSSanté exchange is requested; not enforced by the parser (see module doc).
    """
    if not (meta.dest_mssante_ps or meta.dest_mssante_pat):
        return True
    if meta.dest_mssante_ps and meta.dest_mssante_pat:
        return not (meta.masque_ps or meta.invisible_patient or meta.invisible_rep_legaux)
    if meta.dest_mssante_ps:
        return not meta.masque_ps and meta.invisible_patient and not meta.invisible_rep_legaux
    return not (meta.invisible_patient or meta.connexion_secrete or meta.dest_dmp)


# --------------------------------------------------------------------------------------------- parsing


def _check_type(header: MessageHeader) -> DocumentKind | None:
    if header.message_type == "MDM":
        if header.trigger not in MDM_TRIGGERS:
            raise _error("201", f"Événement MDM non supporté : {header.trigger[:10]}", "MSH^1^9^1^2")
        return MDM_TRIGGERS[header.trigger]
    if header.message_type == "ORU":
        if header.trigger != "R01":
            raise _error("201", f"Événement ORU non supporté : {header.trigger[:10]}", "MSH^1^9^1^2")
        return None
    raise _error("200", f"Type de message non supporté : {header.message_type[:10]}", "MSH^1^9^1^1")


def _visit(message: Hl7Message) -> Visit:
    pv1s = segments(message, "PV1")
    if not pv1s:
        raise _error("100", "Segment PV1 absent", "PV1")
    pv1 = pv1s[0]
    patient_class = get_field(pv1, 2).strip()
    if not patient_class:
        raise _error("101", "Classe du patient (PV1-2) absente", "PV1^1^2")
    visit_number = _opt(get_field(pv1, 19, 1, 1))
    if visit_number is None and patient_class in ("E", "I", "O", "R"):
        raise _error(
            "101", f"Identifiant de la venue (PV1-19) requis pour PV1-2 = {patient_class}", "PV1^1^19"
        )
    return Visit(
        patient_class=patient_class,
        visit_number=visit_number,
        visit_number_authority=_opt(get_field(pv1, 19, 1, 4, 2)),
        unit=_opt(get_field(pv1, 3, 1, 1)),
        facility=_opt(get_field(pv1, 3, 1, 4, 1)),
    )


def _participant(prt: Hl7Segment) -> Participant:
    return Participant(
        role=get_field(prt, 4, 1, 1).strip().upper(),
        person_id=_opt(get_field(prt, 5, 1, 1)),
        family_name=_opt(get_field(prt, 5, 1, 2)),
        given_name=_opt(get_field(prt, 5, 1, 3)),
        person_id_authority=_opt(get_field(prt, 5, 1, 9, 2) or get_field(prt, 5, 1, 9, 1)),
        person_id_type=_opt(get_field(prt, 5, 1, 13)),
        organization_name=_opt(get_field(prt, 8, 1, 1)),
        organization_id=_opt(get_field(prt, 8, 1, 10)),
        organization_id_authority=_opt(get_field(prt, 8, 1, 6, 2)),
        organization_id_type=_opt(get_field(prt, 8, 1, 7)),
        device_id=_opt(get_field(prt, 10, 1, 1)),
        address=_opt(get_field(prt, 15, 1, 4)),
    )


def _yes_no(obx: Hl7Segment, index: int, code: str) -> bool:
    value = get_field(obx, 5, 1, 1).strip().upper()
    if value not in ("Y", "N"):
        raise _error("103", f"Valeur Y/N attendue pour {code} : {value[:10]!r}", f"OBX^{index}^5^1^1")
    return value == "Y"


def _document(obx: Hl7Segment, index: int, warnings: list[Hl7Error]) -> EncapsulatedDocument:
    loc = f"OBX^{index}"
    encoding = raw_field(obx, 5, 1, 4).strip()
    if encoding.lower() != "base64":
        raise _error(
            "103", f"Encodage du document non supporté (OBX-5.4) : {encoding[:20]!r}", f"{loc}^5^1^4"
        )
    data = raw_field(obx, 5, 1, 5)
    if not data:
        raise _error("101", "Document vide (OBX-5.5)", f"{loc}^5^1^5")
    content, warning = decode_base64(data, f"{loc}^5^1^5")
    del data  # drop our reference to the base64 text before parsing the header
    if warning:
        warnings.append(warning)
    if not content.strip():
        raise _error("101", "Document vide (OBX-5.5)", f"{loc}^5^1^5")
    status = get_field(obx, 11).strip()
    if not status:
        raise _error("101", "Statut du document (OBX-11) absent", f"{loc}^11")
    if status not in OBX_STATUS:
        raise _error("103", f"Statut du document (OBX-11) inconnu : {status[:5]!r}", f"{loc}^11")
    return EncapsulatedDocument(
        obx_index=index,
        type=DocumentType(get_field(obx, 3, 1, 1).strip(), get_field(obx, 3, 1, 2), get_field(obx, 3, 1, 3)),
        status=status,
        mime_type=raw_field(obx, 5, 1, 2),
        subtype=raw_field(obx, 5, 1, 3),
        content=content,
        header=read_cda_header(content),
    )


def _mail_body(obx: Hl7Segment, index: int, code: str, warnings: list[Hl7Error]) -> str | None:
    loc = f"OBX^{index}^5^1^5"
    data = raw_field(obx, 5, 1, 5).strip()
    if not data:
        return None
    try:
        raw, warning = decode_base64(data, loc)
        text = raw.decode("utf-8")
    except (Hl7Error, UnicodeDecodeError):
        warnings.append(Hl7Error("102", f"{code} illisible, ignoré", location=loc, severity="W"))
        return None
    if warning:
        warnings.append(warning)
    return text


def _observations(
    message: Hl7Message, warnings: list[Hl7Error]
) -> tuple[list[EncapsulatedDocument], MetaDmpMss]:
    documents: list[EncapsulatedDocument] = []
    flags: dict[str, tuple[bool, int]] = {}
    bodies: dict[str, str | None] = {}
    reply_forbidden = False
    last_code = ""
    obx_index = 0
    for seg in message:
        name = seg.id
        if name == "NTE":
            if last_code == "DESTMSSANTEPAT" and get_field(seg, 4, 1, 1).strip().upper() == "FIN":
                reply_forbidden = True
            continue
        if name != "OBX":
            continue
        obx_index += 1
        code = get_field(seg, 3, 1, 1).strip().upper()
        last_code = code
        if code in META_FLAGS:
            attr = REQUIRED_FLAGS.get(code) or OPTIONAL_FLAGS[code]
            value = _yes_no(seg, obx_index, code)
            previous = flags.get(attr)
            if previous is not None and previous[0] != value:
                raise _error(
                    "198",
                    f"Métadonnée {code} répétée avec des valeurs contradictoires (OBX {previous[1]})",
                    f"OBX^{obx_index}^5",
                )
            flags[attr] = (value, obx_index)
        elif code in MAIL_BODIES:
            bodies[MAIL_BODIES[code]] = _mail_body(seg, obx_index, code, warnings)
        elif get_field(seg, 2).strip().upper() == "ED":
            documents.append(_document(seg, obx_index, warnings))
        # Other OBX (e.g. REPLY_TO in exemples.md) are outside the volet's table: the volet lets the
        # receiver ignore them.
    if not documents:
        raise _error("100", "OBX contenant le document (OBX-2 = ED) absent", "OBX")
    missing = [code for code, attr in REQUIRED_FLAGS.items() if attr not in flags]
    if missing:
        raise _error("100", "Métadonnées DMP/MSSanté absentes : " + ", ".join(missing), "OBX")

    def flag(attr: str) -> bool:
        # Absent optional flags (the acknowledgements) mean "not requested".
        return flags[attr][0] if attr in flags else False

    meta = MetaDmpMss(
        masque_ps=flag("masque_ps"),
        invisible_patient=flag("invisible_patient"),
        invisible_rep_legaux=flag("invisible_rep_legaux"),
        connexion_secrete=flag("connexion_secrete"),
        modif_conf_code=flag("modif_conf_code"),
        dest_dmp=flag("dest_dmp"),
        dest_mssante_ps=flag("dest_mssante_ps"),
        dest_mssante_pat=flag("dest_mssante_pat"),
        ack_reception=flag("ack_reception"),
        ack_lecture_mss=flag("ack_lecture_mss"),
        corpsmail_ps=bodies.get("corpsmail_ps"),
        corpsmail_patient=bodies.get("corpsmail_patient"),
        patient_reply_forbidden=reply_forbidden,
    )
    return documents, meta


def parse_document_message(message: Hl7Message, header: MessageHeader) -> DocumentMessage:
    """DocumentMessage for an MDM/ORU already checked by hl7v2.parse(); Hl7Error (AE) when unusable."""
    trigger_kind = _check_type(header)
    is_mdm = header.message_type == "MDM"

    pids = segments(message, "PID")
    if not pids:
        raise _error("100", "Segment PID absent", "PID")
    patient = parse_patient(pids[0], 1, None, require_ipp=False)
    visit = _visit(message)

    orcs = segments(message, "ORC")
    if not orcs:
        raise _error("100", "Segment ORC absent", "ORC")
    order_control = get_field(orcs[0], 1).strip()
    if not order_control:
        raise _error("101", "Demande de traitement (ORC-1) absente", "ORC^1^1")
    if order_control not in ORDER_CONTROL:
        raise _error("103", f"ORC-1 inconnu : {order_control[:5]!r} (NW, RO ou CA)", "ORC^1^1")
    obrs = segments(message, "OBR")
    if not obrs:
        raise _error("100", "Segment OBR absent", "OBR")
    obr = obrs[0]

    warnings: list[Hl7Error] = []
    documents, meta = _observations(message, warnings)
    if len(documents) > MAX_DOCUMENTS[header.message_type]:
        raise _error(
            "198",
            f"{len(documents)} documents dans un message {header.message_type}",
            f"OBX^{documents[-1].obx_index}",
        )
    kind = OBX_STATUS[documents[0].status]
    for doc in documents[1:]:
        if doc.status != documents[0].status:
            raise _incoherent("Statuts OBX-11 différents entre les documents", f"OBX^{doc.obx_index}^11")
    if trigger_kind is not None and trigger_kind != kind:
        raise _incoherent(
            f"OBX-11 = {documents[0].status} incohérent avec l'événement {header.trigger}",
            f"OBX^{documents[0].obx_index}^11",
        )
    if ORDER_CONTROL[order_control] != kind:
        raise _incoherent(
            f"ORC-1 = {order_control} incohérent avec OBX-11 = {documents[0].status}", "ORC^1^1"
        )

    document_type = DocumentType(
        get_field(obr, 4, 1, 1).strip(), get_field(obr, 4, 1, 2), get_field(obr, 4, 1, 3).strip()
    )
    unique_id = parent_id = None
    completion = None
    if is_mdm:
        txas = segments(message, "TXA")
        if not txas:
            raise _error("100", "Segment TXA absent", "TXA")
        txa = txas[0]
        txa_type = get_field(txa, 2).strip()
        if not txa_type:
            raise _error("101", "Type de document (TXA-2) absent", "TXA^1^2")
        if txa_type != document_type.code:
            document_type = DocumentType(txa_type)
        unique_id = DocumentId.from_ei(txa, 12)
        if unique_id is None:
            raise _error("101", "Identifiant unique du document (TXA-12) absent", "TXA^1^12")
        parent_id = DocumentId.from_ei(txa, 13)
        if kind == "replacement" and parent_id is None:
            raise _error("101", "Identifiant du document remplacé (TXA-13) absent", "TXA^1^13")
        completion = _opt(get_field(txa, 17))
        cda_header = documents[0].header
        if cda_header and cda_header.id and cda_header.id != unique_id:
            warnings.append(
                Hl7Error(
                    "207",
                    f"TXA-12 ({unique_id}) différent de l'identifiant du CDA ({cda_header.id})",
                    location="TXA^1^12",
                    severity="W",
                    application_code=APPLICATION_ERROR_OTHER,
                )
            )
    else:
        cda_header = documents[0].header
        if cda_header is not None:
            unique_id, parent_id = cda_header.id, cda_header.parent_id
    if not document_type.code:
        raise _error("101", "Type de document (OBR-4) absent", "OBR^1^4")

    participants = [_participant(prt) for prt in segments(message, "PRT")]
    author = next((p for p in participants if p.role == "SB"), None)
    recipients = [p for p in participants if p.role == "RCT"]
    reply_to = next((p.address for p in participants if p.role == "REPLY" and p.address), None)
    if meta.dest_dmp and author is None:
        raise _error("100", "PRT expéditeur (SB) requis pour une demande DMP", "PRT")
    if (meta.dest_mssante_ps or meta.dest_mssante_pat) and not any(r.address for r in recipients):
        raise _error("100", "PRT destinataire MSSanté (RCT avec PRT-15.4) requis", "PRT")

    return DocumentMessage(
        header=header,
        kind=kind,
        patient=patient,
        visit=visit,
        document_type=document_type,
        documents=documents,
        meta=meta,
        author=author,
        recipients=recipients,
        reply_to=reply_to,
        order_control=order_control,
        placer_number=_opt(get_field(orcs[0], 2, 1, 1) or get_field(obr, 2, 1, 1)),
        filler_number=_opt(get_field(orcs[0], 3, 1, 1) or get_field(obr, 3, 1, 1)),
        unique_document_id=unique_id,
        parent_document_id=parent_id,
        completion_status=completion,
        warnings=warnings,
    )
