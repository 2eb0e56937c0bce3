"""INSi teleservice (CNAM, WSDL DESIR_ICIR_EXP 1.5.0): build and parse its SOAP 1.2 messages.

Both sides live here (client requests/response parsing, sandbox request parsing/response building) so the
sandbox can never drift from what the client sends. Data is returned as plain dataclasses: the identity domain
(key checks, RNIV status) is applied by the caller.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

from lxml import etree

from opensegur.errors import OpenSegurError
from opensegur.transport.soap import (
    SoapFaultError,
    SoapFormatError,
    envelope,
    fault,
    parse_envelope,
)

__all__ = [
    "ACTION_TRAITS",
    "ACTION_VITALE",
    "NS_CTXBAM",
    "NS_CTXLPS",
    "NS_RECSANS",
    "NS_RECVIT",
    "NS_RESULTAT",
    "NS_SIRAM",
    "NS_WSA",
    "CR_LABELS",
    "InsiCarteVitaleQuery",
    "InsiContext",
    "InsiError",
    "InsiHistoryEntry",
    "InsiIdentity",
    "InsiMatricule",
    "InsiRequestInfo",
    "InsiResult",
    "InsiTraitsQuery",
    "build_fault",
    "build_response",
    "build_traits_request",
    "build_vitale_request",
    "fault_to_error",
    "parse_request_headers",
    "parse_response",
    "parse_traits_request",
    "parse_vitale_request",
    "response_envelope",
    "resultat",
    "traits_body",
    "traits_from_body",
    "vitale_body",
    "vitale_from_body",
]

NS_RECSANS = "http://www.cnamts.fr/INSiRecSans"
NS_RECVIT = "http://www.cnamts.fr/INSiRecVit"
NS_RESULTAT = "http://www.cnamts.fr/INSiResultat"
NS_CTXLPS = "urn:siram:lps:ctxlps"
NS_CTXBAM = "urn:siram:bam:ctxbam"
NS_WSA = "http://www.w3.org/2005/08/addressing"
NS_SIRAM = "urn:siram"

ACTION_TRAITS = "urn:ServiceIdentiteCertifiee:1.0.0:rechercherInsAvecTraitsIdentite"
ACTION_VITALE = "urn:ServiceIdentiteCertifiee:1.0.0:rechercherInsAvecCarteVitale"

CR_LABELS = {"00": "OK", "01": "Aucune identite trouvee", "02": "Plusieurs identites trouvees"}

_NUM13_RE = re.compile(r"^\d{6}[A-Za-z0-9]\d{6}$")
_KEY_RE = re.compile(r"^\d{2}$")


class InsiError(OpenSegurError):
    """INSi answered with a SOAP fault, or a message could not be understood.

    ``code`` is the CNAM error code from ``siram:Erreur/@code`` (e.g. ``desir_550``, ``DESIR_560``) when the
    service gave one, kept verbatim because the support desk asks for it.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        soap_code: str | None = None,
        subcode: str | None = None,
        severity: str | None = None,
        message_id: str | None = None,
    ) -> None:
        super().__init__(f"{message} [{code}]" if code else message)
        self.message = message
        self.code = code
        self.soap_code = soap_code
        self.subcode = subcode
        self.severity = severity
        self.message_id = message_id


# ---------------------------------------------------------------------------------------------- data classes


@dataclass
class InsiTraitsQuery:
    birth_name: str
    first_names: list[str]
    sex: str
    birth_date: str
    birth_place: str | None = None


@dataclass
class InsiMatricule:
    number13: str
    key: str | None = None
    type: str | None = None


@dataclass
class InsiCarteVitaleQuery:
    """RECVITALE: the beneficiary as read from the card (all fields optional in the XSD)."""

    birth_name: str | None = None
    birth_date: str | None = None  # DateLunaire: may carry 00 for an unknown month/day
    birth_rank: str | None = None
    matricule_individu: InsiMatricule | None = None
    matricule_od: InsiMatricule | None = None


@dataclass(frozen=True)
class InsiContext:
    """What the LPS declares about itself in ContexteLPS / ContexteBAM.

    ``idam`` is the software authorisation number issued by the CNAM (IDAM, R="4"); ``emitter`` identifies the
    calling structure (the OU of the INSi certificate, e.g. a FINESS-based id).
    """

    lps_name: str
    lps_version: str
    idam: str
    emitter: str
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    idam_r: str = "4"


