"""Sandbox of the CNAM INSi teleservice (SOAP 1.2 over HTTP), for development and tests.

It speaks the messages of :mod:`opensegur.transactions.insi`, validates requests as strictly as the real
service (hardened XML parsing, ContexteLPS, XSD of the body) and matches traits the way the teleservice does.
An admin API injects latency, HTTP errors, SOAP faults and timeouts.

The fault codes it invents for validation errors are prefixed ``DESIR_SBX_``: the CNAM list of DESIR codes is
not public here; only ``desir_550`` (unknown IDAM, recorded) and ``DESIR_560`` (insufficient rights) are
known.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

from fastapi import FastAPI, Request, Response
from lxml import etree
from pydantic import BaseModel, Field

from opensegur.errors import OpenSegurError
from opensegur.sandbox.faults import FaultInjector
from opensegur.transactions.insi import (
    ACTION_TRAITS,
    ACTION_VITALE,
    CR_LABELS,
    NS_CTXLPS,
    InsiCarteVitaleQuery,
    InsiError,
    InsiHistoryEntry,
    InsiIdentity,
    InsiResult,
    InsiTraitsQuery,
    build_fault,
    parse_request_headers,
    response_envelope,
    resultat,
    traits_from_body,
    vitale_from_body,
)
from opensegur.transport.soap import (
    SOAP_CONTENT_TYPE,
    SoapFaultError,
    SoapFormatError,
    action_from_content_type,
    parse_envelope,
)

__all__ = [
    "DEFAULT_IDENTITIES",
    "FaultConfig",
    "OID_NIA",
    "OID_NIA_TEST",
    "OID_NIR",
    "OID_NIR_TEST",
    "SandboxIdentity",
    "create_insi_app",
    "nir_key",
]

OID_NIR = "1.2.250.1.213.1.4.8"
OID_NIA = "1.2.250.1.213.1.4.9"
OID_NIR_TEST = "1.2.250.1.213.1.4.10"
OID_NIA_TEST = "1.2.250.1.213.1.4.11"

MAX_REQUEST_BYTES = 1_000_000
MAX_SLEEP_S = 30.0


def nir_key(number13: str) -> str:
    """Control key: 97 - (N mod 97), Corsica 2A→19 and 2B→18 first (replaced by identity.ins later)."""
    n = number13.upper()
    if len(n) != 13:
        raise ValueError(f"NIR/NIA must have 13 characters: {number13!r}")
    dept = n[5:7]
    if dept == "2A":
        n = n[:5] + "19" + n[7:]
    elif dept == "2B":
        n = n[:5] + "18" + n[7:]
    if not n.isdigit():
        raise ValueError(f"invalid NIR/NIA: {number13!r}")
    return f"{97 - int(n) % 97:02d}"


@dataclass
class SandboxIdentity:
    number13: str
    key: str
    oid: str
    birth_name: str
    first_names: list[str]
    sex: str
    birth_date: str
    birth_place: str | None
    history: list[InsiHistoryEntry] = field(default_factory=list)
    deceased: bool = False  # not carried by RESULTAT (no such field in the XSD); for other sandboxes
    vitale_nir: str | None = None  # 13 chars of the card holder when the person is a beneficiary on a card
    vitale_rank: str = "1"
    # Former spellings still found by the search while the answer carries the corrected traits, so the caller
    # sees "traits différents de ceux en base locale".
    alias_first_names: list[str] = field(default_factory=list)

    @classmethod
    def make(
        cls,
        number13: str,
        oid: str,
        birth_name: str,
        first_names: str,
        sex: str,
        birth_date: str,
        birth_place: str | None,
        history: list[tuple[str, str, str | None, str | None]] | None = None,
        **kw: Any,
    ) -> SandboxIdentity:
        """Build with computed keys; ``history`` items are (number13, oid, date_start, date_end)."""
        return cls(
            number13=number13,
            key=nir_key(number13),
            oid=oid,
            birth_name=birth_name,
            first_names=first_names.split(),
            sex=sex,
            birth_date=birth_date,
            birth_place=birth_place,
            history=[InsiHistoryEntry(n, nir_key(n), o, d, f) for n, o, d, f in (history or [])],
            **kw,
        )

    @cached_property
    def found(self) -> etree._Element:
        """The RESULTAT of a search that found this person alone, built once: the sandbox's identities do not
        change, and building the tree was most of the cost of answering. Answers take a copy."""
        return resultat(InsiResult("00", CR_LABELS["00"], self.to_identity()))

    def to_identity(self) -> InsiIdentity:
        return InsiIdentity(
            number13=self.number13,
            key=self.key,
            oid=self.oid,
            birth_name=self.birth_name,
            first_name=self.first_names[0] if self.first_names else None,
            first_names=" ".join(self.first_names),
            sex=self.sex,
            birth_date=self.birth_date,
            birth_place=self.birth_place,
            history=list(self.history),
        )


_M = SandboxIdentity.make

DEFAULT_IDENTITIES: list[SandboxIdentity] = [
    # --- Public CNDA / INSi qualification identities (standards.md §3.5). OIDs .8/.9 as the real
    # qualification service returns them. Keys are recomputed: the recorded TEST_2.08_cas2 keys (60/10)
    # fail the formula.
    _M("2751263220749", OID_NIR, "ADRUN", "ZOE", "F", "1975-12-31", "63220"),
    _M(
        "180032B020401", OID_NIR, "CORSE", "ANTHONY", "M", "1980-03-02", "2B020",
        history=[("180032B020401", OID_NIR, None, None)],
    ),
    _M(
        "1810363220456", OID_NIR, "HERMANN", "GATIEN", "M", "1981-03-24", "63220",
        history=[("1810363220456", OID_NIR, None, None), ("2810363220456", OID_NIR, None, None)],
    ),
    _M("2360663220836", OID_NIR, "TCHITCHI", "CATARINA BELLA", "F", "1936-06-21", "63220"),
    _M("1100863220830", OID_NIR, "NESSI", "MICHELANGELO ANTHONY", "M", "2010-08-07", "63220"),
    _M(
        "1090763220834", OID_NIR, "ECETINSI", "PIERRE-ALAIN MURIEL FLORIANT", "M", "2009-07-14", "63220",
        # Dates copied from the recorded TEST_2.04_cas2 answer, where DateDeb is after DateFin.
        history=[
            ("2090763220834", OID_NIR, "2019-03-01", "2019-02-28"),
            ("2090663220123", OID_NIR, None, None),
        ],
    ),
    _M("1090763220888", OID_NIA, "PROVISOIRE", "MATRICULE", "M", "2009-07-01", "63220"),
    # --- CI-SIS CDA examples patient. COG 51215 (as in the CDA and encoded in the NIR itself: dept 51,
    # commune 215); the SGL HL7 admission example gives 63220, contradicting her NIR.
    _M("2790351215189", OID_NIR_TEST, "PAT-TROIS", "DOMINIQUE MARIE-LOUISE", "F", "1979-03-28", "51215"),
    # --- Invented identities (test OIDs), one per behaviour to exercise.
    # Homonyms: same traits, different birthplace -> 02 without COG, 00 with it.
    _M("1700133063101", OID_NIR_TEST, "MARTIN", "JEAN", "M", "1970-01-15", "33063"),
    _M("1700131555102", OID_NIR_TEST, "MARTIN", "JEAN", "M", "1970-01-15", "31555"),
    # Composed (hyphenated) birth name.
    _M("2851144109203", OID_NIR_TEST, "MARTIN-DUPONT", "CLAIRE ANNE", "F", "1985-11-05", "44109"),
    # Born abroad (department 99, Viet Nam 99243): first known under a NIA, now a NIR.
    _M(
        "2880499243045", OID_NIR_TEST, "NGUYEN", "THI MAI", "F", "1988-04-12", "99243",
        history=[("2880499243901", OID_NIA_TEST, None, "2016-05-31")],
    ),
    # Deceased: INSi still answers 00, the death is not part of RESULTAT.
    _M("1320235238077", OID_NIR_TEST, "DURAND", "ROBERT", "M", "1932-02-14", "35238", deceased=True),
    # Traits corrected by the civil status: MATHIEU -> MATTHIEU, and a duplicate NIR merged into this one.
    _M(
        "1900575113310", OID_NIR_TEST, "LEFEBVRE", "MATTHIEU LOUIS", "M", "1990-05-20", "75113",
        history=[("1900575113999", OID_NIR_TEST, "1990-06-01", "2021-09-30")],
        alias_first_names=["MATHIEU"],
    ),
    # Lunar birth date (unknown month and day, month 20 in the NIR): the string must be kept as is.
    _M("2622099350112", OID_NIR_TEST, "BENALI", "YASMINE", "F", "1962-00-00", "99350"),
    # Carte Vitale: the mother's card carries twins as beneficiaries of rank 1 and 2.
    _M("2870667482140", OID_NIR_TEST, "ROUSSEL", "CAMILLE", "F", "1987-06-03", "67482"),
    _M(
        "2150667482231", OID_NIR_TEST, "PETIT", "LEA", "F", "2015-06-10", "67482",
        vitale_nir="2870667482140", vitale_rank="1",
    ),
    _M(
        "1150667482232", OID_NIR_TEST, "PETIT", "HUGO", "M", "2015-06-10", "67482",
        vitale_nir="2870667482140", vitale_rank="2",
    ),
]  # fmt: skip

# --------------------------------------------------------------------------------------- request validation

# Copies of the WSDL 1.5.0 request schemas (INSi_RECSANS_INS.xsd, INSi_RECVITALE_INS.xsd, CTXLPS 01_00),
# annotations removed, embedded so the sandbox runs without the reference tree.
_XSD_RECSANS = b"""<?xml version="1.0"?>
<xsd:schema elementFormDefault="qualified" targetNamespace="http://www.cnamts.fr/INSiRecSans"
  xmlns="http://www.cnamts.fr/INSiRecSans" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <xsd:element name="RECSANSVITALE" type="TraitsDIdentite"/>
  <xsd:complexType name="TraitsDIdentite"><xsd:sequence>
    <xsd:element name="NomNaissance" type="xsd:string" minOccurs="0"/>
    <xsd:element name="Prenom" type="xsd:string" minOccurs="0" maxOccurs="unbounded"/>
    <xsd:element name="Sexe" type="xsd:string" minOccurs="0"/>
    <xsd:element name="DateNaissance" type="xsd:string" minOccurs="0"/>
    <xsd:element name="LieuNaissance" type="xsd:string" minOccurs="0"/>
  </xsd:sequence></xsd:complexType>
