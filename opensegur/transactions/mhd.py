"""IHE MHD ITI-65 "Provide Document Bundle" as profiled by the ANS (PDSm): the Bundle read into plain data, and
the FHIR answers written back (transaction-response, OperationOutcome, DocumentReference, CapabilityStatement).

Pure: no database and no HTTP. Every refusal is a ``FhirError`` with a FHIR IssueType code, a French diagnostic
and the FHIRPath of the faulty element. JSON only. The Bundle is read as plain dicts: fhir.resources models R4
only in its pydantic-v1 releases, and ITI-65 reads a few dozen elements that are checked here one by one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from opensegur.content.jdv import JDV_CONFIDENTIALITY, JDV_TYPE_CODE, VISIBILITY_SCHEME, load_value_set
from opensegur.errors import OpenSegurError
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins, is_ins_oid
from opensegur.identity.professionals import OID_IDNAT_PS, OID_IDNAT_STRUCT

__all__ = [
    "FHIR_JSON",
    "FHIR_VERSION",
    "FhirError",
    "PatientIds",
    "Person",
    "SubmittedDocument",
    "SubmissionSet",
    "ProvideBundle",
    "parse_provide_bundle",
    "xds_unique_id",
    "size_label",
    "unique_id_identifier",
    "operation_outcome",
    "transaction_response",
    "build_document_reference",
    "capability_statement",
]

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
RFC3986 = "urn:ietf:rfc:3986"
LOINC_OID = "2.16.840.1.113883.6.1"
_SYSTEM_OIDS = {
    "http://loinc.org": LOINC_OID,
    "http://terminology.hl7.org/CodeSystem/v3-Confidentiality": "2.16.840.1.113883.5.25",
    "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument": (
        VISIBILITY_SCHEME
    ),
}
SYSTEM_RPPS = "https://rpps.esante.gouv.fr"
SYSTEMS_FINESS = ("http://finess.sante.gouv.fr", "https://finess.esante.gouv.fr")
# The XDS referenceIdList type that carries the stay number (PDSm context.related slice).
ENCOUNTER_ID_TYPE = "urn:ihe:iti:xds:2015:encounterId"
PDF = "application/pdf"
CDA_MEDIA_TYPES = frozenset({"text/xml", "application/xml", "application/hl7-cda+xml"})
# v3 ActCode encounter classes → PV1-2 patient class, as the REST intake takes it.
_ENCOUNTER_CLASS = {"IMP": "I", "ACUTE": "I", "NONAC": "I", "AMB": "O", "EMER": "E"}
_ALLOWED = {
    "List",
    "DocumentReference",
    "Binary",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
}
PDSM_IG = "https://interop.esante.gouv.fr/ig/fhir/pdsm"
PDSM_DOCUMENT_REFERENCE = f"{PDSM_IG}/StructureDefinition/pdsm-comprehensive-document-reference"
MHD_RECIPIENT = "https://profiles.ihe.net/ITI/MHD/CapabilityStatement/IHE.MHD.DocumentRecipient"
_BASE64_SPACE = re.compile(rb"\s+")


class FhirError(OpenSegurError):
    """A refusal: HTTP ``status``, FHIR IssueType ``code``, French ``diagnostics``, FHIRPath ``expression``."""

    def __init__(self, status: int, code: str, diagnostics: str, expression: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.expression = expression


def _bad(code: str, diagnostics: str, expression: str | None, status: int = 422) -> FhirError:
    return FhirError(status, code, diagnostics, expression)


@dataclass(frozen=True)
class PatientIds:
    """How the subject names the patient: INS (matricule, OID) and IPPs (authority, value)."""

    ins: tuple[str, str] | None
    ipps: tuple[tuple[str, str], ...]
    expression: str


@dataclass(frozen=True)
class Person:
    """An author: a professional (idNat_PS) with the organisations the resource names."""

    idnat_ps: str | None = None
    rpps: str | None = None
    family: str | None = None
    given: str | None = None
    specialty: str | None = None
    organization_ids: tuple[str, ...] = ()
    expression: str = ""


@dataclass(frozen=True)
class SubmittedDocument:
    index: int  # entry index of the DocumentReference
    expression: str  # "Bundle.entry[i].resource"
    content_expression: str  # where the bytes were: the Binary's data or the inline attachment data
    master_identifier: str  # as an XDS uniqueId (root^extension)
    content: bytes
    content_type: str
    kind: Literal["pdf", "cda"]
    type_code: str | None
    title: str | None
    effective_time: str | None
    period_start: str | None
    period_end: str | None
    subject: PatientIds
    authors: tuple[Person, ...]
    site_hints: tuple[str, ...]  # organisation identifiers (FINESS…) that may name the site
    confidentiality: str | None
    visibility: tuple[str, ...]  # TRE_A07 codes
    replaces: tuple[Literal["id", "uid"], str] | None
    visit_number: str | None = None
    visit_authority: str | None = None
    patient_class: str | None = None
    practice_setting: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class SubmissionSet:
    index: int
    unique_id: str | None
    authors: tuple[Person, ...]


@dataclass
class ProvideBundle:
    resource_types: list[str]  # one per entry, in order: the response has one entry per request entry
    submission_set: SubmissionSet
    documents: list[SubmittedDocument] = field(default_factory=list)
    binaries: dict[int, int] = field(default_factory=dict)  # Binary entry index → DocumentReference index


# ---- small readers ------------------------------------------------------------------------------------------


def _obj(value: Any, expression: str, *, required: bool = False) -> dict[str, Any] | None:
    if value is None:
        if required:
            raise _bad("required", f"Élément obligatoire absent : {expression}", expression)
        return None
    if not isinstance(value, dict):
        raise _bad("structure", f"{expression} doit être un objet JSON", expression)
    return value


def _list(value: Any, expression: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("structure", f"{expression} doit être un tableau JSON", expression)
    return value


def _str(value: Any, expression: str, *, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _bad("required", f"Élément obligatoire absent : {expression}", expression)
        return None
    if not isinstance(value, str):
        raise _bad("structure", f"{expression} doit être une chaîne de caractères", expression)
    return value.strip()


def _oid_of(system: str | None) -> str | None:
    if not system:
        return None
    if system.startswith("urn:oid:"):
        return system[8:]
    return _SYSTEM_OIDS.get(system)


def xds_unique_id(identifier: dict[str, Any], expression: str) -> str:
    """An XDS uniqueId from a FHIR Identifier: ``urn:ietf:rfc:3986`` + ``urn:oid:R`` → R; ``urn:oid:R`` + E → R^E."""
    system = _str(identifier.get("system"), f"{expression}.system")
    value = _str(identifier.get("value"), f"{expression}.value", required=True)
    assert value is not None
    if system == RFC3986 or system is None:
        for prefix in ("urn:oid:", "urn:uuid:"):
            if value.startswith(prefix):
                return value[len(prefix) :]
        return value
    if system.startswith("urn:oid:"):
        return f"{system[8:]}^{value}"
    raise _bad(
        "value",
        f"Identifiant « {value} » : système « {system} » non pris en charge (urn:ietf:rfc:3986 ou urn:oid: attendu)",
        f"{expression}.system",
    )


def unique_id_identifier(unique_id: str) -> dict[str, str]:
    root, _, ext = unique_id.partition("^")
    if ext:
        return {"system": f"urn:oid:{root}", "value": ext}
    return {"system": RFC3986, "value": f"urn:oid:{root}"}


def size_label(n: int) -> str:
    """A byte limit as hospital staff read it."""
    return f"{n // (1024 * 1024)} Mo" if n >= 1024 * 1024 else f"{n // 1024} Ko"


def _media(value: str) -> str:
    return value.split(";")[0].strip().lower()


# ---- references -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resolved:
    resource: dict[str, Any]
    expression: str  # FHIRPath of the resolved resource
    index: int | None  # entry index when it is a Bundle entry


class _Bundle:
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.by_url: dict[str, int] = {}
        for i, entry in enumerate(entries):
            url = entry.get("fullUrl")
            if isinstance(url, str) and url:
                if url in self.by_url:
                    raise _bad(
                        "invalid", f"fullUrl « {url} » en double dans le Bundle", f"Bundle.entry[{i}].fullUrl"
                    )
                self.by_url[url] = i

    def resolve(
        self, ref: Any, expression: str, container: dict[str, Any], container_expr: str, types: set[str]
    ) -> _Resolved | None:
        """The resource a Reference points to, in the Bundle or contained; None for a logical (identifier) one."""
        ref = _obj(ref, expression, required=True)
        assert ref is not None
        target = _str(ref.get("reference"), f"{expression}.reference")
        if target is None:
            if ref.get("identifier") is None:
                raise _bad("required", f"Référence vide : {expression}", expression)
            return None
        found: _Resolved | None = None
        if target.startswith("#"):
            for k, res in enumerate(_list(container.get("contained"), f"{container_expr}.contained")):
                if isinstance(res, dict) and res.get("id") == target[1:]:
                    found = _Resolved(res, f"{container_expr}.contained[{k}]", None)
        elif target in self.by_url:
            i = self.by_url[target]
            found = _Resolved(self.entries[i]["resource"], f"Bundle.entry[{i}].resource", i)
        if found is None:
            raise _bad(
                "not-found",
                f"Référence « {target} » non résolue : la ressource doit figurer dans le Bundle "
                "(fullUrl) ou être contenue (#id)",
                f"{expression}.reference",
            )
        kind = found.resource.get("resourceType")
        if kind not in types:
            raise _bad(
                "invalid",
                f"Référence « {target} » vers une ressource {kind} : {' ou '.join(sorted(types))} attendu",
                f"{expression}.reference",
            )
        return found


# ---- patients and authors ---------------------------------------------------------------------------------------


def _patient_ids(identifiers: list[tuple[Any, str]]) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    ins: tuple[str, str] | None = None
    ipps: list[tuple[str, str]] = []
    for ident, path in identifiers:
        ident = _obj(ident, path)
        if ident is None:
            continue
        oid = _oid_of(_str(ident.get("system"), f"{path}.system"))
        value = _str(ident.get("value"), f"{path}.value")
        if not oid or not value:
            continue
        if is_ins_oid(oid):
            try:
                parsed = Ins.parse(value, oid)
            except IdentityError as exc:
                raise _bad("value", exc.message, f"{path}.value") from exc
            ins = ins or (parsed.matricule, parsed.oid)
        else:
            ipps.append((oid, value))
    return ins, ipps


def _subject(b: _Bundle, doc: dict[str, Any], expr: str) -> PatientIds:
    path = f"{expr}.subject"
    resolved = b.resolve(doc.get("subject"), path, doc, expr, {"Patient"})
    if resolved is None:
        ref = doc["subject"]
        ident_path = f"{path}.identifier"
        ins, ipps = _patient_ids([(ref.get("identifier"), ident_path)])
        ident_expr = ident_path
    else:
        ident_expr = f"{resolved.expression}.identifier"
        idents = _list(resolved.resource.get("identifier"), ident_expr)
        ins, ipps = _patient_ids([(ident, f"{ident_expr}[{k}]") for k, ident in enumerate(idents)])
    if ins is None and not ipps:
        raise _bad(
            "required",
            "Patient non identifié : INS (urn:oid:1.2.250.1.213.1.4.8, .10 ou .11) ou IPP (urn:oid:<autorité>) "
            "attendu",
            ident_expr,
        )
    return PatientIds(ins, tuple(ipps), path)


def _names(res: dict[str, Any], expr: str) -> tuple[str | None, str | None]:
    names = _list(res.get("name"), f"{expr}.name")
    if not names or not isinstance(names[0], dict):
        return None, None
    family = _str(names[0].get("family"), f"{expr}.name[0].family")
    given = _list(names[0].get("given"), f"{expr}.name[0].given")
    return family, " ".join(g for g in given if isinstance(g, str)) or None


def _organization_ids(res: dict[str, Any], expr: str) -> list[str]:
    out: list[str] = []
    for ident in _list(res.get("identifier"), f"{expr}.identifier"):
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        value, system = ident["value"].strip(), ident.get("system")
        if system == f"urn:oid:{OID_IDNAT_STRUCT}" and value.startswith("1") and len(value) == 10:
            out.append(value[1:])  # idNat_Struct of a FINESS establishment: "1" + FINESS
        elif system in SYSTEMS_FINESS or system == f"urn:oid:{OID_IDNAT_STRUCT}":
            out.append(value)
        elif isinstance(system, str) and system.startswith("urn:oid:"):
            out.extend([system[8:], value])
    name = res.get("name")
    if isinstance(name, str) and name.strip():
        out.append(name.strip())
    return out


def _person(b: _Bundle, ref: Any, path: str, container: dict[str, Any], container_expr: str) -> Person:
    resolved = b.resolve(
        ref,
        path,
        container,
        container_expr,
        {"Practitioner", "PractitionerRole", "Organization", "Device", "Patient"},
    )
    if resolved is None:
        ident = _obj(ref.get("identifier"), f"{path}.identifier") or {}
        return _practitioner_ids(Person(expression=path), [ident], f"{path}.identifier")
    res, expr = resolved.resource, resolved.expression
    kind = res.get("resourceType")
    if kind == "Organization":
        return Person(organization_ids=tuple(_organization_ids(res, expr)), expression=path)
    if kind != "PractitionerRole" and kind != "Practitioner":
        return Person(expression=path)
    person = Person(expression=path)
    if kind == "PractitionerRole":
        orgs: list[str] = []
        if res.get("organization") is not None:
            org = b.resolve(res["organization"], f"{expr}.organization", res, expr, {"Organization"})
            if org is not None:
                orgs = _organization_ids(org.resource, org.expression)
        specialty = None
        for k, concept in enumerate(_list(res.get("specialty"), f"{expr}.specialty")):
            codings = _list(
                concept.get("coding") if isinstance(concept, dict) else None, f"{expr}.specialty[{k}]"
            )
            specialty = specialty or next(
                (c["code"] for c in codings if isinstance(c, dict) and isinstance(c.get("code"), str)), None
            )
        person = Person(specialty=specialty, organization_ids=tuple(orgs), expression=path)
        person = _practitioner_ids(
            person, _list(res.get("identifier"), f"{expr}.identifier"), f"{expr}.identifier"
        )
        if res.get("practitioner") is None:
            return person
        practitioner = b.resolve(res["practitioner"], f"{expr}.practitioner", res, expr, {"Practitioner"})
        if practitioner is None:
            return person
        res, expr = practitioner.resource, practitioner.expression
    family, given = _names(res, expr)
    person = Person(
        person.idnat_ps,
        person.rpps,
        family,
        given,
        person.specialty,
        person.organization_ids,
        person.expression,
    )
    return _practitioner_ids(person, _list(res.get("identifier"), f"{expr}.identifier"), f"{expr}.identifier")


def _practitioner_ids(person: Person, identifiers: list[Any], expression: str) -> Person:
    idnat, rpps = person.idnat_ps, person.rpps
    for ident in identifiers:
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        if ident.get("system") == f"urn:oid:{OID_IDNAT_PS}":
            idnat = idnat or ident["value"].strip()
        elif ident.get("system") == SYSTEM_RPPS:
            rpps = rpps or ident["value"].strip()
    return Person(
        idnat, rpps, person.family, person.given, person.specialty, person.organization_ids, expression
    )


# ---- content --------------------------------------------------------------------------------------------------


def _decode(data: Any, expression: str, limit: int) -> bytes:
    text = _str(data, expression, required=True)
    assert text is not None
    raw = _BASE64_SPACE.sub(b"", text.encode("ascii", "replace"))
    if len(raw) * 3 // 4 > limit:
        raise _bad("too-costly", f"Document trop volumineux : {size_label(limit)} au plus", expression, 413)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("value", f"Contenu base64 invalide ({exc})", expression) from exc


def _content(
    b: _Bundle, doc: dict[str, Any], expr: str, limit: int
) -> tuple[bytes, str, str, int | None, dict[str, Any]]:
    contents = _list(doc.get("content"), f"{expr}.content")
    if not contents:
        raise _bad("required", f"Élément obligatoire absent : {expr}.content", f"{expr}.content")
    if len(contents) > 1:
        raise _bad(
            "not-supported",
            "Un seul contenu par DocumentReference (un document XDS par fiche)",
            f"{expr}.content[1]",
        )
    att_expr = f"{expr}.content[0].attachment"
    first = _obj(contents[0], f"{expr}.content[0]", required=True)
    assert first is not None
    att = _obj(first.get("attachment"), att_expr, required=True)
    assert att is not None
    content_type = _str(att.get("contentType"), f"{att_expr}.contentType", required=True)
    assert content_type is not None
    binary_index: int | None = None
    if att.get("data") is not None:
        data_expr = f"{att_expr}.data"
        data = _decode(att["data"], data_expr, limit)
    else:
        url = _str(att.get("url"), f"{att_expr}.url")
        if url is None:
            raise _bad(
                "required",
                "Contenu absent : attachment.url (Binary du Bundle) ou attachment.data attendu",
                att_expr,
            )
        if url not in b.by_url:
            raise _bad(
                "not-found",
                f"attachment.url « {url} » non résolue : le Binary doit figurer dans le Bundle sous ce fullUrl",
                f"{att_expr}.url",
            )
        binary_index = b.by_url[url]
        binary = b.entries[binary_index]["resource"]
        data_expr = f"Bundle.entry[{binary_index}].resource.data"
        if binary.get("resourceType") != "Binary":
            raise _bad(
                "invalid",
                f"attachment.url « {url} » désigne une ressource {binary.get('resourceType')} et non un Binary",
                f"{att_expr}.url",
            )
        declared = _str(binary.get("contentType"), f"Bundle.entry[{binary_index}].resource.contentType")
        if declared and _media(declared) != _media(content_type):
            raise _bad(
                "value",
                f"Type de contenu du Binary « {declared} » différent de celui de la fiche « {content_type} »",
                f"Bundle.entry[{binary_index}].resource.contentType",
            )
        data = _decode(binary.get("data"), data_expr, limit)
    if len(data) > limit:
        raise _bad("too-costly", f"Document trop volumineux : {size_label(limit)} au plus", data_expr, 413)
    size = att.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size != len(data)):
        raise _bad(
            "value",
            f"attachment.size ({size}) différent de la taille du contenu reçu ({len(data)} octets)",
            f"{att_expr}.size",
        )
    digest = _str(att.get("hash"), f"{att_expr}.hash")
    if digest is not None:
        try:
            declared_sha1 = base64.b64decode(digest, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad(
                "value", "attachment.hash : SHA-1 encodé en base64 attendu", f"{att_expr}.hash"
            ) from exc
        if declared_sha1 != hashlib.sha1(data).digest():
            raise _bad(
                "value",
                "attachment.hash (SHA-1) ne correspond pas au contenu reçu : document altéré ou incomplet",
                f"{att_expr}.hash",
            )
    return data, content_type, data_expr, binary_index, att


def _kind(content_type: str, doc: dict[str, Any], expr: str) -> Literal["pdf", "cda"]:
    media = _media(content_type)
    if media == PDF:
        return "pdf"
    if media in CDA_MEDIA_TYPES:
        return "cda"
    fmt = doc["content"][0].get("format")
    code = fmt.get("code") if isinstance(fmt, dict) else None
    if isinstance(code, str) and code.startswith(("urn:ihe:", "urn:asip:", "urn:ans:")):
        return "cda"
    raise _bad(
        "not-supported",
        f"Type de contenu « {content_type} » non pris en charge : application/pdf, ou un CDA R2 en text/xml",
        f"{expr}.content[0].attachment.contentType",
    )


# ---- DocumentReference ------------------------------------------------------------------------------------------


def _type_code(doc: dict[str, Any], expr: str) -> str | None:
    concept = _obj(doc.get("type"), f"{expr}.type", required=True)
    assert concept is not None
    codings = [c for c in _list(concept.get("coding"), f"{expr}.type.coding") if isinstance(c, dict)]
    j07 = load_value_set(JDV_TYPE_CODE)
    for c in codings:
        if isinstance(c.get("code"), str) and j07.get(c["code"], _oid_of(c.get("system"))) is not None:
            return str(c["code"])
    first = next((c.get("code") for c in codings if isinstance(c.get("code"), str)), None)
    if first is None:
        raise _bad("required", "Type de document absent (type.coding, code LOINC du JDV_J07)", f"{expr}.type")
    return str(first)


def _security(doc: dict[str, Any], expr: str) -> tuple[str | None, list[str]]:
    j08 = load_value_set(JDV_CONFIDENTIALITY)
    confidentiality: str | None = None
    visibility: list[str] = []
    for k, concept in enumerate(_list(doc.get("securityLabel"), f"{expr}.securityLabel")):
        path = f"{expr}.securityLabel[{k}]"
        for coding in _list(_obj(concept, path, required=True).get("coding"), f"{path}.coding"):  # type: ignore[union-attr]
            if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
                continue
            scheme = _oid_of(coding.get("system"))
            concept_known = j08.get(coding["code"], scheme)
            if concept_known is None:
                raise _bad(
                    "code-invalid",
                    f"Code de confidentialité « {coding['code']} » ({coding.get('system')}) absent du JDV_J08 "
                    "(v3-Confidentiality N/R/V ou TRE_A07 MASQUE_PS, INVISIBLE_PATIENT, "
                    "INVISIBLE_REPRESENTANTS_LEGAUX)",
                    path,
                )
            if concept_known.scheme == VISIBILITY_SCHEME:
                visibility.append(concept_known.code)
            else:
                confidentiality = concept_known.code
    return confidentiality, visibility


def _replaces(doc: dict[str, Any], expr: str) -> tuple[Literal["id", "uid"], str] | None:
    found: tuple[Literal["id", "uid"], str] | None = None
    for k, rel in enumerate(_list(doc.get("relatesTo"), f"{expr}.relatesTo")):
        path = f"{expr}.relatesTo[{k}]"
        rel = _obj(rel, path, required=True)
        assert rel is not None
        code = _str(rel.get("code"), f"{path}.code", required=True)
        if code != "replaces":
            raise _bad(
                "not-supported",
                f"Relation « {code} » non prise en charge : seul le remplacement (replaces) est transmis au DMP",
                f"{path}.code",
            )
        if found is not None:
            raise _bad("invalid", "Un document ne remplace qu'un seul document", path)
        target = _obj(rel.get("target"), f"{path}.target", required=True)
        assert target is not None
        reference = _str(target.get("reference"), f"{path}.target.reference")
        if reference is not None:
            match = re.fullmatch(r"(?:.*/)?DocumentReference/(\d+)", reference)
            if match is None:
                raise _bad(
                    "not-found",
                    f"Document remplacé « {reference} » : DocumentReference/<id> de la plateforme ou identifiant "
                    "(masterIdentifier) du document attendu",
                    f"{path}.target.reference",
                )
            found = ("id", match.group(1))
        else:
            ident = _obj(target.get("identifier"), f"{path}.target.identifier", required=True)
            assert ident is not None
            found = ("uid", xds_unique_id(ident, f"{path}.target.identifier"))
    return found


def _encounter(b: _Bundle, doc: dict[str, Any], expr: str) -> tuple[str | None, str | None, str | None]:
    """Stay number, its authority and the patient class, from context.encounter or context.related."""
    ctx = _obj(doc.get("context"), f"{expr}.context") or {}
    for k, ref in enumerate(_list(ctx.get("encounter"), f"{expr}.context.encounter")):
        path = f"{expr}.context.encounter[{k}]"
        resolved = b.resolve(ref, path, doc, expr, {"Encounter"})
        res = resolved.resource if resolved is not None else {"identifier": [ref.get("identifier")]}
        patient_class = None
        klass = res.get("class")
        if isinstance(klass, dict) and isinstance(klass.get("code"), str):
            patient_class = _ENCOUNTER_CLASS.get(klass["code"])
        for ident in _list(res.get("identifier"), f"{path}.identifier"):
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                return ident["value"].strip(), _oid_of(ident.get("system")), patient_class
        return None, None, patient_class
    for rel in _list(ctx.get("related"), f"{expr}.context.related"):
        ident = rel.get("identifier") if isinstance(rel, dict) else None
        if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
            continue
        codings = (
            ((ident.get("type") or {}).get("coding") or []) if isinstance(ident.get("type"), dict) else []
        )
        if any(isinstance(c, dict) and c.get("code") == ENCOUNTER_ID_TYPE for c in codings):
            value, _, authority = ident["value"].partition("^^^")
            oid = _oid_of(ident.get("system")) or (
                authority.split("&")[1] if authority.count("&") >= 1 else None
            )
            return value.strip(), oid, None
    return None, None, None


def _document(b: _Bundle, i: int, limit: int, set_authors: tuple[Person, ...]) -> SubmittedDocument:
    expr = f"Bundle.entry[{i}].resource"
    doc = b.entries[i]["resource"]
    master = _obj(doc.get("masterIdentifier"), f"{expr}.masterIdentifier", required=True)
    assert master is not None
    unique_id = xds_unique_id(master, f"{expr}.masterIdentifier")
    status = doc.get("status")
    if status not in (None, "current"):
        raise _bad("value", f"Statut « {status} » : une nouvelle fiche est « current »", f"{expr}.status")
    data, content_type, data_expr, _binary, att = _content(b, doc, expr, limit)
    kind = _kind(content_type, doc, expr)
    authors = tuple(
        _person(b, ref, f"{expr}.author[{k}]", doc, expr)
        for k, ref in enumerate(_list(doc.get("author"), f"{expr}.author"))
    )
    hints: list[str] = []
    if doc.get("custodian") is not None:
        custodian = b.resolve(doc["custodian"], f"{expr}.custodian", doc, expr, {"Organization"})
        if custodian is not None:
            hints += _organization_ids(custodian.resource, custodian.expression)
    for person in authors + set_authors:
        hints += person.organization_ids
    ctx = _obj(doc.get("context"), f"{expr}.context") or {}
    period = _obj(ctx.get("period"), f"{expr}.context.period") or {}
    practice = _obj(ctx.get("practiceSetting"), f"{expr}.context.practiceSetting") or {}
    practice_code = next(
        (
            c["code"]
            for c in _list(practice.get("coding"), f"{expr}.context.practiceSetting.coding")
            if isinstance(c, dict) and isinstance(c.get("code"), str)
        ),
        None,
    )
    confidentiality, visibility = _security(doc, expr)
    visit, authority, patient_class = _encounter(b, doc, expr)
    return SubmittedDocument(
        index=i,
        expression=expr,
        content_expression=data_expr,
        master_identifier=unique_id,
        content=data,
        content_type=content_type,
        kind=kind,
        type_code=_type_code(doc, expr),
        title=_str(att.get("title"), "title") or _str(doc.get("description"), f"{expr}.description"),
        effective_time=_str(att.get("creation"), "creation") or _str(doc.get("date"), f"{expr}.date"),
        period_start=_str(period.get("start"), f"{expr}.context.period.start"),
        period_end=_str(period.get("end"), f"{expr}.context.period.end"),
        subject=_subject(b, doc, expr),
        authors=authors or set_authors,
        site_hints=tuple(dict.fromkeys(hints)),
        confidentiality=confidentiality,
        visibility=tuple(visibility),
        replaces=_replaces(doc, expr),
        visit_number=visit,
        visit_authority=authority,
        patient_class=patient_class,
        practice_setting=practice_code,
    )


def _is_submission_set(res: dict[str, Any]) -> bool:
    concept = res.get("code")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return isinstance(codings, list) and any(
        isinstance(c, dict)
        and c.get("code") == "submissionset"
        and str(c.get("system", "")).endswith("MHDlistTypes")
        for c in codings
    )


def parse_provide_bundle(data: Any, *, max_document_bytes: int) -> ProvideBundle:
    """Check an ITI-65 Bundle and read it. Raises FhirError (400 when it is no Bundle at all, else 4xx)."""
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        found = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        raise _bad("structure", f"Ressource Bundle attendue (reçu : {found})", "Bundle", 400)
    if data.get("type") != "transaction":
        raise _bad(
            "value",
            f"Bundle de type « transaction » attendu pour ITI-65 (reçu : {data.get('type')})",
            "Bundle.type",
        )
    raw_entries = _list(data.get("entry"), "Bundle.entry")
    entries: list[dict[str, Any]] = []
    kinds: list[str] = []
    for i, entry in enumerate(raw_entries):
        path = f"Bundle.entry[{i}]"
        entry = _obj(entry, path, required=True)
        assert entry is not None
        res = _obj(entry.get("resource"), f"{path}.resource", required=True)
        assert res is not None
        kind = res.get("resourceType")
        if kind not in _ALLOWED:
            raise _bad(
                "not-supported",
                f"Ressource {kind} non prise en charge dans un Provide Document Bundle "
                f"({', '.join(sorted(_ALLOWED))})",
                f"{path}.resource",
            )
        request = _obj(entry.get("request"), f"{path}.request", required=True)
        assert request is not None
        if request.get("method") != "POST":
            raise _bad(
                "not-supported",
                f"Méthode « {request.get('method')} » : seules des créations (POST) sont acceptées",
                f"{path}.request.method",
            )
        entries.append(entry)
        kinds.append(str(kind))
    b = _Bundle(entries)
    sets = [i for i, e in enumerate(entries) if kinds[i] == "List" and _is_submission_set(e["resource"])]
    if not sets:
        raise _bad(
            "required",
            "Lot de soumission absent : une ressource List de code « submissionset » attendue",
            "Bundle.entry",
        )
    if len(sets) > 1:
        raise _bad(
            "invalid",
            "Un seul lot de soumission (List « submissionset ») par Bundle",
            f"Bundle.entry[{sets[1]}]",
        )
    doc_indexes = [i for i, k in enumerate(kinds) if k == "DocumentReference"]
    if not doc_indexes:
        raise _bad("required", "Aucune ressource DocumentReference dans le Bundle", "Bundle.entry")
    set_index = sets[0]
    set_res, set_expr = entries[set_index]["resource"], f"Bundle.entry[{set_index}].resource"
    listed: set[int] = set()
    for k, item in enumerate(_list(set_res.get("entry"), f"{set_expr}.entry")):
        path = f"{set_expr}.entry[{k}]"
        item = _obj(item, path, required=True)
        assert item is not None
        target = b.resolve(item.get("item"), f"{path}.item", set_res, set_expr, {"DocumentReference"})
        if target is None or target.index is None:
            raise _bad(
                "not-found",
                "Les entrées du lot de soumission désignent les fiches du Bundle (fullUrl)",
                f"{path}.item",
            )
        listed.add(target.index)
    for i in doc_indexes:
        if i not in listed:
            raise _bad(
                "invalid",
                "DocumentReference absente du lot de soumission (List.entry.item)",
                f"Bundle.entry[{i}].resource",
            )
    set_authors: tuple[Person, ...] = ()
    if set_res.get("source") is not None:
        set_authors = (_person(b, set_res["source"], f"{set_expr}.source", set_res, set_expr),)
    set_uid: str | None = None
    for k, ident in enumerate(_list(set_res.get("identifier"), f"{set_expr}.identifier")):
        if isinstance(ident, dict) and ident.get("use") == "usual" and ident.get("value"):
            set_uid = xds_unique_id(ident, f"{set_expr}.identifier[{k}]")
    bundle = ProvideBundle(kinds, SubmissionSet(set_index, set_uid, set_authors))
    seen: dict[str, int] = {}
    for i in doc_indexes:
        document = _document(b, i, max_document_bytes, set_authors)
        if document.master_identifier in seen:
            raise _bad(
                "invalid",
                f"masterIdentifier « {document.master_identifier} » en double dans le Bundle",
                f"{document.expression}.masterIdentifier",
            )
        seen[document.master_identifier] = i
        bundle.documents.append(document)
        url = _str(_content_url(entries[i]["resource"]), "url")
        if url in b.by_url:
            bundle.binaries[b.by_url[url]] = i
    for i, kind in enumerate(kinds):
        if kind == "Binary" and i not in bundle.binaries:
            raise _bad(
                "invalid",
                "Binary référencé par aucune DocumentReference : il ne serait transmis nulle part",
                f"Bundle.entry[{i}]",
            )
    return bundle


def _content_url(doc: dict[str, Any]) -> Any:
    att = doc["content"][0]["attachment"]
    return None if att.get("data") is not None else att.get("url")


# ---- answers ---------------------------------------------------------------------------------------------------


def operation_outcome(error: FhirError) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": error.code, "diagnostics": error.diagnostics}
    if error.expression:
        issue["expression"] = [error.expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def transaction_response(results: list[tuple[str, str | None]]) -> dict[str, Any]:
    """One entry per request entry, in order: (HTTP status line, location or None)."""
    entries = []
    for status, location in results:
        response: dict[str, Any] = {"status": status}
        if location:
            response["location"] = location
        entries.append({"response": response})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


def build_document_reference(
    *,
    resource_id: int,
    status: Literal["current", "superseded", "entered-in-error"],
    unique_id: str,
    submitted_id: str | None,
    ins: tuple[str, str] | None,
    type_code: str | None,
    type_display: str | None,
    title: str | None,
    date: str | None,
    flow_label: str,
    content_url: str,
    content_type: str,
    size: int,
    replaces: str | None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": str(resource_id),
        "masterIdentifier": unique_id_identifier(unique_id),
        "status": status,
        "description": f"Flux OpenSégur : {flow_label}",
        "content": [{"attachment": {"contentType": content_type, "url": content_url, "size": size}}],
    }
    if submitted_id and submitted_id != unique_id:
        # A PDF becomes a CDA the platform identifies: the id the sender gave stays findable.
        doc["identifier"] = [{"use": "secondary", **unique_id_identifier(submitted_id)}]
    if type_code:
        coding = {"system": "http://loinc.org", "code": type_code}
        if type_display:
            coding["display"] = type_display
        doc["type"] = {"coding": [coding]}
    if ins is not None:
        doc["subject"] = {"identifier": {"system": f"urn:oid:{ins[1]}", "value": ins[0]}}
    if date:
        doc["date"] = date
    if title:
        doc["content"][0]["attachment"]["title"] = title
    if replaces:
        doc["relatesTo"] = [{"code": "replaces", "target": {"identifier": unique_id_identifier(replaces)}}]
    return doc


def capability_statement(*, date: str, version: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "OpenSégur",
        "kind": "instance",
        "instantiates": [MHD_RECIPIENT],
        "software": {"name": "OpenSégur", "version": version},
        "implementation": {
            "description": "OpenSégur : destinataire MHD (ITI-65) des documents transmis au DMP",
        },
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "implementationGuide": [f"{PDSM_IG}/ImplementationGuide/ans.fhir.fr.pdsm"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "JSON uniquement : le format XML (application/fhir+xml) n'est pas proposé. Un Bundle "
                    "« transaction » par soumission, tout ou rien."
                ),
                "security": {"description": "Jeton d'accès Bearer, comme l'API REST de la plateforme"},
                "interaction": [
                    {
                        "code": "transaction",
                        "documentation": (
                            "ITI-65 Provide Document Bundle (MHD Comprehensive, profil ANS PDSm) : PDF ou "
                            "CDA R2, validés puis transmis au DMP"
                        ),
                    }
                ],
                "resource": [
                    {
                        "type": "DocumentReference",
                        "supportedProfile": [PDSM_DOCUMENT_REFERENCE],
                        "interaction": [{"code": "read"}],
                    }
                ],
            }
        ],
    }
