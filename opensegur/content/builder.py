"""Building a CDA R2 level 1 document (CI-SIS structuration minimale + IHE XDS-SD) around a PDF.

The header follows the ANS example ``DOC_NON_STRUCTURE_CDA-R2-N1.xml``; every code is taken from the vendored JDV
so a typo fails here rather than at the DMP. The output is checked in the tests against the CDA XSD and the
structuration minimale schematron, which must report nothing at all.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from lxml import etree

from opensegur.content.cda import CDA_NS, CdaError, Identifier
from opensegur.content.jdv import (
    JDV_AUTHOR_SPECIALTY,
    JDV_CONFIDENTIALITY,
    JDV_HEALTHCARE_FACILITY,
    JDV_PRACTICE_SETTING,
    JDV_TYPE_CODE,
    load_value_set,
)
from opensegur.documents.metadata import Coded
from opensegur.identity.ins import Ins
from opensegur.identity.professionals import OID_IDNAT_PS, OID_IDNAT_STRUCT

__all__ = [
    "N1Patient",
    "N1Professional",
    "N1Organization",
    "N1Encounter",
    "N1Input",
    "PdfInfo",
    "check_pdf",
    "build_n1",
]

_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_PARIS = ZoneInfo("Europe/Paris")
_GENDER_SYSTEM = "2.16.840.1.113883.5.1"
_GENDER_LABELS = {"M": "Masculin", "F": "Féminin", "U": "Inconnu"}


@dataclass
class N1Patient:
    ins: Ins
    birth_family: str
    given_names: list[str]  # all birth first names, the first one first
    birth_date: str  # YYYYMMDD
    gender: str  # M / F / U
    birthplace_cog: str  # INSEE COG code of the birthplace (99xxx abroad)
    ipp: str | None = None
    ipp_authority_oid: str | None = None
    used_family: str | None = None
    used_given: str | None = None


@dataclass
class N1Professional:
    idnat_ps: str  # e.g. "8" + RPPS
    family: str
    given: str
    specialty: str  # JDV_J01 code, e.g. "G15_10/SM26"


@dataclass
class N1Organization:
    idnat_struct: str  # e.g. "1" + FINESS
    name: str


@dataclass
class N1Encounter:
    start: datetime
    facility_type: str  # JDV_J02 code, e.g. "SA01"
    end: datetime | None = None
    stay_id: Identifier | None = None


@dataclass
class N1Input:
    document_id: Identifier
    set_id: Identifier
    version: int
    type_code: str  # JDV_J07 code
    title: str
    effective_time: datetime
    patient: N1Patient
    author: N1Professional
    author_time: datetime
    organization: N1Organization  # author's structure, custodian and serviceEvent performer's organisation
    encounter: N1Encounter
    service_start: datetime
    practice_setting: str  # JDV_J04 code, e.g. "ETABLISSEMENT"
    service_stop: datetime | None = None
    confidentiality: str = "N"
    legal_authenticator: N1Professional | None = None  # defaults to the author
    legal_time: datetime | None = None
    replaces: Identifier | None = None  # parent document id when this version replaces another (RPLC)
    language: str = "fr-FR"
    extra_patient_ids: list[Identifier] = field(default_factory=list)


@dataclass(frozen=True)
class PdfInfo:
    pages: int
    pdfa_part: str | None  # "1", "2"… from the XMP pdfaid:part claim, None when the file claims no PDF/A


def check_pdf(pdf: bytes) -> PdfInfo:
    """Refuse anything but a parsable PDF; report the PDF/A level the file *claims* (not verified)."""
    if not pdf.startswith(b"%PDF-"):
        raise CdaError("PDF_INVALID", "Le fichier n'est pas un PDF (signature %PDF- absente)")
    if b"%%EOF" not in pdf[-2048:]:
        raise CdaError("PDF_INVALID", "PDF tronqué : marqueur de fin %%EOF absent")
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(pdf), strict=False)
        pages = len(reader.pages)
        xmp = reader.xmp_metadata
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise CdaError("PDF_INVALID", f"PDF illisible : {exc}") from exc
    if pages == 0:
        raise CdaError("PDF_INVALID", "PDF sans aucune page")
    part = None
    if xmp is not None:
        node = xmp.rdf_root.getElementsByTagNameNS("http://www.aiim.org/pdfa/ns/id/", "part")
        attr = xmp.rdf_root.getElementsByTagName("rdf:Description")
        if node and node[0].firstChild is not None:
            part = node[0].firstChild.nodeValue
        else:
            for desc in attr:
                value = desc.getAttributeNS("http://www.aiim.org/pdfa/ns/id/", "part")
                if value:
                    part = value
                    break
    return PdfInfo(pages, part)


def _ts(value: datetime) -> str:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=_PARIS)
    return aware.strftime("%Y%m%d%H%M%S%z")


def _code(jdv: str, code: str, label: str) -> Coded:
    concept = load_value_set(jdv).get(code)
    if concept is None:
        raise CdaError("CODE_UNKNOWN", f"{label} « {code} » absent du jeu de valeurs {jdv}")
    return concept


class _Writer:
    def __init__(self) -> None:
        self.root = etree.Element(f"{{{CDA_NS}}}ClinicalDocument", nsmap={None: CDA_NS, "xsi": _XSI})

    @staticmethod
    def el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
        node = etree.SubElement(
            parent, f"{{{CDA_NS}}}{tag}", {k: v for k, v in attrs.items() if v is not None}
        )
        if text is not None:
            node.text = text
        return node

    def coded(self, parent: etree._Element, tag: str, c: Coded) -> etree._Element:
        return self.el(parent, tag, code=c.code, displayName=c.display, codeSystem=c.scheme)

    def ident(self, parent: etree._Element, ident: Identifier, tag: str = "id") -> etree._Element:
        attrs = {"root": ident.root}
        if ident.extension:
            attrs["extension"] = ident.extension
        return self.el(parent, tag, **attrs)

    def person(self, parent: etree._Element, tag: str, pro: N1Professional) -> None:
        name = self.el(self.el(parent, tag), "name")
        self.el(name, "family", pro.family)
        self.el(name, "given", pro.given)

    def organization(self, parent: etree._Element, tag: str, org: N1Organization) -> etree._Element:
        node = self.el(parent, tag)
        self.el(node, "id", root=OID_IDNAT_STRUCT, extension=org.idnat_struct)
        self.el(node, "name", org.name)
        return node


def build_n1(data: N1Input, pdf: bytes) -> bytes:
    """CDA R2 N1 bytes (UTF-8, with XML declaration) embedding ``pdf`` in base64."""
    check_pdf(pdf)
    type_code = _code(JDV_TYPE_CODE, data.type_code, "Type de document")
    confidentiality = _code(JDV_CONFIDENTIALITY, data.confidentiality, "Confidentialité")
    if confidentiality.scheme != "2.16.840.1.113883.5.25":
        raise CdaError(
            "CODE_UNKNOWN",
            "La confidentialité CDA doit être N, R ou V (les masquages sont des métadonnées XDS)",
        )
    specialty = _code(JDV_AUTHOR_SPECIALTY, data.author.specialty, "Spécialité de l'auteur")
    facility = _code(JDV_HEALTHCARE_FACILITY, data.encounter.facility_type, "Cadre d'exercice")
    practice = _code(JDV_PRACTICE_SETTING, data.practice_setting, "Secteur d'activité")
    p = data.patient
    if not p.given_names:
        raise CdaError("PATIENT_INCOMPLETE", "Prénom(s) de naissance du patient absent(s)")
    if p.gender not in _GENDER_LABELS:
        raise CdaError("PATIENT_INCOMPLETE", f"Sexe « {p.gender} » invalide (M, F ou U)")

    w = _Writer()
    root, el = w.root, w.el
    el(root, "realmCode", code="FR")
    el(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    for tid in ("2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1", "1.3.6.1.4.1.19376.1.2.20"):
        el(root, "templateId", root=tid)
    w.ident(root, data.document_id)
    w.coded(root, "code", type_code)
    el(root, "title", data.title)
    el(root, "effectiveTime", value=_ts(data.effective_time))
    w.coded(root, "confidentialityCode", confidentiality)
    el(root, "languageCode", code=data.language)
    w.ident(root, data.set_id, "setId")
    el(root, "versionNumber", value=str(data.version))

    role = el(el(root, "recordTarget"), "patientRole")
    el(role, "id", root=p.ins.oid, extension=p.ins.matricule)
    if p.ipp and p.ipp_authority_oid:
        el(role, "id", root=p.ipp_authority_oid, extension=p.ipp)
    for extra in data.extra_patient_ids:
        w.ident(role, extra)
    patient = el(role, "patient", classCode="PSN")
    name = el(patient, "name")
    el(name, "family", p.birth_family, qualifier="BR")
    el(name, "given", " ".join(p.given_names))
    el(name, "given", p.given_names[0].split()[0], qualifier="BR")
    if p.used_family:
        el(name, "family", p.used_family, qualifier="CL")
    if p.used_given:
        el(name, "given", p.used_given, qualifier="CL")
    el(
        patient,
        "administrativeGenderCode",
        code=p.gender,
        displayName=_GENDER_LABELS[p.gender],
        codeSystem=_GENDER_SYSTEM,
    )
    el(patient, "birthTime", value=p.birth_date)
    el(el(el(el(patient, "birthplace"), "place"), "addr"), "county", p.birthplace_cog)

    author = el(root, "author")
    el(author, "time", value=_ts(data.author_time))
    assigned = el(author, "assignedAuthor")
    el(assigned, "id", root=OID_IDNAT_PS, extension=data.author.idnat_ps)
    w.coded(assigned, "code", specialty)
    w.person(assigned, "assignedPerson", data.author)
    w.organization(assigned, "representedOrganization", data.organization)

    custodian = el(el(root, "custodian"), "assignedCustodian")
    w.organization(custodian, "representedCustodianOrganization", data.organization)

    legal_pro = data.legal_authenticator or data.author
    legal = el(root, "legalAuthenticator")
    el(legal, "time", value=_ts(data.legal_time or data.author_time))
    el(legal, "signatureCode", code="S")
    entity = el(legal, "assignedEntity")
    el(entity, "id", root=OID_IDNAT_PS, extension=legal_pro.idnat_ps)
    w.person(entity, "assignedPerson", legal_pro)

    event = el(el(root, "documentationOf"), "serviceEvent")
    times = el(event, "effectiveTime")
    el(times, "low", value=_ts(data.service_start))
    if data.service_stop is not None:
        el(times, "high", value=_ts(data.service_stop))
    performer = el(el(event, "performer", typeCode="PRF"), "assignedEntity")
    el(performer, "id", root=OID_IDNAT_PS, extension=data.author.idnat_ps)
    w.person(performer, "assignedPerson", data.author)
    org = w.organization(performer, "representedOrganization", data.organization)
    w.coded(org, "standardIndustryClassCode", practice)

    if data.replaces is not None:
        related = el(root, "relatedDocument", typeCode="RPLC")
        w.ident(el(related, "parentDocument"), data.replaces)

    enc = el(el(root, "componentOf"), "encompassingEncounter")
    if data.encounter.stay_id is not None:
        w.ident(enc, data.encounter.stay_id)
    enc_time = el(enc, "effectiveTime")
    el(enc_time, "low", value=_ts(data.encounter.start))
    if data.encounter.end is not None:
        el(enc_time, "high", value=_ts(data.encounter.end))
    facility_el = el(el(enc, "location"), "healthCareFacility")
    w.coded(facility_el, "code", facility)

    body = el(el(root, "component"), "nonXMLBody")
    el(body, "text", base64.b64encode(pdf).decode("ascii"), mediaType="application/pdf", representation="B64")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