</xsd:schema>"""

_XSD_RECVIT = b"""<?xml version="1.0"?>
<xsd:schema elementFormDefault="qualified" targetNamespace="http://www.cnamts.fr/INSiRecVit"
  xmlns="http://www.cnamts.fr/INSiRecVit" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <xsd:element name="RECVITALE" type="Beneficiaire"/>
  <xsd:complexType name="Beneficiaire"><xsd:sequence>
    <xsd:element name="MatriculeIndividu" type="Matricule" minOccurs="0"/>
    <xsd:element name="MatriculeOD" type="Matricule" minOccurs="0"/>
    <xsd:element name="NomNaissance" type="xsd:string" minOccurs="0"/>
    <xsd:element name="DateNaissance" type="xsd:string" minOccurs="0"/>
    <xsd:element name="RangNaissance" type="xsd:string" minOccurs="0"/>
  </xsd:sequence></xsd:complexType>
  <xsd:complexType name="Matricule"><xsd:sequence>
    <xsd:element name="NumIdentifiant" type="xsd:string" minOccurs="0"/>
    <xsd:element name="Cle" type="xsd:string" minOccurs="0"/>
    <xsd:element name="TypeMatricule" type="xsd:string" minOccurs="0"/>
  </xsd:sequence></xsd:complexType>
