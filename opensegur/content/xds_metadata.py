"""XDS metadata of a CDA document, derived from its header (ANS annex "Lien entre l'en-tête CDA et les métadonnées
XDS", as tabulated in the HL7v2 volet's mapping.md "Fiche" table and in reference/digests/standards.md §1.2).

Every coded value is checked against the vendored JDV; anything mandatory that cannot be built raises
:class:`MetadataError`, which the caller reports as a blocking finding (the DMP would reject the submission).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from opensegur.content.cda import CdaAuthor, CdaHeader, CdaOrganization, Identifier
from opensegur.content.jdv import (
    JDV_AUTHOR_SPECIALTY,
    JDV_CONFIDENTIALITY,
    JDV_HEALTHCARE_FACILITY,
    JDV_PRACTICE_SETTING,
    JDV_TYPE_CODE,
    VISIBILITY_CODES,
    class_code_for_type,
    content_type_code_for_patient_class,
    format_code_for_media_type,
    format_code_for_templates,
    load_value_set,
)
from opensegur.documents.metadata import Coded, DocumentMetadata, SubmissionSetMetadata, XdsAuthor
from opensegur.errors import OpenSegurError
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins
from opensegur.identity.professionals import OID_IDNAT_PS, OID_IDNAT_STRUCT

__all__ = [
    "MetadataError",
    "document_metadata",
    "submission_set_metadata",
    "hl7_ts_to_utc",
    "cx",
    "xcn",
    "xon",
    "ENCOUNTER_ID_TYPE",
]

# Local times without an offset are French legal time: the DPIs that omit the offset are French hospitals.
_PARIS = ZoneInfo("Europe/Paris")
ENCOUNTER_ID_TYPE = "urn:ihe:iti:xds:2015:encounterId"


# An IPP authority that is a namespace rather than an OID (e.g. a FINESS) cannot go in a CX assigning authority.
_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


class MetadataError(OpenSegurError, ValueError):
    def __init__(self, code: str, message_fr: str, field: str | None = None) -> None:
        super().__init__(message_fr)
        self.code = code
        self.message_fr = message_fr
        self.field = field

    def __repr__(self) -> str:
        return f"MetadataError(code={self.code!r}, message_fr={self.message_fr!r}, field={self.field!r})"


def hl7_ts_to_utc(ts: str | None) -> str | None:
    """HL7 v3 TS (``YYYYMMDD[HH[MM[SS[.s]]]][±ZZZZ]``) → XDS DTM in UTC, keeping the precision given.

    A date alone is returned unchanged: shifting it to UTC would invent an hour and could change the day.
    """
    if not ts:
        return None
    value = ts.strip()
    offset: timezone | None = None
    for sign in ("+", "-"):
        if sign in value[8:]:
            pos = value.index(sign, 8)
            value, tz = value[:pos], value[pos + 1 :]
            if len(tz) != 4 or not tz.isdigit():
                raise ValueError(f"invalid time zone in {ts!r}")
            delta = timedelta(hours=int(tz[:2]), minutes=int(tz[2:]))
            offset = timezone(delta if sign == "+" else -delta)
            break
    value = value.split(".")[0]
    if not value.isdigit() or len(value) not in (4, 6, 8, 10, 12, 14):
        raise ValueError(f"invalid HL7 timestamp {ts!r}")
    if len(value) <= 8:
        return value
    fmt = {10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(value)]
    local = datetime.strptime(value, fmt)
    aware = local.replace(tzinfo=offset) if offset is not None else local.replace(tzinfo=_PARIS)
    return aware.astimezone(UTC).strftime(fmt)


def _esc(value: str | None) -> str:
    """Escape HL7 v2 delimiters inside a component (names may contain '&' or '^')."""
    if not value:
        return ""
    out = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    return out.replace("&", "\\T\\").replace("~", "\\R\\")


def cx(value: str, authority: str, id_type: str) -> str:
    """CX with its assigning authority: ``&<OID>&ISO`` (HD.2 + HD.3) for an OID — HL7 table 0301 keeps ISO for
    OIDs —, else the name alone in HD.1 (a namespace such as the ANS examples' ``000897406``)."""
    if _OID_RE.match(authority):
        return f"{_esc(value)}^^^&{authority}&ISO^{id_type}"
    return f"{_esc(value)}^^^{_esc(authority)}^{id_type}"


def xcn(ident: Identifier, family: str | None, given: str | None) -> str:
    # Only national PS identifiers are typed IDNPS; any other id (local, ADELI) is a local "L" identifier.
    suffix = "D^^^IDNPS" if ident.root == OID_IDNAT_PS else "L"
    ext = ident.extension or ident.root
    return f"{_esc(ext)}^{_esc(family)}^{_esc(given)}^^^^^^&{ident.root}&ISO^{suffix}"


def xon(org: CdaOrganization) -> str | None:
    name = _esc(org.name)
    for ident in org.ids:
        if ident.root == OID_IDNAT_STRUCT and ident.extension:
            return f"{name}^^^^^&{OID_IDNAT_STRUCT}&ISO^IDNST^^^{_esc(ident.extension)}"
    for ident in org.ids:
        if ident.extension:
            return f"{name}^^^^^&{ident.root}&ISO^^^^{_esc(ident.extension)}"
    return name or None


def _coded_str(c: Coded) -> str:
    return f"{_esc(c.code)}^{_esc(c.display)}^{c.scheme}"


def _in_jdv(jdv: str, coded: Coded | None, field: str, label: str) -> Coded:
    if coded is None:
        raise MetadataError(f"{field.upper()}_MISSING", f"{label} absent de l'en-tête CDA", field)
    vs = load_value_set(jdv)
    concept = vs.get(coded.code, coded.scheme)
    if concept is None:
        raise MetadataError(
            f"{field.upper()}_UNKNOWN",
            f"{label} « {coded.code} » ({coded.scheme}) absent du jeu de valeurs {vs.name}",
            field,
        )
    return concept


def _author(a: CdaAuthor) -> XdsAuthor:
    person = None
    ids = [i for i in a.ids if i.extension]
    if ids:
        ident = next((i for i in ids if i.root == OID_IDNAT_PS), ids[0])
        person = xcn(ident, a.family or a.device_name, a.given)
    institutions: tuple[str, ...] = ()
    if a.organization is not None:
        org = xon(a.organization)
        institutions = (org,) if org else ()
    specialties: tuple[str, ...] = ()
    if a.specialty is not None:
        known = load_value_set(JDV_AUTHOR_SPECIALTY).get(a.specialty.code)
        specialties = (_coded_str(known or a.specialty),)
    roles = (_coded_str(a.function_code),) if a.function_code else ()
    return XdsAuthor(person=person, institutions=institutions, roles=roles, specialties=specialties)


def document_metadata(
    header: CdaHeader,
    *,
    ipp: str | None,
    ipp_authority_oid: str | None,
    confidentiality_flags: set[str] | frozenset[str] = frozenset(),
    mime_type: str = "text/xml",
    size: int | None = None,
    hash_sha1: str | None = None,
    stay_number: str | None = None,
    stay_authority_oid: str | None = None,
    class_code: Coded | None = None,
) -> DocumentMetadata:
    """DocumentEntry metadata from a CDA header. ``class_code`` overrides the ASS_X04 lookup for types whose
    class the platform does not know yet."""
    unique_id = header.id.root if not header.id.extension else f"{header.id.root}^{header.id.extension}"

    p = header.patient
    if not p.ins_matricule or not p.ins_oid:
        raise MetadataError(
            "PATIENT_INS_MISSING",
            "INS du patient absent : recordTarget/patientRole/id avec un OID INS obligatoire pour le DMP",
            "patientId",
        )
    try:
        ins = Ins.parse(p.ins_matricule, p.ins_oid)
    except IdentityError as exc:
        raise MetadataError("PATIENT_INS_INVALID", exc.message, "patientId") from exc
    patient_id = cx(ins.matricule, ins.oid, "NH")

    type_code = _in_jdv(JDV_TYPE_CODE, header.code, "typeCode", "Type de document (code)")
    cls = class_code or class_code_for_type(type_code.code)
    if cls is None:
        raise MetadataError(
            "CLASS_CODE_UNKNOWN",
            f"Classe XDS inconnue pour le type « {type_code.code} » ({type_code.display}) : "
            "correspondance ASS_X04 à compléter",
            "classCode",
        )

    if header.body_kind == "nonXMLBody":
        fmt = format_code_for_media_type(header.media_type or "")
    else:
        fmt = format_code_for_templates(header.template_roots)
    if fmt is None:
        raise MetadataError(
            "FORMAT_CODE_UNKNOWN",
            "formatCode non déductible : "
            + (
                f"type de contenu « {header.media_type} » non prévu pour un CDA N1"
                if header.body_kind == "nonXMLBody"
                else "aucun modèle de document CI-SIS connu parmi les templateId"
            ),
            "formatCode",
        )

    facility = _in_jdv(
        JDV_HEALTHCARE_FACILITY,
        header.encounter.facility_type if header.encounter else None,
        "healthcareFacilityTypeCode",
        "Cadre d'exercice (encompassingEncounter/location/healthCareFacility/code)",
    )
    event = header.service_event
    practice = _in_jdv(
        JDV_PRACTICE_SETTING,
        event.practice_setting if event else None,
        "practiceSettingCode",
        "Secteur d'activité (serviceEvent/performer/…/standardIndustryClassCode)",
    )

    confidentiality = [
        _in_jdv(JDV_CONFIDENTIALITY, header.confidentiality, "confidentialityCode", "Confidentialité")
    ]
    unknown_flags = set(confidentiality_flags) - VISIBILITY_CODES
    if unknown_flags:
        raise MetadataError(
            "CONFIDENTIALITY_FLAG_UNKNOWN",
            f"Indicateur de visibilité inconnu : {', '.join(sorted(unknown_flags))}",
            "confidentialityCode",
        )
    jdv_conf = load_value_set(JDV_CONFIDENTIALITY)
    confidentiality += [jdv_conf.codes[f] for f in sorted(confidentiality_flags)]

    try:
        creation_time = hl7_ts_to_utc(header.effective_time)
        start = hl7_ts_to_utc(event.low) if event else None
        stop = hl7_ts_to_utc(event.high) if event else None
    except ValueError as exc:
        raise MetadataError("TIME_INVALID", f"Date HL7 invalide : {exc}", "creationTime") from exc
    if creation_time is None:
        raise MetadataError("CREATION_TIME_MISSING", "effectiveTime du document absent", "creationTime")
    if start is None:
        raise MetadataError(
            "SERVICE_START_MISSING",
            "Date de début de l'acte absente (documentationOf/serviceEvent/effectiveTime/low)",
            "serviceStartTime",
        )

    authors = [_author(a) for a in header.authors]
    if not any(a.person or a.institutions for a in authors):
        raise MetadataError("AUTHOR_MISSING", "Aucun auteur exploitable dans l'en-tête CDA", "author")

    legal = None
    la = header.legal_authenticator
    if la is not None:
        ids = [i for i in la.ids if i.extension]
        if ids:
            ident = next((i for i in ids if i.root == OID_IDNAT_PS), ids[0])
            legal = xcn(ident, la.family, la.given)
    if legal is None:
        raise MetadataError(
            "LEGAL_AUTHENTICATOR_MISSING",
            "Responsable du document (legalAuthenticator) absent",
            "legalAuthenticator",
        )

    if ipp and ipp_authority_oid and _OID_RE.match(ipp_authority_oid):
        source_patient_id = cx(ipp, ipp_authority_oid, "PI")
    else:
        local = next((i for i in p.other_ids if i.extension), None)
        # The annex allows the INS itself when the producer has no local identifier.
        source_patient_id = cx(local.extension or "", local.root, "PI") if local else patient_id

    info = []
    if p.birth_family or p.given_names:
        info.append(f"PID-5|{_esc(p.birth_family)}^{_esc(' '.join(p.given_names))}^^^^^L")
    if p.birth_time:
        info.append(f"PID-7|{p.birth_time[:8]}")
    if p.gender:
        info.append(f"PID-8|{p.gender}")

    reference_ids = []
    if stay_number:
        authority = stay_authority_oid or next(
            (
                i.root
                for i in (header.encounter.ids if header.encounter else [])
                if i.extension == stay_number
            ),
            ipp_authority_oid,
        )
        if not authority:
            raise MetadataError(
                "STAY_AUTHORITY_MISSING",
                "Autorité d'affectation du numéro de séjour inconnue",
                "referenceIdList",
            )
        reference_ids.append(cx(stay_number, authority, ENCOUNTER_ID_TYPE))

    return DocumentMetadata(
        unique_id=unique_id,
        patient_id=patient_id,
        mime_type=mime_type,
        class_code=cls,
        type_code=type_code,
        format_code=fmt,
        healthcare_facility_type_code=facility,
        practice_setting_code=practice,
        confidentiality_codes=confidentiality,
        creation_time=creation_time,
        language_code=header.language_code or "fr-FR",
        title=header.title or "",
        authors=authors,
        legal_authenticator=legal,
        service_start_time=start,
        service_stop_time=stop,
        source_patient_id=source_patient_id,
        source_patient_info=info,
        reference_ids=reference_ids,
        size=size,
        hash_sha1=hash_sha1,
    )


def submission_set_metadata(
    document: DocumentMetadata,
    *,
    unique_id: str,
    source_id: str,
    patient_class: str | None = None,
    content_type_code: Coded | None = None,
    submission_time: datetime | None = None,
    title: str = "",
) -> SubmissionSetMetadata:
    """SubmissionSet for one document: same patient, first author, contentTypeCode from PV1-2 (JDV_J59)."""
    content = content_type_code or (
        content_type_code_for_patient_class(patient_class) if patient_class else None
    )
    if content is None:
        raise MetadataError(
            "CONTENT_TYPE_MISSING",
            f"Type d'activité (contentTypeCode) non déductible de la classe de patient « {patient_class or ''} »",
            "contentTypeCode",
        )
    when = (submission_time or datetime.now(UTC)).astimezone(UTC)
    return SubmissionSetMetadata(
        unique_id=unique_id,
        source_id=source_id,
        patient_id=document.patient_id,
        content_type_code=content,
        submission_time=when.strftime("%Y%m%d%H%M%S"),
        authors=document.authors[:1],
        title=title,
    )
