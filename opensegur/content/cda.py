"""Reading the header of a CDA R2 document (CI-SIS structuration minimale) into plain data.

Only the header is read: it carries everything the XDS metadata and the identity checks need, whatever the body
(N1 ``nonXMLBody`` or N3 ``structuredBody``). Reading is lenient (absent elements give ``None``/empty values):
judging completeness is the job of the validator and of the XDS mapping, which report in their own terms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from lxml import etree

from opensegur.documents.metadata import Coded
from opensegur.errors import OpenSegurError
from opensegur.identity.ins import is_ins_oid

__all__ = [
    "CDA_NS",
    "NS",
    "CdaError",
    "Identifier",
    "CdaPatient",
    "CdaAuthor",
    "CdaOrganization",
    "CdaLegalAuthenticator",
    "CdaServiceEvent",
    "CdaEncounter",
    "CdaHeader",
    "read_header",
    "parse_cda",
    "DEFAULT_MAX_BYTES",
]

CDA_NS = "urn:hl7-org:v3"
NS = {"cda": CDA_NS, "xsi": "http://www.w3.org/2001/XMLSchema-instance"}
_C = f"{{{CDA_NS}}}"
# A CDA with a PDF of a few tens of pages is a few MB once base64-encoded; 20 MB leaves room for images.
DEFAULT_MAX_BYTES = 20_000_000
# Ten times the largest ANS example (IPS-FR, 5,113 elements); embedded PDFs and images are text, not elements.
DEFAULT_MAX_ELEMENTS = 50_000
_DOCTYPE_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class CdaError(OpenSegurError, ValueError):
    """The payload is not a usable CDA R2 document. ``message_fr`` can be shown as-is to hospital staff."""

    def __init__(self, code: str, message_fr: str, xpath: str | None = None) -> None:
        super().__init__(message_fr)
        self.code = code
        self.message_fr = message_fr
        self.xpath = xpath

    def __repr__(self) -> str:
        return f"CdaError(code={self.code!r}, message_fr={self.message_fr!r}, xpath={self.xpath!r})"


@dataclass(frozen=True)
class Identifier:
    root: str
    extension: str | None = None


@dataclass
class CdaOrganization:
    ids: list[Identifier] = field(default_factory=list)
    name: str | None = None
    standard_industry_class: Coded | None = None


@dataclass
class CdaPatient:
    ins_matricule: str | None = None
    ins_oid: str | None = None
    other_ids: list[Identifier] = field(default_factory=list)
    birth_family: str | None = None
    used_family: str | None = None
    given_names: list[str] = field(default_factory=list)  # all birth first names, in order
    first_given: str | None = None  # given qualifier="BR" (first birth first name) when present
    birth_time: str | None = None
    gender: str | None = None
    birthplace_county: str | None = None  # COG code of the birthplace
    birthplace_city: str | None = None


@dataclass
class CdaAuthor:
    time: str | None = None
    ids: list[Identifier] = field(default_factory=list)
    specialty: Coded | None = None
    family: str | None = None
    given: str | None = None
    prefix: str | None = None
    function_code: Coded | None = None
    organization: CdaOrganization | None = None
    device_name: str | None = None  # assignedAuthoringDevice/softwareName for a system author


@dataclass
class CdaLegalAuthenticator:
    time: str | None = None
    ids: list[Identifier] = field(default_factory=list)
    family: str | None = None
    given: str | None = None
    specialty: Coded | None = None


@dataclass
class CdaServiceEvent:
    code: Coded | None = None
    low: str | None = None
    high: str | None = None
    practice_setting: Coded | None = (
        None  # first performer's representedOrganization/standardIndustryClassCode
    )
    performer_ids: list[Identifier] = field(default_factory=list)


@dataclass
class CdaEncounter:
    ids: list[Identifier] = field(default_factory=list)
    low: str | None = None
    high: str | None = None
    facility_type: Coded | None = None  # location/healthCareFacility/code


@dataclass
class CdaHeader:
    id: Identifier
    set_id: Identifier | None
    version_number: int | None
    code: Coded | None
    title: str | None
    effective_time: str | None
    confidentiality: Coded | None
    language_code: str | None
    template_ids: list[Identifier]
    patient: CdaPatient
    authors: list[CdaAuthor]
    custodian: CdaOrganization | None
    legal_authenticator: CdaLegalAuthenticator | None
    service_events: list[CdaServiceEvent]
    encounter: CdaEncounter | None
    replaced_document: Identifier | None  # relatedDocument[@typeCode='RPLC']/parentDocument/id
    body_kind: Literal["nonXMLBody", "structuredBody", "none"]
    media_type: str | None = None
    representation: str | None = None

    @property
    def level(self) -> int:
        """CI-SIS level: 1 for a non-structured body, 3 for a structured one."""
        return 3 if self.body_kind == "structuredBody" else 1

    @property
    def template_roots(self) -> list[str]:
        return [t.root for t in self.template_ids]

    @property
    def service_event(self) -> CdaServiceEvent | None:
        return self.service_events[0] if self.service_events else None


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    value = " ".join("".join(el.itertext()).split())
    return value or None


def _ident(el: etree._Element | None) -> Identifier | None:
    if el is None or not el.get("root"):
        return None
    return Identifier(el.get("root", "").strip(), (el.get("extension") or "").strip() or None)


def _idents(parent: etree._Element | None, path: str = "cda:id") -> list[Identifier]:
    if parent is None:
        return []
    return [i for i in (_ident(e) for e in parent.findall(path, NS)) if i is not None]


def _coded(el: etree._Element | None) -> Coded | None:
    if el is None or not el.get("code"):
        return None
    return Coded(el.get("code", ""), el.get("codeSystem", ""), el.get("displayName", ""))


def _ts(el: etree._Element | None) -> str | None:
    return el.get("value") if el is not None and el.get("value") else None


def _organization(el: etree._Element | None) -> CdaOrganization | None:
    if el is None:
        return None
    return CdaOrganization(
        _idents(el),
        _text(el.find("cda:name", NS)),
        _coded(el.find("cda:standardIndustryClassCode", NS)),
    )


def _interval(el: etree._Element | None) -> tuple[str | None, str | None]:
    if el is None:
        return None, None
    if el.get("value"):  # a single TS stands for the start
        return el.get("value"), None
    return _ts(el.find("cda:low", NS)), _ts(el.find("cda:high", NS))


def _read_patient(root: etree._Element) -> CdaPatient:
    role = root.find("cda:recordTarget/cda:patientRole", NS)
    result = CdaPatient()
    if role is None:
        return result
    for ident in _idents(role):
        if is_ins_oid(ident.root) and ident.extension and result.ins_matricule is None:
            result.ins_matricule, result.ins_oid = ident.extension, ident.root
        else:
            result.other_ids.append(ident)
    patient = role.find("cda:patient", NS)
    if patient is None:
        return result
    names = patient.findall("cda:name", NS)
    families = [f for n in names for f in n.findall("cda:family", NS)]
    birth = [f for f in families if "BR" in (f.get("qualifier") or "").split()]
    used = [f for f in families if "CL" in (f.get("qualifier") or "").split()]
    result.birth_family = _text(birth[0] if birth else (families[0] if families else None))
    result.used_family = _text(used[0]) if used else None
    givens = [g for n in names for g in n.findall("cda:given", NS)]
    # CI-SIS: one given without qualifier holds all birth first names; given@qualifier=BR holds the first one.
    plain = [_text(g) for g in givens if not g.get("qualifier")]
    first = [_text(g) for g in givens if "BR" in (g.get("qualifier") or "").split()]
    result.given_names = [g for g in plain if g]
    result.first_given = first[0] if first else None
    if not result.given_names and result.first_given:
        result.given_names = [result.first_given]
    result.birth_time = _ts(patient.find("cda:birthTime", NS))
    gender = patient.find("cda:administrativeGenderCode", NS)
    result.gender = gender.get("code") if gender is not None else None
    addr = patient.find("cda:birthplace/cda:place/cda:addr", NS)
    if addr is not None:
        result.birthplace_county = _text(addr.find("cda:county", NS))
        result.birthplace_city = _text(addr.find("cda:city", NS))
    return result


def _person_names(el: etree._Element | None) -> tuple[str | None, str | None, str | None]:
    if el is None:
        return None, None, None
    name = el.find("cda:name", NS)
    if name is None:
        return None, None, None
    return (
        _text(name.find("cda:family", NS)),
        _text(name.find("cda:given", NS)),
        _text(name.find("cda:prefix", NS)),
    )


def _read_author(el: etree._Element) -> CdaAuthor:
    assigned = el.find("cda:assignedAuthor", NS)
    family, given, prefix = _person_names(
        assigned.find("cda:assignedPerson", NS) if assigned is not None else None
    )
    return CdaAuthor(
        time=_ts(el.find("cda:time", NS)),
        ids=_idents(assigned),
        specialty=_coded(assigned.find("cda:code", NS)) if assigned is not None else None,
        family=family,
        given=given,
        prefix=prefix,
        function_code=_coded(el.find("cda:functionCode", NS)),
        organization=_organization(assigned.find("cda:representedOrganization", NS))
        if assigned is not None
        else None,
        device_name=_text(assigned.find("cda:assignedAuthoringDevice/cda:softwareName", NS))
        if assigned is not None
        else None,
    )


def read_header(root: etree._Element) -> CdaHeader:
    """Read the header of a parsed ClinicalDocument. Raises CdaError when it is not one or has no id."""
    if root.tag != f"{_C}ClinicalDocument":
        raise CdaError(
            "CDA_ROOT",
            f"L'élément racine doit être ClinicalDocument dans l'espace de noms {CDA_NS} "
            f"(trouvé : {etree.QName(root).localname if isinstance(root.tag, str) else '?'})",
            "/",
        )
    doc_id = _ident(root.find("cda:id", NS))
    if doc_id is None:
        raise CdaError(
            "CDA_ID_MISSING",
            "Identifiant du document absent (ClinicalDocument/id@root obligatoire)",
            "/cda:ClinicalDocument/cda:id",
        )
    version = root.find("cda:versionNumber", NS)
    try:
        version_number = int(version.get("value", "")) if version is not None else None
    except ValueError:
        version_number = None
    language = root.find("cda:languageCode", NS)

    la_el = root.find("cda:legalAuthenticator", NS)
    legal: CdaLegalAuthenticator | None = None
    if la_el is not None:
        entity = la_el.find("cda:assignedEntity", NS)
        family, given, _ = _person_names(
            entity.find("cda:assignedPerson", NS) if entity is not None else None
        )
        legal = CdaLegalAuthenticator(
            _ts(la_el.find("cda:time", NS)),
            _idents(entity),
            family,
            given,
            _coded(entity.find("cda:code", NS)) if entity is not None else None,
        )

    events: list[CdaServiceEvent] = []
    for se in root.findall("cda:documentationOf/cda:serviceEvent", NS):
        low, high = _interval(se.find("cda:effectiveTime", NS))
        performer = se.find("cda:performer/cda:assignedEntity", NS)
        org = (
            _organization(performer.find("cda:representedOrganization", NS))
            if performer is not None
            else None
        )
        events.append(
            CdaServiceEvent(
                _coded(se.find("cda:code", NS)),
                low,
                high,
                org.standard_industry_class if org else None,
                _idents(performer),
            )
        )

    encounter: CdaEncounter | None = None
    enc = root.find("cda:componentOf/cda:encompassingEncounter", NS)
    if enc is not None:
        low, high = _interval(enc.find("cda:effectiveTime", NS))
        encounter = CdaEncounter(
            _idents(enc), low, high, _coded(enc.find("cda:location/cda:healthCareFacility/cda:code", NS))
        )

    replaced = None
    for rel in root.findall("cda:relatedDocument", NS):
        if rel.get("typeCode") == "RPLC":
            replaced = _ident(rel.find("cda:parentDocument/cda:id", NS))
            break

    body_kind: Literal["nonXMLBody", "structuredBody", "none"] = "none"
    media_type = representation = None
    if root.find("cda:component/cda:structuredBody", NS) is not None:
        body_kind = "structuredBody"
    else:
        text = root.find("cda:component/cda:nonXMLBody/cda:text", NS)
        if text is not None:
            body_kind = "nonXMLBody"
            media_type, representation = text.get("mediaType"), text.get("representation")

    return CdaHeader(
        id=doc_id,
        set_id=_ident(root.find("cda:setId", NS)),
        version_number=version_number,
        code=_coded(root.find("cda:code", NS)),
        title=_text(root.find("cda:title", NS)),
        effective_time=_ts(root.find("cda:effectiveTime", NS)),
        confidentiality=_coded(root.find("cda:confidentialityCode", NS)),
        language_code=language.get("code") if language is not None else None,
        template_ids=_idents(root, "cda:templateId"),
        patient=_read_patient(root),
        authors=[_read_author(a) for a in root.findall("cda:author", NS)],
        custodian=_organization(
            root.find("cda:custodian/cda:assignedCustodian/cda:representedCustodianOrganization", NS)
        ),
        legal_authenticator=legal,
        service_events=events,
        encounter=encounter,
        replaced_document=replaced,
        body_kind=body_kind,
        media_type=media_type,
        representation=representation,
    )


def _parser() -> etree.XMLParser:
    # huge_tree: a base64 PDF is one text node larger than libxml2's default 10 MB limit.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=True
    )


def parse_untrusted(
    raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> etree._Element:
    """Parse untrusted XML bytes the way opensegur.transport.soap.safe_parse does, with CdaError codes.

    ``max_elements`` bounds what validation and every reader after it will walk: a 1 MB document of 100,000 empty
    elements costs the schematrons minutes.
    """
    if not isinstance(raw, bytes | bytearray):
        raise CdaError("XML_NOT_WELL_FORMED", "Le document doit être fourni en octets")
    if len(raw) > max_bytes:
        raise CdaError("CDA_TOO_LARGE", f"Document trop volumineux ({len(raw)} octets > {max_bytes})")
    if not raw.strip():
        raise CdaError("XML_NOT_WELL_FORMED", "Document vide")
    if _DOCTYPE_RE.search(bytes(raw[:4096])) or b"<!ENTITY" in raw:
        raise CdaError("XML_UNSAFE", "Document refusé : déclarations DOCTYPE/ENTITY interdites")
    try:
        root = etree.fromstring(bytes(raw), parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise CdaError("XML_NOT_WELL_FORMED", f"XML mal formé : {exc}", f"ligne {exc.lineno}") from exc
    docinfo = root.getroottree().docinfo
    # UTF-16 input escapes the byte scan above; the parsed tree still tells whether a DTD was there.
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise CdaError("XML_UNSAFE", "Document refusé : déclarations DOCTYPE/ENTITY interdites")
    for count, node in enumerate(root.iter(), start=1):
        if isinstance(node, etree._Entity):
            raise CdaError("XML_UNSAFE", "Document refusé : références d'entités interdites")
        if count > max_elements:
            raise CdaError(
                "CDA_TOO_MANY_ELEMENTS",
                f"Document refusé : plus de {max_elements} éléments XML (les documents CI-SIS en comptent "
                "quelques milliers)",
            )
    return root


def parse_cda(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[etree._Element, CdaHeader]:
    """Parse untrusted CDA bytes and read the header."""
    root = parse_untrusted(raw, max_bytes)
    return root, read_header(root)