</xsd:schema>"""

_XSD_CTXLPS = b"""<?xml version="1.0"?>
<xsd:schema xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:ctxlps="urn:siram:lps:ctxlps"
  targetNamespace="urn:siram:lps:ctxlps" elementFormDefault="qualified" attributeFormDefault="unqualified">
  <xsd:element name="ContexteLPS" type="ctxlps:ContexteLPS"/>
  <xsd:complexType name="IdentiteStringRef"><xsd:simpleContent><xsd:extension base="xsd:string">
    <xsd:attribute name="R" type="xsd:string"/></xsd:extension></xsd:simpleContent></xsd:complexType>
  <xsd:complexType name="LOGICIEL"><xsd:sequence>
    <xsd:element name="IDAM" type="ctxlps:IdentiteStringRef" minOccurs="0"/>
    <xsd:element name="Version" type="xsd:string" minOccurs="0"/>
    <xsd:element name="Instance" type="xsd:string" minOccurs="0"/>
    <xsd:element name="Nom" type="xsd:string" minOccurs="0"/>
  </xsd:sequence></xsd:complexType>
  <xsd:complexType name="ContexteLPS"><xsd:sequence>
    <xsd:element name="Id" type="xsd:string"/>
    <xsd:element name="Temps" type="xsd:dateTime"/>
    <xsd:element name="Emetteur" type="xsd:string" minOccurs="0"/>
    <xsd:element name="LPS" type="ctxlps:LOGICIEL" minOccurs="0"/>
  </xsd:sequence>
  <xsd:attribute name="Nature"><xsd:simpleType><xsd:restriction base="xsd:string">
    <xsd:pattern value="CTXLPS"/></xsd:restriction></xsd:simpleType></xsd:attribute>
  <xsd:attribute name="Version" type="xsd:string" use="required"/>
  </xsd:complexType>
