"""CI-SIS value sets (JDV) loaded from the vendored ANS files, so nobody types codes by hand.

The JDV files are IHE SVS ``RetrieveValueSetResponse`` documents (``cisis/jeuxDeValeurs/*.xml``). The kit does not
ship the XDS-only value sets (J06 classCode, J10 formatCode, J59 contentTypeCode, J61/J65 DMP subsets) nor the
ANS association tables (ASS_X04 typeCode→classCode, ASS_A11 template→formatCode, ASS_A12 mediaType→formatCode).
The few entries of those the platform needs are typed below, each with its source, and must be replaced by the
NOS exports when they are vendored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lxml import etree

from opensegur.documents.metadata import Coded

__all__ = [
    "CISIS_DIR",
    "JDV_DIR",
    "ValueSet",
    "ValueSets",
    "load_value_set",
    "value_sets",
    "JDV_TYPE_CODE",
    "JDV_HEALTHCARE_FACILITY",
    "JDV_PRACTICE_SETTING",
    "JDV_CONFIDENTIALITY",
    "JDV_AUTHOR_SPECIALTY",
    "JDV_REFERENCE_ID_TYPES_DMP",
    "CLASS_CODES",
    "CLASS_CODE_SCHEME",
    "class_code_for_type",
    "format_code_for_media_type",
    "format_code_for_templates",
    "content_type_code_for_patient_class",
    "VISIBILITY_SCHEME",
    "VISIBILITY_CODES",
]

CISIS_DIR = Path(__file__).resolve().parent / "cisis"
JDV_DIR = CISIS_DIR / "jeuxDeValeurs"
_SVS = "{urn:ihe:iti:svs:2008}"

# File stems of the JDV the XDS mapping uses (all present in the vendored kit).
JDV_AUTHOR_SPECIALTY = "JDV_J01_XdsAuthorSpecialty_CISIS"
JDV_HEALTHCARE_FACILITY = "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS"
JDV_PRACTICE_SETTING = "JDV_J04_XdsPracticeSettingCode_CISIS"
JDV_TYPE_CODE = "JDV_J07_XdsTypeCode_CISIS"
JDV_CONFIDENTIALITY = "JDV_J08_XdsConfidentialityCode_CISIS"
JDV_REFERENCE_ID_TYPES_DMP = "JDV_J231_XdsTypesIdentifiantsReferenceId_DMP"


@dataclass(frozen=True)
class ValueSet:
    oid: str
    name: str
    codes: dict[str, Coded] = field(default_factory=dict)
    revision: str = ""

    def __contains__(self, code: object) -> bool:
        return code in self.codes

    def get(self, code: str, scheme: str | None = None) -> Coded | None:
        """The concept for ``code``; with ``scheme``, only if its code system matches too."""
        concept = self.codes.get(code)
        if concept is None or (scheme is not None and concept.scheme != scheme):
            return None
        return concept


def _parse_svs(path: Path) -> ValueSet:
    # Vendored package data, not untrusted input; still no network and no entity expansion.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.parse(str(path), parser).getroot()
    vs = root.find(f"{_SVS}ValueSet")
    if vs is None:
        raise ValueError(f"{path.name}: not an IHE SVS value set")
    codes: dict[str, Coded] = {}
    for concept in vs.iter(f"{_SVS}Concept"):
        code = concept.get("code")
        if code and code not in codes:
            codes[code] = Coded(code, concept.get("codeSystem", ""), concept.get("displayName", ""))
    return ValueSet(vs.get("id", ""), path.stem, codes, vs.get("revisionDate", ""))


class ValueSets:
    """Registry of the JDV files in a folder, addressed by file stem or by OID."""

    def __init__(self, directory: Path = JDV_DIR) -> None:
        self._dir = directory
        self._by_stem = {p.stem: p for p in sorted(directory.glob("*.xml")) if p.stat().st_size > 0}
        self._by_oid: dict[str, str] | None = None
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self._by_stem)

    def _oid_index(self) -> dict[str, str]:
        with self._lock:
            if self._by_oid is None:
                index: dict[str, str] = {}
                for stem, path in self._by_stem.items():
                    # The id attribute sits in the first bytes; parsing 500 files fully would cost ~1 s.
                    for _event, elem in etree.iterparse(str(path), events=("start",), tag=f"{_SVS}ValueSet"):
                        index.setdefault(elem.get("id", ""), stem)
                        break
                self._by_oid = index
            return self._by_oid

    def path(self, name_or_oid: str) -> Path:
        stem = name_or_oid.removesuffix(".xml")
        if stem in self._by_stem:
            return self._by_stem[stem]
        by_oid = self._oid_index().get(name_or_oid)
        if by_oid is not None:
            return self._by_stem[by_oid]
        raise KeyError(f"unknown JDV: {name_or_oid}")

    def get(self, name_or_oid: str) -> ValueSet:
        return _load_path(self.path(name_or_oid))


@lru_cache(maxsize=256)
def _load_path(path: Path) -> ValueSet:
    return _parse_svs(path)


@lru_cache(maxsize=1)
def value_sets() -> ValueSets:
    return ValueSets()


def load_value_set(name_or_oid: str) -> ValueSet:
    """A vendored JDV by file stem (``"JDV_J07_XdsTypeCode_CISIS"``) or OID (``"1.2.250.1.213.1.1.5.471"``)."""
    return value_sets().get(name_or_oid)


# --- XDS value sets absent from the kit ---------------------------------------------------------------------------

# JDV_J06_XdsClassCode_CISIS (1.2.250.1.213.1.1.5.462), code system TRE_A03 ClasseDocument; codes and labels from
# the ANS terminology IG page of J06, as listed in reference/digests/standards.md §2.5.
CLASS_CODE_SCHEME = "1.2.250.1.213.1.1.4.1"
CLASS_CODES: dict[str, Coded] = {
    code: Coded(code, CLASS_CODE_SCHEME, label)
    for code, label in (
        ("10", "Compte rendu"),
        ("11", "Synthèse"),
        ("31", "Imagerie médicale"),
        ("42", "Prescription"),
        ("43", "Dispensation"),
        ("44", "Plan de soins, protocole de soins"),
        ("45", "Traitement administré"),
        ("52", "Certificat, déclaration"),
        ("60", "Données de remboursement"),
        ("90", "Document déposé par le patient"),
        ("95", "Document de gestion"),
        ("99", "Document technique"),
    )
}

# ASS_X04-CorrespondanceType-Classe-CISIS is not vendored; only the types whose class we could source are listed.
# 18748-4 → 10: ANS DRIM-M proof of concept (reference/digests/imaging.md §1.8, CR built with class 10);
# 87273-9 → 10: ANS DMP kit vaccination-note builder XDSb_CVA (standards.md §1.2); 11502-2 → 10 and 11490-0 → 10:
# compte-rendu family of J07 labels ("CR d'examens biologiques", "Lettre de liaison à la sortie"), to be checked
# against ASS_X04; IMG-KOS → 31 (imaging.md §1.8).
_TYPE_TO_CLASS: dict[str, str] = {
    "18748-4": "10",
    "11502-2": "10",
    "87273-9": "10",
    "11490-0": "10",
    "34874-8": "10",
    "11488-4": "10",
    "34112-3": "10",
    # 15508-5 (CR d'accouchement) is a compte rendu; 57833-6 (prescription de sortie) belongs to TRE_A03's
    # "Prescription" class 42: both inferred from the J07 and TRE_A03 labels, to check against ASS_X04.
    "15508-5": "10",
    "57833-6": "42",
    "IMG-KOS": "31",
}


def class_code_for_type(type_code: str) -> Coded | None:
    """classCode of an XDS typeCode per ASS_X04 (known subset), or None when the pair is not sourced."""
    class_code = _TYPE_TO_CLASS.get(type_code)
    return CLASS_CODES[class_code] if class_code else None


# TRE_A11 IheFormatCode and TRE_A06 FormatCodeComplementaire code systems (JDV_J10, 1.2.250.1.213.1.1.5.465).
_IHE_FORMAT_SCHEME = "1.3.6.1.4.1.19376.1.2.3"
_ANS_FORMAT_SCHEME = "1.2.250.1.213.1.1.4.2.282"

# ASS_A12 mediaType of a CDA N1 body → formatCode (standards.md §2.3, ANS IG terminologie ASS_12 JSON).
_MEDIA_TO_FORMAT: dict[str, Coded] = {
    "application/pdf": Coded(
        "urn:ihe:iti:xds-sd:pdf:2008", _IHE_FORMAT_SCHEME, "Document à corps non structuré en Pdf/A-1"
    ),
    "text/plain": Coded(
        "urn:ihe:iti:xds-sd:text:2008", _IHE_FORMAT_SCHEME, "Document à corps non structuré en texte brut"
    ),
    "text/rtf": Coded(
        "urn:ihe:iti-fr:xds-sd:rtf:2010", _IHE_FORMAT_SCHEME, "Document à corps non structuré en format rtf"
    ),
    "image/jpeg": Coded(
        "urn:ihe:iti-fr:xds-sd:jpeg:2010", _IHE_FORMAT_SCHEME, "Document à corps non structuré en format jpeg"
    ),
    "image/tiff": Coded(
        "urn:ihe:iti-fr:xds-sd:tiff:2010", _IHE_FORMAT_SCHEME, "Document à corps non structuré en format tiff"
    ),
}

# ASS_A11 document templateId → formatCode (standards.md §2.4 table, labels from the J10 JSON of the ANS IG).
_TEMPLATE_TO_FORMAT: dict[str, Coded] = {
    "1.2.250.1.213.1.1.1.29": Coded(
        "urn:asip:ci-sis:ldl-ses:2017",
        _ANS_FORMAT_SCHEME,
        "Lettre de Liaison à la sortie de l'établissement de santé",
    ),
    "1.2.250.1.213.1.1.1.21": Coded(
        "urn:asip:ci-sis:ldl-ees:2017",
        _ANS_FORMAT_SCHEME,
        "Lettre de Liaison à l'entrée d'un établissement de santé",
    ),
    "1.2.250.1.213.1.1.1.45": Coded(
        "urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013",
        _IHE_FORMAT_SCHEME,
        "Compte-rendu d'imagerie médicale",
    ),
    "1.3.6.1.4.1.19376.1.3.3": Coded(
        "urn:ihe:lab:xd-lab:2008", _IHE_FORMAT_SCHEME, "Compte rendu structuré d'examens de biologie médicale"
    ),
    "1.2.250.1.213.1.1.1.46": Coded(
        "urn:asip:ci-sis:vac-note:2021", _ANS_FORMAT_SCHEME, "Note de vaccination"
    ),
    "1.2.250.1.213.1.1.1.37": Coded(
        "urn:asip:ci-sis:vac:2019", _ANS_FORMAT_SCHEME, "Historique des vaccinations"
    ),
}


def format_code_for_media_type(media_type: str) -> Coded | None:
    return _MEDIA_TO_FORMAT.get(media_type.split(";")[0].strip().lower())


def format_code_for_templates(template_ids: list[str] | tuple[str, ...]) -> Coded | None:
    """formatCode of a structured (N3) CDA from its document templateIds; the most specific one wins."""
    # ANS templates (1.2.250…) are checked first: a VAC document also carries the IHE immunization template.
    for tid in sorted(template_ids, key=lambda t: not t.startswith("1.2.250.1.213.1.1.1.")):
        if tid in _TEMPLATE_TO_FORMAT:
            return _TEMPLATE_TO_FORMAT[tid]
    return None


# JDV_J59-ContentTypeCode-DMP, TRE_R209 TypeActivite; PV1-2 → code per the HL7v2 volet mapping.md ("Proposition
# de mapping sur le PV1-2: I => 03; O => 07; R => 19; N => 97; E => 07").
_CONTENT_TYPE_SCHEME = "1.2.250.1.213.2.2"
_PATIENT_CLASS_TO_CONTENT_TYPE = {"I": "03", "O": "07", "E": "07", "R": "19", "N": "97"}


def content_type_code_for_patient_class(patient_class: str) -> Coded | None:
    code = _PATIENT_CLASS_TO_CONTENT_TYPE.get(patient_class.strip().upper())
    return Coded(code, _CONTENT_TYPE_SCHEME) if code else None


# TRE_A07 StatutVisibiliteDocument, carried by JDV_J08 next to the HL7 confidentiality codes.
VISIBILITY_SCHEME = "1.2.250.1.213.1.1.4.13"
VISIBILITY_CODES = frozenset({"MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"})