class InsiHistoryEntry(NamedTuple):
    number13: str
    key: str | None
    oid: str
    date_start: str | None
    date_end: str | None


@dataclass
class InsiIdentity:
    number13: str
    key: str | None
    oid: str
    birth_name: str | None
    first_name: str | None
    first_names: str | None  # ListePrenom, space separated as INSi returns it
    sex: str | None
    birth_date: str | None  # kept as a string: lunar dates (month/day 00) are legitimate
    birth_place: str | None
    history: list[InsiHistoryEntry] = field(default_factory=list)

    @property
    def matricule(self) -> str:
        return f"{self.number13}{self.key or ''}"


@dataclass
class InsiResult:
    code: str
    label: str
    identity: InsiIdentity | None = None
    raw_request_id: str | None = None


@dataclass
class InsiRequestInfo:
    """Header data of a received request (sandbox side)."""

    action: str | None
    message_id: str | None
    lps_id: str | None
    emitter: str | None
    idam: str | None
    lps_name: str | None
    has_contexte_lps: bool
    has_contexte_bam: bool


# -------------------------------------------------------------------------------------------------- building


def _now_iso(now: datetime | None) -> str:
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sub(parent: etree._Element, ns: str, name: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{name}")
    if text is not None:
        el.text = text
    return el


def _headers(ctx: InsiContext, action: str, message_id: str, now: datetime | None) -> list[etree._Element]:
    bam, lps, action_el, mid = (copy.deepcopy(h) for h in _header_blocks(ctx, action))
    temps = _now_iso(now)
    for block in (bam, lps):
        block[0].text, block[1].text = message_id, temps  # Id, Temps
    mid.text = f"uuid:{message_id}"
    return [bam, lps, action_el, mid]


@lru_cache(maxsize=32)
def _header_blocks(ctx: InsiContext, action: str) -> tuple[etree._Element, ...]:
    """The header blocks of a request of ``ctx`` without their Id, Temps and MessageID, which _headers fills in
    copies: building these trees anew was half the cost of a request."""
    bam = etree.Element(f"{{{NS_CTXBAM}}}ContexteBAM", nsmap={"ctxbam": NS_CTXBAM})
    bam.set("Version", "01_02")
    _sub(bam, NS_CTXBAM, "Id")
    _sub(bam, NS_CTXBAM, "Temps")
    _sub(bam, NS_CTXBAM, "Emetteur", ctx.emitter)
    _sub(bam, NS_CTXBAM, "COUVERTURE")

    lps = etree.Element(f"{{{NS_CTXLPS}}}ContexteLPS", nsmap={"ctxlps": NS_CTXLPS})
    lps.set("Nature", "CTXLPS")
    lps.set("Version", "01_00")
    _sub(lps, NS_CTXLPS, "Id")
    _sub(lps, NS_CTXLPS, "Temps")
    _sub(lps, NS_CTXLPS, "Emetteur", ctx.emitter)
    soft = _sub(lps, NS_CTXLPS, "LPS")
    _sub(soft, NS_CTXLPS, "IDAM", ctx.idam).set("R", ctx.idam_r)
    _sub(soft, NS_CTXLPS, "Version", ctx.lps_version)
    _sub(soft, NS_CTXLPS, "Instance", ctx.instance_id)
    _sub(soft, NS_CTXLPS, "Nom", f"urn:lps:{ctx.lps_name}:{ctx.lps_version}")

    wsa = {"wsa": NS_WSA}
    action_el = etree.Element(f"{{{NS_WSA}}}Action", nsmap=wsa)
    action_el.text = action
    mid = etree.Element(f"{{{NS_WSA}}}MessageID", nsmap=wsa)
    return bam, lps, action_el, mid


def traits_body(q: InsiTraitsQuery) -> etree._Element:
    """RECSANSVITALE body.

    The XSD allows Prenom 0..n, but the first names are sent in ONE Prenom element, space separated, as the
    CNDA-qualified padoa client does; several Prenom elements are still accepted on parsing.
    """
    if not q.birth_name or not q.sex or not q.birth_date:
        raise ValueError("birth_name, sex and birth_date are required")
    root = etree.Element(f"{{{NS_RECSANS}}}RECSANSVITALE", nsmap={"insi_recsans_ins": NS_RECSANS})
    _sub(root, NS_RECSANS, "NomNaissance", q.birth_name)
    names = " ".join(n.strip() for n in q.first_names if n and n.strip())
    if names:
        _sub(root, NS_RECSANS, "Prenom", names)
    _sub(root, NS_RECSANS, "Sexe", q.sex)
    _sub(root, NS_RECSANS, "DateNaissance", q.birth_date)
    if q.birth_place:
        _sub(root, NS_RECSANS, "LieuNaissance", q.birth_place)
    return root


def _matricule(parent: etree._Element, name: str, m: InsiMatricule) -> None:
    el = _sub(parent, NS_RECVIT, name)
    _sub(el, NS_RECVIT, "NumIdentifiant", m.number13)
    if m.key is not None:
        _sub(el, NS_RECVIT, "Cle", m.key)
    if m.type is not None:
        _sub(el, NS_RECVIT, "TypeMatricule", m.type)


def vitale_body(q: InsiCarteVitaleQuery) -> etree._Element:
    root = etree.Element(f"{{{NS_RECVIT}}}RECVITALE", nsmap={"insi_recvit_ins": NS_RECVIT})
    if q.matricule_individu is not None:
        _matricule(root, "MatriculeIndividu", q.matricule_individu)
    if q.matricule_od is not None:
        _matricule(root, "MatriculeOD", q.matricule_od)
    if q.birth_name is not None:
        _sub(root, NS_RECVIT, "NomNaissance", q.birth_name)
    if q.birth_date is not None:
        _sub(root, NS_RECVIT, "DateNaissance", q.birth_date)
    if q.birth_rank is not None:
        _sub(root, NS_RECVIT, "RangNaissance", q.birth_rank)
    return root


def build_traits_request(
    q: InsiTraitsQuery, ctx: InsiContext, message_id: str | None = None, now: datetime | None = None
) -> bytes:
    mid = message_id or str(uuid.uuid4())
    return envelope(traits_body(q), _headers(ctx, ACTION_TRAITS, mid, now))


def build_vitale_request(
    q: InsiCarteVitaleQuery, ctx: InsiContext, message_id: str | None = None, now: datetime | None = None
) -> bytes:
    mid = message_id or str(uuid.uuid4())
    return envelope(vitale_body(q), _headers(ctx, ACTION_VITALE, mid, now))


def build_response(result: InsiResult, *, action: str | None = None, relates_to: str | None = None) -> bytes:
    """RESULTAT envelope, elements in XSD order (IdIndividu, OID, DateDeb, DateFin)."""
    return response_envelope(resultat(result), action=action, relates_to=relates_to)


def resultat(result: InsiResult) -> etree._Element:
    """The RESULTAT element an answer carries in its body."""
    root = etree.Element(f"{{{NS_RESULTAT}}}RESULTAT", nsmap={None: NS_RESULTAT})

    def sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
        return _sub(parent, NS_RESULTAT, name, text)

    cr = sub(root, "CR")
    sub(cr, "CodeCR", result.code)
    sub(cr, "LibelleCR", result.label)
    ident = result.identity
    if ident is not None:
        ind = sub(root, "INDIVIDU")

        def ins(
            name: str, number13: str, key: str | None, oid: str, deb: str | None, fin: str | None
        ) -> None:
            el = sub(ind, name)
            idi = sub(el, "IdIndividu")
            sub(idi, "NumIdentifiant", number13)
            if key is not None:
                sub(idi, "Cle", key)
            sub(el, "OID", oid)
            if deb:
                sub(el, "DateDeb", deb)
            if fin:
                sub(el, "DateFin", fin)

        ins("INSACTIF", ident.number13, ident.key, ident.oid, None, None)
        for h in ident.history:
            ins("INSHISTO", *h)
        tiq = sub(ind, "TIQ")
        for name, value in (
            ("NomNaissance", ident.birth_name),
            ("Prenom", ident.first_name),
            ("ListePrenom", ident.first_names),
            ("Sexe", ident.sex),
            ("DateNaissance", ident.birth_date),
            ("LieuNaissance", ident.birth_place),
        ):
            if value is not None:
                sub(tiq, name, value)
    return root


def response_envelope(
    body: etree._Element, *, action: str | None = None, relates_to: str | None = None
) -> bytes:
    """An answer around a RESULTAT element (moved into the envelope), with its WS-Addressing headers."""
    headers: list[etree._Element] = []
    if action:
        a = etree.Element(f"{{{NS_WSA}}}Action", nsmap={"wsa": NS_WSA})
        a.text = action
        headers.append(a)
    if relates_to:
        r = etree.Element(f"{{{NS_WSA}}}RelatesTo", nsmap={"wsa": NS_WSA})
        r.text = relates_to
        headers.append(r)
    return envelope(body, headers)


def build_fault(
    code: str,
    reason: str,
    error_code: str,
    error_text: str,
    *,
    subcode: str | None = None,
    severity: str = "erreur",
    message_id: str | None = None,
) -> bytes:
    """SOAP fault shaped like the real service's: Subcode ``soap:siram_NNN`` and a ``siram:Erreur`` detail."""
    err = etree.Element(f"{{{NS_SIRAM}}}Erreur", nsmap={"siram": NS_SIRAM})
    err.set("code", error_code)
    if message_id:
        err.set("messageID", message_id)
    err.set("severite", severity)
    err.text = error_text
    return fault(code, reason, subcode, err)


# --------------------------------------------------------------------------------------------------- parsing


def _t(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    # A childless element's text is all its text; itertext, which mixed content needs, costs far more than
    # reading it, and every field of these messages is a leaf.
    text = ("".join(el.itertext()) if len(el) else el.text or "").strip()
    return text or None


def _soap(raw: bytes) -> tuple[list[etree._Element], etree._Element]:
    """parse_envelope, translating transport-layer errors into InsiError."""
    try:
        return parse_envelope(raw)
    except SoapFaultError as exc:
        raise fault_to_error(exc) from exc
    except SoapFormatError as exc:
        raise InsiError(
            f"invalid INSi message: {exc}", code="XML_UNSAFE" if exc.unsafe else "XML_INVALID"
        ) from exc


def fault_to_error(exc: SoapFaultError) -> InsiError:
    code = severity = message_id = None
    detail = exc.detail
    if detail is not None and detail.tag == f"{{{NS_SIRAM}}}Erreur":
        code = detail.get("code")
        severity = detail.get("severite")
        message_id = detail.get("messageID")
    text = exc.reason
    if exc.detail_text and exc.detail_text != exc.reason:
        text = f"{exc.reason} — {exc.detail_text}" if exc.reason else exc.detail_text
    return InsiError(
        f"INSi fault {exc.code}: {text}",
        code=code or exc.subcode,
        soap_code=exc.code,
        subcode=exc.subcode,
        severity=severity,
        message_id=message_id,
    )


def _ins(el: etree._Element) -> InsiHistoryEntry:
    r = f"{{{NS_RESULTAT}}}"
    number13 = _t(el.find(f"{r}IdIndividu/{r}NumIdentifiant"))
    oid = _t(el.find(f"{r}OID"))
    key = _t(el.find(f"{r}IdIndividu/{r}Cle"))
    if not number13 or not _NUM13_RE.match(number13):
        raise InsiError(f"malformed INSi response: bad NumIdentifiant {number13!r}", code="XML_INVALID")
    if key is not None and not _KEY_RE.match(key):
        raise InsiError(f"malformed INSi response: bad Cle {key!r}", code="XML_INVALID")
    if not oid:
        raise InsiError("malformed INSi response: OID missing", code="XML_INVALID")
    # Children are looked up by name, not position: the recorded CNDA response TEST_2.04_cas2 puts
    # DateDeb/DateFin before IdIndividu, contrary to the XSD sequence.
    return InsiHistoryEntry(number13, key, oid, _t(el.find(f"{r}DateDeb")), _t(el.find(f"{r}DateFin")))


def parse_response(raw: bytes, *, request_id: str | None = None) -> InsiResult:
    """Parse a RESULTAT answer. Raises InsiError on a SOAP fault or malformed/unsafe content."""
    _, body = _soap(raw)
    r = f"{{{NS_RESULTAT}}}"
    if body.tag != f"{r}RESULTAT":
        raise InsiError(f"unexpected INSi response element {body.tag!r}", code="XML_INVALID")
    code = _t(body.find(f"{r}CR/{r}CodeCR"))
    if code is None:
        raise InsiError("malformed INSi response: CR/CodeCR missing", code="XML_INVALID")
    label = _t(body.find(f"{r}CR/{r}LibelleCR")) or CR_LABELS.get(code, "")
    ind = body.find(f"{r}INDIVIDU")
    identity = None
    if ind is not None:
        actif = ind.find(f"{r}INSACTIF")
        tiq = ind.find(f"{r}TIQ")
        if actif is None or tiq is None:
            raise InsiError("malformed INSi response: INDIVIDU without INSACTIF or TIQ", code="XML_INVALID")
        active = _ins(actif)
        identity = InsiIdentity(
            number13=active.number13,
            key=active.key,
            oid=active.oid,
            birth_name=_t(tiq.find(f"{r}NomNaissance")),
            first_name=_t(tiq.find(f"{r}Prenom")),
            first_names=_t(tiq.find(f"{r}ListePrenom")),
            sex=_t(tiq.find(f"{r}Sexe")),
            birth_date=_t(tiq.find(f"{r}DateNaissance")),
            birth_place=_t(tiq.find(f"{r}LieuNaissance")),
            history=[_ins(h) for h in ind.findall(f"{r}INSHISTO")],
        )
    if code == "00" and identity is None:
        raise InsiError("malformed INSi response: CodeCR 00 without INDIVIDU", code="XML_INVALID")
    return InsiResult(code=code, label=label, identity=identity, raw_request_id=request_id)


def parse_request_headers(headers: list[etree._Element]) -> InsiRequestInfo:
    info = InsiRequestInfo(None, None, None, None, None, None, False, False)
    for h in headers:
        if h.tag == f"{{{NS_WSA}}}Action":
            info.action = _t(h)
        elif h.tag == f"{{{NS_WSA}}}MessageID":
            info.message_id = _t(h)
        elif h.tag == f"{{{NS_CTXBAM}}}ContexteBAM":
            info.has_contexte_bam = True
        elif h.tag == f"{{{NS_CTXLPS}}}ContexteLPS":
            info.has_contexte_lps = True
            c = f"{{{NS_CTXLPS}}}"
            info.lps_id = _t(h.find(f"{c}Id"))
            info.emitter = _t(h.find(f"{c}Emetteur"))
            info.idam = _t(h.find(f"{c}LPS/{c}IDAM"))
            info.lps_name = _t(h.find(f"{c}LPS/{c}Nom"))
    return info


def parse_traits_request(raw: bytes) -> InsiTraitsQuery:
    return traits_from_body(_soap(raw)[1])


def traits_from_body(body: etree._Element) -> InsiTraitsQuery:
    s = f"{{{NS_RECSANS}}}"
    if body.tag != f"{s}RECSANSVITALE":
        raise InsiError(f"expected RECSANSVITALE, got {body.tag!r}", code="XML_INVALID")
    first_names: list[str] = []
    for p in body.findall(f"{s}Prenom"):
        first_names.extend((_t(p) or "").split())
    return InsiTraitsQuery(
        birth_name=_t(body.find(f"{s}NomNaissance")) or "",
        first_names=first_names,
        sex=_t(body.find(f"{s}Sexe")) or "",
        birth_date=_t(body.find(f"{s}DateNaissance")) or "",
        birth_place=_t(body.find(f"{s}LieuNaissance")),
    )


def parse_vitale_request(raw: bytes) -> InsiCarteVitaleQuery:
    return vitale_from_body(_soap(raw)[1])


def vitale_from_body(body: etree._Element) -> InsiCarteVitaleQuery:
    v = f"{{{NS_RECVIT}}}"
    if body.tag != f"{v}RECVITALE":
        raise InsiError(f"expected RECVITALE, got {body.tag!r}", code="XML_INVALID")

    def mat(name: str) -> InsiMatricule | None:
        el = body.find(f"{v}{name}")
        if el is None:
            return None
        return InsiMatricule(
            number13=_t(el.find(f"{v}NumIdentifiant")) or "",
            key=_t(el.find(f"{v}Cle")),
            type=_t(el.find(f"{v}TypeMatricule")),
        )

    return InsiCarteVitaleQuery(
        birth_name=_t(body.find(f"{v}NomNaissance")),
        birth_date=_t(body.find(f"{v}DateNaissance")),
        birth_rank=_t(body.find(f"{v}RangNaissance")),
        matricule_individu=mat("MatriculeIndividu"),
        matricule_od=mat("MatriculeOD"),
    )