</xsd:schema>"""


def _schema(text: bytes) -> etree.XMLSchema:
    return etree.XMLSchema(
        etree.fromstring(text, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    )


_SCHEMAS = {
    ACTION_TRAITS: _schema(_XSD_RECSANS),
    ACTION_VITALE: _schema(_XSD_RECVIT),
}
_SCHEMA_CTXLPS = _schema(_XSD_CTXLPS)

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUM13_RE = re.compile(r"^\d{5}(\d{2}|2[AB])\d{6}$")


class _Reject(OpenSegurError):
    """A request the real service would refuse with a SOAP fault."""

    def __init__(
        self, code: str, reason: str, error_code: str, detail: str, subcode: str | None = None
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error_code = error_code
        self.detail = detail
        self.subcode = subcode


def _validate(schema: etree.XMLSchema, el: etree._Element, what: str) -> None:
    # Given an element rather than a tree, lxml validates that element's subtree where it stands in the envelope:
    # no serialised copy to parse again (a third of the sandbox's XML work), and error lines are the request's.
    if not schema.validate(el):
        err = schema.error_log.last_error
        raise _Reject(
            "soap:Sender",
            f"La requête n'est pas conforme au schéma ({what}).",
            "DESIR_SBX_XSD",
            f"{what}: {err.message if err else 'invalid'} (line {err.line if err else '?'})",
        )


# Every search normalises the traits of every identity: the same few strings each time, remembered rather than
# decomposed again (the largest cost of a search after the XML).
@lru_cache(maxsize=4096)
def normalise(text: str) -> str:
    """Upper case, no diacritics, single spaces; hyphens and apostrophes stay significant."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    stripped = stripped.replace("\u2019", "'").replace("\u2010", "-")
    return " ".join(stripped.upper().split())


def match_traits(identities: list[SandboxIdentity], q: InsiTraitsQuery) -> list[SandboxIdentity]:
    name = normalise(q.birth_name)
    wanted = {normalise(n) for n in q.first_names}
    out = []
    for p in identities:
        if normalise(p.birth_name) != name or p.sex != q.sex or p.birth_date != q.birth_date:
            continue
        known = {normalise(n) for n in (*p.first_names, *p.alias_first_names)}
        if not wanted & known:
            continue
        if q.birth_place and normalise(q.birth_place) != normalise(p.birth_place or ""):
            continue
        out.append(p)
    return out


def match_vitale(identities: list[SandboxIdentity], q: InsiCarteVitaleQuery) -> list[SandboxIdentity]:
    card = q.matricule_individu.number13.upper() if q.matricule_individu else None
    out = []
    for p in identities:
        holder = p.vitale_nir or p.number13
        if card and holder.upper() != card:
            continue
        if q.birth_date and p.birth_date != q.birth_date:
            continue
        if q.birth_rank and p.vitale_rank != q.birth_rank.lstrip("0"):
            continue
        if q.birth_name and normalise(q.birth_name) != normalise(p.birth_name):
            continue
        out.append(p)
    return out


def _check_traits(q: InsiTraitsQuery) -> None:
    problems = []
    if not q.birth_name:
        problems.append("NomNaissance absent")
    if not q.first_names:
        problems.append("Prenom absent")
    if q.sex not in ("M", "F"):
        problems.append(f"Sexe invalide {q.sex!r}")
    if not _DATE_RE.match(q.birth_date):
        problems.append(f"DateNaissance invalide {q.birth_date!r}")
    if q.birth_place is not None and not re.match(r"^[0-9AB]{5}$", q.birth_place.upper()):
        problems.append(f"LieuNaissance invalide {q.birth_place!r}")
    if problems:
        raise _Reject("soap:Sender", "Traits d'identité invalides.", "DESIR_SBX_TRAITS", "; ".join(problems))


def _check_vitale(q: InsiCarteVitaleQuery) -> None:
    problems = []
    m = q.matricule_individu
    if m is None or not _NUM13_RE.match(m.number13.upper()):
        problems.append("MatriculeIndividu/NumIdentifiant absent ou invalide")
    if not q.birth_date or not _DATE_RE.match(q.birth_date):
        problems.append("DateNaissance absente ou invalide")
    if problems:
        raise _Reject(
            "soap:Sender", "Données carte Vitale invalides.", "DESIR_SBX_VITALE", "; ".join(problems)
        )


# ------------------------------------------------------------------------------------------- fault injection


class FaultConfig(BaseModel):
    latency_ms: int = Field(default=0, ge=0, le=int(MAX_SLEEP_S * 1000))
    http_status: int | None = Field(default=None, ge=400, le=599)
    soap_fault: str | None = Field(default=None, max_length=64)
    timeout: bool = False
    count: int | None = Field(default=None, ge=1)


_KNOWN_FAULTS = {
    "desir_550": (
        "siram_100",
        "L'accès par ce progiciel au service n'est pas autorisé.",
        "Numéro d'autorisation du logiciel inconnu.",
    ),
    "DESIR_560": (
        "siram_100",
        "Accès au service refusé.",
        "Droits insuffisants : le certificat n'est pas un certificat INSI-AUTO ou INSI-MANU.",
    ),
}


class _State:
    def __init__(self, identities: list[SandboxIdentity], timeout_sleep_s: float) -> None:
        self.identities = identities
        self.max_request_bytes = MAX_REQUEST_BYTES
        self.timeout_sleep_s = min(timeout_sleep_s, MAX_SLEEP_S)
        self.faults: FaultInjector[FaultConfig] = FaultInjector(max_sleep_s=MAX_SLEEP_S)
        self.calls: deque[dict[str, Any]] = deque(maxlen=200)


def _soap_response(content: bytes, status: int = 200) -> Response:
    return Response(content=content, status_code=status, media_type=SOAP_CONTENT_TYPE)


def _fault_response(r: _Reject, message_id: str | None) -> Response:
    # The real INSi answers every fault with HTTP 500, Sender faults included.
    body = build_fault(r.code, r.reason, r.error_code, r.detail, subcode=r.subcode, message_id=message_id)
    return _soap_response(body, 500)


def create_insi_app(
    identities: list[SandboxIdentity] | None = None,
    *,
    timeout_sleep_s: float = MAX_SLEEP_S,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> FastAPI:
    state = _State(list(DEFAULT_IDENTITIES if identities is None else identities), timeout_sleep_s)
    app = FastAPI(title="OpenSégur INSi sandbox", docs_url=None, redoc_url=None)
    state.max_request_bytes = max_request_bytes
    app.state.insi = state

    async def insi(request: Request) -> Response:
        record: dict[str, Any] = {"at": datetime.now(UTC).isoformat(), "action": None, "message_id": None}
        state.calls.append(record)
        cfg = state.faults.take()
        if cfg is not None:
            record["injected"] = cfg.model_dump()
            if cfg.latency_ms:
                await state.faults.sleep(cfg.latency_ms / 1000)
            if cfg.timeout:
                await state.faults.sleep(state.timeout_sleep_s)
                record["status"] = 504
                return Response("sandbox: injected timeout", status_code=504, media_type="text/plain")
            if cfg.http_status is not None:
                record["status"] = cfg.http_status
                return Response(
                    f"sandbox: injected HTTP {cfg.http_status}",
                    status_code=cfg.http_status,
                    media_type="text/plain",
                )
            if cfg.soap_fault:
                sub, reason, detail = _KNOWN_FAULTS.get(
                    cfg.soap_fault, ("siram_sbx", "Erreur injectée par le bac à sable.", cfg.soap_fault)
                )
                record.update(status=500, result=cfg.soap_fault)
                return _fault_response(
                    _Reject("soap:Sender", reason, cfg.soap_fault, detail, f"soap:{sub}"), None
                )
        try:
            response = await _handle(state, request, record)
        except _Reject as r:
            record.update(status=500, result=r.error_code, reason=r.detail)
            return _fault_response(r, record.get("message_id"))
        record["status"] = 200
        return response

    app.router.add_route("/insi", insi, methods=["POST"])

    @app.post("/insi/_admin/faults")
    async def set_faults(cfg: FaultConfig) -> dict[str, Any]:
        state.faults.set(cfg, count=cfg.count)
        return {"fault": cfg.model_dump()}

    @app.delete("/insi/_admin/faults")
    async def clear_faults() -> dict[str, Any]:
        state.faults.clear()
        return {"fault": None}

    @app.get("/insi/_admin/calls")
    async def calls() -> list[dict[str, Any]]:
        return list(state.calls)

    @app.delete("/insi/_admin/calls")
    async def clear_calls() -> dict[str, int]:
        state.calls.clear()
        return {"calls": 0}

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Reject(
                "soap:Sender", "Requête trop volumineuse.", "DESIR_SBX_SIZE", f"more than {limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _handle(state: _State, request: Request, record: dict[str, Any]) -> Response:
    raw = await _read_body(request, state.max_request_bytes)
    try:
        headers, body = parse_envelope(raw, state.max_request_bytes)
    except SoapFormatError as exc:
        what = "XML non sûr refusé" if exc.unsafe else "Message SOAP 1.2 invalide"
        raise _Reject("soap:Sender", f"{what} : {exc}", "DESIR_SBX_XML", str(exc)) from exc
    except SoapFaultError as exc:
        raise _Reject(
            "soap:Sender", "Une requête ne peut pas être un soap:Fault.", "DESIR_SBX_XML", str(exc)
        ) from exc

    info = parse_request_headers(headers)
    record.update(message_id=info.message_id, emitter=info.emitter, idam=info.idam)
    ct_action = action_from_content_type(request.headers.get("content-type"))
    if ct_action and info.action and ct_action != info.action:
        detail = f"Content-Type action {ct_action!r} != wsa:Action {info.action!r}"
        raise _Reject("soap:Sender", "Action incohérente.", "DESIR_SBX_ACTION", detail)
    action = ct_action or info.action
    record["action"] = action
    if action not in _SCHEMAS:
        raise _Reject("soap:Sender", "Opération inconnue.", "DESIR_SBX_ACTION", f"action {action!r}")
    ctx = next((h for h in headers if h.tag == f"{{{NS_CTXLPS}}}ContexteLPS"), None)
    if ctx is None:
        raise _Reject(
            "soap:Sender",
            "Le contexte LPS est absent.",
            "DESIR_SBX_CTXLPS",
            "ContexteLPS absent",
            "soap:siram_100",
        )
    _validate(_SCHEMA_CTXLPS, ctx, "ContexteLPS")
    if not info.idam:
        sub, reason, detail = _KNOWN_FAULTS["desir_550"]
        raise _Reject("soap:Sender", reason, "desir_550", detail, f"soap:{sub}")
    _validate(_SCHEMAS[action], body, "corps de la requête")

    try:
        if action == ACTION_TRAITS:
            q = traits_from_body(body)
            _check_traits(q)
            # The query itself: the admin API serialises it when a test reads the calls, not each search.
            record["query"] = q
            found = match_traits(state.identities, q)
        else:
            vq = vitale_from_body(body)
            _check_vitale(vq)
            record["query"] = vq
            found = match_vitale(state.identities, vq)
    except InsiError as exc:
        raise _Reject("soap:Sender", "Requête invalide.", "DESIR_SBX_XSD", exc.message) from exc

    if len(found) == 1:
        record.update(result="00", matricule=found[0].to_identity().matricule)
        body = copy.deepcopy(found[0].found)
    else:
        code = "02" if found else "01"
        record["result"] = code
        body = resultat(InsiResult(code, CR_LABELS[code]))
    return _soap_response(response_envelope(body, action=f"{action}Response", relates_to=info.message_id))
