"""IHE XDS.b messages for the DMP: ITI-41, ITI-18, ITI-43, ITI-57 and their ebRIM 3.0 metadata, both sides.

The client builds requests and parses responses; the DMP sandbox parses requests and builds responses with the
same functions, so the two cannot drift. Metadata travels as :mod:`opensegur.documents.metadata` dataclasses;
this module only knows how XDS renders them (slots, classifications, external identifiers).

Decisions (see the report in the lead's notes):
- ITI-41 SOAP action: the IHE value ``urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b`` is emitted; the ANS kit's
  ``urn:ihe:iti:xds-b:2007:ProvideAndRegisterDocumentSet-b`` is accepted too (:data:`ITI41_ACTIONS`).
- Identifiers (schemes, object and association types, stored queries) come from
  :mod:`opensegur.transactions.ihe_ids`; :mod:`opensegur.transactions.ebrim` normalises what is read first.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from lxml import etree

from opensegur.documents.metadata import Coded, DocumentMetadata, SubmissionSetMetadata, XdsAuthor
from opensegur.errors import OpenSegurError
from opensegur.transactions.ebrim import NS_LCM, NS_RIM, normalize
from opensegur.transactions.ihe_ids import (
    ASSOC_ALIASES,
    ASSOC_HAS_MEMBER,
    ASSOC_RPLC,
    ASSOC_SIGNS,
    ASSOC_UPDATE_AVAILABILITY,
    DE_AUTHOR,
    DE_CLASS_CODE,
    DE_CONFIDENTIALITY,
    DE_EVENT_CODE,
    DE_FACILITY_TYPE,
    DE_FORMAT_CODE,
    DE_PATIENT_ID,
    DE_PRACTICE_SETTING,
    DE_TYPE_CODE,
    DE_UNIQUE_ID,
    OBJECT_TYPE_ASSOCIATION,
    OBJECT_TYPE_CLASSIFICATION,
    OBJECT_TYPE_EXTERNAL_ID,
    OBJECT_TYPE_ON_DEMAND,
    OBJECT_TYPE_REGISTRY_PACKAGE,
    OBJECT_TYPE_STABLE,
    RESPONSE_FAILURE,
    RESPONSE_PARTIAL,
    RESPONSE_SUCCESS,
    SEVERITY_ERROR,
    SEVERITY_WARNING,
    SS_AUTHOR,
    SS_CONTENT_TYPE,
    SS_NODE,
    SS_PATIENT_ID,
    SS_SOURCE_ID,
    SS_UNIQUE_ID,
    STATUS_APPROVED,
    STATUS_DEPRECATED,
    Q,
)
from opensegur.transport.mtom import MtomError, xop_include, xop_or_inline

__all__ = [
    "ACTION_ITI18",
    "ACTION_ITI41",
    "ACTION_ITI43",
    "ACTION_ITI57",
    "ASSOC_HAS_MEMBER",
    "ASSOC_RPLC",
    "ASSOC_SIGNS",
    "ASSOC_UPDATE_AVAILABILITY",
    "ITI41_ACTIONS",
    "NS_LCM",
    "NS_QUERY",
    "NS_RIM",
    "NS_RS",
    "NS_XDSB",
    "Q",
    "STATUS_APPROVED",
    "STATUS_DEPRECATED",
    "Association",
    "ProvideAndRegister",
    "QueryResult",
    "RegistryResult",
    "RetrieveRequest",
    "RetrievedDocument",
    "StatusUpdate",
    "StoredQuery",
    "SubmittedDocument",
    "UpdateDocumentSet",
    "XdsError",
    "XdsErrorInfo",
    "build_find_documents",
    "build_find_submission_sets",
    "build_get_associations",
    "build_get_documents",
    "build_get_documents_and_associations",
    "build_get_submission_sets",
    "build_provide_and_register",
    "build_query_response",
    "build_registry_response",
    "build_retrieve_request",
    "build_retrieve_response",
    "build_stored_query",
    "build_update_document_set",
    "parse_provide_and_register",
    "parse_query_response",
    "parse_registry_response",
    "parse_retrieve_request",
    "parse_retrieve_response",
    "parse_stored_query",
    "parse_update_document_set",
    "is_submission_set",
    "read_associations",
    "read_document_entry",
    "read_submission_set",
    "render_association",
    "render_document_entry",
    "render_submission_set",
    "signature_entry_metadata",
]

NS_RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
NS_QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
NS_XDSB = "urn:ihe:iti:xds-b:2007"
_NSMAP = {"lcm": NS_LCM, "rim": NS_RIM, "rs": NS_RS, "query": NS_QUERY, "xdsb": NS_XDSB}
_R = f"{{{NS_RIM}}}"
_X = f"{{{NS_XDSB}}}"
_RS = f"{{{NS_RS}}}"
_Q = f"{{{NS_QUERY}}}"
_LCM = f"{{{NS_LCM}}}"

ACTION_ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ACTION_ITI41_KIT = "urn:ihe:iti:xds-b:2007:ProvideAndRegisterDocumentSet-b"
ITI41_ACTIONS = frozenset({ACTION_ITI41, ACTION_ITI41_KIT})
ACTION_ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ACTION_ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ACTION_ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"


def response_action(action: str) -> str:
    """SOAP action of the response to ``action`` (IHE appends ``Response``)."""
    return (ACTION_ITI41 if action in ITI41_ACTIONS else action) + "Response"


_STATUS_URNS = {"Success": RESPONSE_SUCCESS, "Failure": RESPONSE_FAILURE, "PartialSuccess": RESPONSE_PARTIAL}

# Submission-set signature entry (IHE DSG, as the DMP requires it).
SIGNATURE_CLASS = Coded("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
SIGNATURE_TYPE = Coded("E1762", "ASTM", "Full Document")
SIGNATURE_FORMAT = Coded("http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style")
SIGNATURE_EVENT = Coded("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")


QUERY_NAMES = {v: k for k, v in vars(Q).items() if k.isupper()}
# Parameters that must be present (one of each tuple) for the queries this platform implements.
_REQUIRED_PARAMS: dict[str, list[tuple[str, ...]]] = {
    Q.FIND_DOCUMENTS: [("$XDSDocumentEntryPatientId",), ("$XDSDocumentEntryStatus",)],
    Q.FIND_SUBMISSION_SETS: [("$XDSSubmissionSetPatientId",), ("$XDSSubmissionSetStatus",)],
    Q.GET_DOCUMENTS: [("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId")],
    Q.GET_DOCUMENTS_AND_ASSOCIATIONS: [("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId")],
    Q.GET_ASSOCIATIONS: [("$uuid",)],
    Q.GET_SUBMISSION_SETS: [("$uuid",)],
}


class XdsError(OpenSegurError):
    """A message violates XDS.b; ``code`` is the IHE error code a registry/repository would return."""

    def __init__(self, code: str, message: str, location: str = "") -> None:
        super().__init__(f"{code}: {message}" + (f" ({location})" if location else ""))
        self.code = code
        self.message = message
        self.location = location

    def info(self) -> XdsErrorInfo:
        return XdsErrorInfo(self.code, self.message, self.location)


@dataclass(frozen=True)
class XdsErrorInfo:
    code: str
    context: str
    location: str = ""
    severity: Literal["Error", "Warning"] = "Error"


@dataclass
class RegistryResult:
    status: str  # "Success" | "Failure" | "PartialSuccess"
    errors: list[XdsErrorInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "Success"


@dataclass
class Association:
    type: str
    source: str
    target: str
    id: str = ""
    slots: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class SubmittedDocument:
    metadata: DocumentMetadata
    content: bytes


@dataclass
class ProvideAndRegister:
    submission_set: SubmissionSetMetadata
    documents: list[SubmittedDocument]
    associations: list[Association]
    signature: SubmittedDocument | None = None
    replaces: dict[str, str] = field(default_factory=dict)  # new entry id -> replaced entryUUID


@dataclass
class StatusUpdate:
    """ITI-57 availability change of an existing entry (``target`` = its entryUUID or logical id)."""

    target: str
    original_status: str
    new_status: str


@dataclass
class UpdateDocumentSet:
    submission_set: SubmissionSetMetadata
    metadata_updates: list[tuple[DocumentMetadata, str]]  # (new version of the entry, PreviousVersion)
    status_updates: list[StatusUpdate]
    associations: list[Association]


@dataclass
class StoredQuery:
    query_id: str
    name: str
    return_type: str
    parameters: dict[str, list[str]]  # values unquoted, lists flattened

    def one(self, name: str) -> str | None:
        values = self.parameters.get(name)
        return values[0] if values else None


@dataclass
class QueryResult:
    status: str
    errors: list[XdsErrorInfo] = field(default_factory=list)
    documents: list[DocumentMetadata] = field(default_factory=list)
    submission_sets: list[SubmissionSetMetadata] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)
    object_refs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetrieveRequest:
    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None = None


@dataclass
class RetrievedDocument:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    content: bytes
    home_community_id: str | None = None


# --------------------------------------------------------------------------------------------------------------
# ebRIM primitives


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _el(tag: str, **attrs: str) -> etree._Element:
    return etree.Element(tag, nsmap=_NSMAP, **attrs)


def _slot(parent: etree._Element, name: str, values: Iterable[str]) -> None:
    values = [v for v in values if v is not None]
    if not values:
        return
    slot = etree.SubElement(parent, f"{_R}Slot", name=name)
    vl = etree.SubElement(slot, f"{_R}ValueList")
    for v in values:
        etree.SubElement(vl, f"{_R}Value").text = v


def _localized(parent: etree._Element, tag: str, text: str) -> None:
    if text:
        wrapper = etree.SubElement(parent, f"{_R}{tag}")
        etree.SubElement(wrapper, f"{_R}LocalizedString", value=text)


def _classification_code(parent: etree._Element, scheme: str, obj_id: str, coded: Coded) -> None:
    cl = etree.SubElement(
        parent,
        f"{_R}Classification",
        id=_new_id(),
        objectType=OBJECT_TYPE_CLASSIFICATION,
        classificationScheme=scheme,
        classifiedObject=obj_id,
        nodeRepresentation=coded.code,
    )
    _slot(cl, "codingScheme", [coded.scheme])
    _localized(cl, "Name", coded.display or coded.code)


def _classification_author(parent: etree._Element, scheme: str, obj_id: str, author: XdsAuthor) -> None:
    cl = etree.SubElement(
        parent,
        f"{_R}Classification",
        id=_new_id(),
        objectType=OBJECT_TYPE_CLASSIFICATION,
        classificationScheme=scheme,
        classifiedObject=obj_id,
        nodeRepresentation="",
    )
    if author.person:
        _slot(cl, "authorPerson", [author.person])
    _slot(cl, "authorInstitution", author.institutions)
    _slot(cl, "authorRole", author.roles)
    _slot(cl, "authorSpecialty", author.specialties)
    _slot(cl, "authorTelecommunication", author.telecom)


def _external_id(parent: etree._Element, scheme: str, obj_id: str, value: str, name: str) -> None:
    ei = etree.SubElement(
        parent,
        f"{_R}ExternalIdentifier",
        id=_new_id(),
        objectType=OBJECT_TYPE_EXTERNAL_ID,
        identificationScheme=scheme,
        registryObject=obj_id,
        value=value,
    )
    _localized(ei, "Name", name)


def _slots(el: etree._Element) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for slot in el.findall(f"{_R}Slot"):
        out.setdefault(slot.get("name", ""), []).extend(
            v.text or "" for v in slot.iterfind(f"{_R}ValueList/{_R}Value")
        )
    return out


def _name(el: etree._Element, tag: str = "Name") -> str:
    ls = el.find(f"{_R}{tag}/{_R}LocalizedString")
    return ls.get("value", "") if ls is not None else ""


def _where(el: etree._Element) -> str:
    return f"{etree.QName(el).localname}[@id={el.get('id', '?')}]"


def _read_coded(cl: etree._Element) -> Coded:
    scheme = _slots(cl).get("codingScheme", [])
    code = cl.get("nodeRepresentation")
    if not code or len(scheme) != 1 or not scheme[0]:
        raise XdsError(
            "XDSRegistryMetadataError",
            f"classification codée {cl.get('classificationScheme')} : nodeRepresentation et un seul codingScheme "
            "obligatoires",
            _where(cl),
        )
    return Coded(code, scheme[0], _name(cl))


def _read_author(cl: etree._Element) -> XdsAuthor:
    s = _slots(cl)
    person = s.get("authorPerson", [])
    return XdsAuthor(
        person=person[0] if person else None,
        institutions=tuple(s.get("authorInstitution", [])),
        roles=tuple(s.get("authorRole", [])),
        specialties=tuple(s.get("authorSpecialty", [])),
        telecom=tuple(s.get("authorTelecommunication", [])),
    )


def _classifications(el: etree._Element) -> dict[str, list[etree._Element]]:
    obj_id = el.get("id")
    out: dict[str, list[etree._Element]] = {}
    for cl in el.findall(f"{_R}Classification"):
        if cl.get("classifiedObject", obj_id) != obj_id:
            raise XdsError("XDSRegistryMetadataError", "classification d'un autre objet", _where(cl))
        out.setdefault(cl.get("classificationScheme") or cl.get("classificationNode") or "", []).append(cl)
    return out


def _external_ids(el: etree._Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for ei in el.findall(f"{_R}ExternalIdentifier"):
        scheme = ei.get("identificationScheme", "")
        if scheme in out:
            raise XdsError("XDSRegistryMetadataError", f"identifiant externe {scheme} en double", _where(el))
        out[scheme] = ei.get("value", "")
    return out


def _single(values: list[str] | None, name: str, el: etree._Element, *, required: bool = True) -> str | None:
    if not values:
        if required:
            raise XdsError("XDSRegistryMetadataError", f"{name} absent", _where(el))
        return None
    if len(values) != 1:
        raise XdsError("XDSRegistryMetadataError", f"{name} : une seule valeur attendue", _where(el))
    return values[0]


_DTM_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2})?)?)?)?)?$")


def _dtm(value: str | None, name: str, el: etree._Element) -> str | None:
    if value is not None and not _DTM_RE.match(value):
        raise XdsError(
            "XDSRegistryMetadataError",
            f"{name} {value!r} n'est pas une date XDS DTM (UTC AAAA[MM[JJ[hh…]]])",
            _where(el),
        )
    return value


# --------------------------------------------------------------------------------------------------------------
# Document entry / submission set / association


def render_document_entry(m: DocumentMetadata, entry_id: str | None = None) -> etree._Element:
    """``rim:ExtrinsicObject`` of an XDSDocumentEntry, with every slot, classification and identifier set in ``m``."""
    obj_id = entry_id or m.entry_uuid or _new_id()
    eo = _el(f"{_R}ExtrinsicObject", id=obj_id, mimeType=m.mime_type, objectType=OBJECT_TYPE_STABLE)
    if m.availability_status:
        eo.set("status", _status_urn(m.availability_status))
    if m.logical_id:
        eo.set("lid", m.logical_id)
    _slot(eo, "creationTime", [m.creation_time])
    if m.hash_sha1:
        _slot(eo, "hash", [m.hash_sha1])
    _slot(eo, "languageCode", [m.language_code])
    if m.legal_authenticator:
        _slot(eo, "legalAuthenticator", [m.legal_authenticator])
    if m.repository_unique_id:
        _slot(eo, "repositoryUniqueId", [m.repository_unique_id])
    if m.service_start_time:
        _slot(eo, "serviceStartTime", [m.service_start_time])
    if m.service_stop_time:
        _slot(eo, "serviceStopTime", [m.service_stop_time])
    if m.size is not None:
        _slot(eo, "size", [str(m.size)])
    if m.source_patient_id:
        _slot(eo, "sourcePatientId", [m.source_patient_id])
    _slot(eo, "sourcePatientInfo", m.source_patient_info)
    _slot(eo, "urn:ihe:iti:xds:2013:referenceIdList", m.reference_ids)
    _localized(eo, "Name", m.title)
    _localized(eo, "Description", m.comments)
    if m.version:
        etree.SubElement(eo, f"{_R}VersionInfo", versionName=m.version)
    for author in m.authors:
        _classification_author(eo, DE_AUTHOR, obj_id, author)
    _classification_code(eo, DE_CLASS_CODE, obj_id, m.class_code)
    for conf in m.confidentiality_codes:
        _classification_code(eo, DE_CONFIDENTIALITY, obj_id, conf)
    for event in m.event_codes:
        _classification_code(eo, DE_EVENT_CODE, obj_id, event)
    _classification_code(eo, DE_FORMAT_CODE, obj_id, m.format_code)
    _classification_code(eo, DE_FACILITY_TYPE, obj_id, m.healthcare_facility_type_code)
    _classification_code(eo, DE_PRACTICE_SETTING, obj_id, m.practice_setting_code)
    _classification_code(eo, DE_TYPE_CODE, obj_id, m.type_code)
    _external_id(eo, DE_PATIENT_ID, obj_id, m.patient_id, "XDSDocumentEntry.patientId")
    _external_id(eo, DE_UNIQUE_ID, obj_id, m.unique_id, "XDSDocumentEntry.uniqueId")
    return eo


def _status_urn(status: str) -> str:
    return status if status.startswith("urn:") else f"urn:oasis:names:tc:ebxml-regrep:StatusType:{status}"


def _status_short(status: str | None) -> str | None:
    return status.rsplit(":", 1)[-1] if status else None


def read_document_entry(el: etree._Element) -> DocumentMetadata:
    """Inverse of :func:`render_document_entry`; raises ``XDSRegistryMetadataError`` on missing/invalid metadata."""
    if el.tag != f"{_R}ExtrinsicObject":
        raise XdsError("XDSRegistryMetadataError", f"ExtrinsicObject expected, got {el.tag}")
    if el.get("objectType") not in (OBJECT_TYPE_STABLE, OBJECT_TYPE_ON_DEMAND):
        raise XdsError(
            "XDSRegistryMetadataError", "objectType n'est pas celui d'une XDSDocumentEntry", _where(el)
        )
    mime = el.get("mimeType")
    if not mime:
        raise XdsError("XDSRegistryMetadataError", "mimeType absent", _where(el))
    s = _slots(el)
    cls = _classifications(el)
    ext = _external_ids(el)

    def coded(scheme: str, name: str) -> Coded:
        found = cls.get(scheme, [])
        if len(found) != 1:
            raise XdsError(
                "XDSRegistryMetadataError", f"un seul {name} attendu, {len(found)} trouvé(s)", _where(el)
            )
        return _read_coded(found[0])

    confidentiality = [_read_coded(c) for c in cls.get(DE_CONFIDENTIALITY, [])]
    if not confidentiality:
        raise XdsError("XDSRegistryMetadataError", "confidentialityCode absent", _where(el))
    unique_id = ext.get(DE_UNIQUE_ID)
    patient_id = ext.get(DE_PATIENT_ID)
    if not unique_id:
        raise XdsError("XDSRegistryMetadataError", "XDSDocumentEntry.uniqueId absent", _where(el))
    if not patient_id:
        raise XdsError("XDSRegistryMetadataError", "XDSDocumentEntry.patientId absent", _where(el))
    size_text = _single(s.get("size"), "size", el, required=False)
    try:
        size = int(size_text) if size_text is not None else None
    except ValueError as exc:
        raise XdsError(
            "XDSRegistryMetadataError", f"size {size_text!r} n'est pas un entier", _where(el)
        ) from exc
    version_info = el.find(f"{_R}VersionInfo")
    creation = _single(s.get("creationTime"), "creationTime", el)
    return DocumentMetadata(
        unique_id=unique_id,
        patient_id=patient_id,
        mime_type=mime,
        class_code=coded(DE_CLASS_CODE, "classCode"),
        type_code=coded(DE_TYPE_CODE, "typeCode"),
        format_code=coded(DE_FORMAT_CODE, "formatCode"),
        healthcare_facility_type_code=coded(DE_FACILITY_TYPE, "healthcareFacilityTypeCode"),
        practice_setting_code=coded(DE_PRACTICE_SETTING, "practiceSettingCode"),
        confidentiality_codes=confidentiality,
        creation_time=_dtm(creation, "creationTime", el) or "",
        language_code=_single(s.get("languageCode"), "languageCode", el) or "",
        title=_name(el),
        comments=_name(el, "Description"),
        authors=[_read_author(c) for c in cls.get(DE_AUTHOR, [])],
        legal_authenticator=_single(s.get("legalAuthenticator"), "legalAuthenticator", el, required=False),
        service_start_time=_dtm(
            _single(s.get("serviceStartTime"), "serviceStartTime", el, required=False), "serviceStartTime", el
        ),
        service_stop_time=_dtm(
            _single(s.get("serviceStopTime"), "serviceStopTime", el, required=False), "serviceStopTime", el
        ),
        event_codes=[_read_coded(c) for c in cls.get(DE_EVENT_CODE, [])],
        source_patient_id=_single(s.get("sourcePatientId"), "sourcePatientId", el, required=False),
        source_patient_info=s.get("sourcePatientInfo", []),
        reference_ids=s.get("urn:ihe:iti:xds:2013:referenceIdList", []),
        size=size,
        hash_sha1=_single(s.get("hash"), "hash", el, required=False),
        entry_uuid=el.get("id"),
        repository_unique_id=_single(s.get("repositoryUniqueId"), "repositoryUniqueId", el, required=False),
        availability_status=_status_short(el.get("status")),
        version=version_info.get("versionName") if version_info is not None else None,
        logical_id=el.get("lid"),
    )


def render_submission_set(ss: SubmissionSetMetadata, entry_id: str | None = None) -> list[etree._Element]:
    """``rim:RegistryPackage`` of the submission set, followed by the Classification marking it as one."""
    obj_id = entry_id or ss.entry_uuid or _new_id()
    rp = _el(
        f"{_R}RegistryPackage",
        id=obj_id,
        objectType=OBJECT_TYPE_REGISTRY_PACKAGE,
    )
    _slot(rp, "intendedRecipient", ss.intended_recipients)
    _slot(rp, "submissionTime", [ss.submission_time])
    _localized(rp, "Name", ss.title)
    for author in ss.authors:
        _classification_author(rp, SS_AUTHOR, obj_id, author)
    _classification_code(rp, SS_CONTENT_TYPE, obj_id, ss.content_type_code)
    _external_id(rp, SS_UNIQUE_ID, obj_id, ss.unique_id, "XDSSubmissionSet.uniqueId")
    _external_id(rp, SS_SOURCE_ID, obj_id, ss.source_id, "XDSSubmissionSet.sourceId")
    _external_id(rp, SS_PATIENT_ID, obj_id, ss.patient_id, "XDSSubmissionSet.patientId")
    node = _el(
        f"{_R}Classification",
        id=_new_id(),
        objectType=OBJECT_TYPE_CLASSIFICATION,
        classificationNode=SS_NODE,
        classifiedObject=obj_id,
    )
    return [rp, node]


def is_submission_set(rp: etree._Element) -> bool:
    """Whether a RegistryPackage of a :func:`~opensegur.transactions.ebrim.normalize`-d list is classified as the
    submission set (the normaliser has moved a top-level classification into the package it names)."""
    return any(c.get("classificationNode") == SS_NODE for c in rp.findall(f"{_R}Classification"))


def read_submission_set(el: etree._Element) -> SubmissionSetMetadata:
    if el.tag != f"{_R}RegistryPackage":
        raise XdsError("XDSRegistryMetadataError", f"RegistryPackage expected, got {el.tag}")
    s = _slots(el)
    cls = _classifications(el)
    ext = _external_ids(el)
    content = cls.get(SS_CONTENT_TYPE, [])
    if len(content) != 1:
        raise XdsError("XDSRegistryMetadataError", "un seul contentTypeCode attendu", _where(el))
    for scheme, name in (
        (SS_UNIQUE_ID, "uniqueId"),
        (SS_SOURCE_ID, "sourceId"),
        (SS_PATIENT_ID, "patientId"),
    ):
        if not ext.get(scheme):
            raise XdsError("XDSRegistryMetadataError", f"XDSSubmissionSet.{name} absent", _where(el))
    return SubmissionSetMetadata(
        unique_id=ext[SS_UNIQUE_ID],
        source_id=ext[SS_SOURCE_ID],
        patient_id=ext[SS_PATIENT_ID],
        content_type_code=_read_coded(content[0]),
        submission_time=_dtm(_single(s.get("submissionTime"), "submissionTime", el), "submissionTime", el)
        or "",
        authors=[_read_author(c) for c in cls.get(SS_AUTHOR, [])],
        title=_name(el),
        entry_uuid=el.get("id"),
        intended_recipients=s.get("intendedRecipient", []),
    )


def render_association(a: Association) -> etree._Element:
    el = _el(
        f"{_R}Association",
        id=a.id or _new_id(),
        objectType=OBJECT_TYPE_ASSOCIATION,
        associationType=a.type,
        sourceObject=a.source,
        targetObject=a.target,
    )
    for name, values in a.slots.items():
        _slot(el, name, values)
    return el


def read_associations(object_list: etree._Element) -> list[Association]:
    out = []
    for el in object_list.findall(f"{_R}Association"):
        a_type, src, tgt = el.get("associationType"), el.get("sourceObject"), el.get("targetObject")
        if not a_type or not src or not tgt:
            raise XdsError("XDSRegistryMetadataError", "association sans type, source ou cible", _where(el))
        out.append(Association(ASSOC_ALIASES.get(a_type, a_type), src, tgt, el.get("id", ""), _slots(el)))
    return out


# --------------------------------------------------------------------------------------------------------------
# ITI-41 Provide and Register Document Set-b


def signature_entry_metadata(
    ss: SubmissionSetMetadata, first: DocumentMetadata, signature_unique_id: str, size: int, hash_sha1: str
) -> DocumentMetadata:
    """Metadata of the submission-set signature entry (IHE DSG codes; context copied from the first document)."""
    return DocumentMetadata(
        unique_id=signature_unique_id,
        patient_id=ss.patient_id,
        mime_type="text/xml",
        class_code=SIGNATURE_CLASS,
        type_code=SIGNATURE_TYPE,
        format_code=SIGNATURE_FORMAT,
        healthcare_facility_type_code=first.healthcare_facility_type_code,
        practice_setting_code=first.practice_setting_code,
        confidentiality_codes=list(first.confidentiality_codes),
        creation_time=ss.submission_time,
        language_code="art",
        title="Signature du lot de soumission",
        authors=list(ss.authors),
        event_codes=[SIGNATURE_EVENT],
        source_patient_id=first.source_patient_id,
        source_patient_info=list(first.source_patient_info),
        size=size,
        hash_sha1=hash_sha1,
    )


def _signature_id(signature: bytes) -> str:
    try:
        root = etree.fromstring(
            signature, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        )
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"signature is not XML: {exc}") from exc
    sig_id = root.get("Id")
    if not sig_id:
        raise ValueError("ds:Signature/@Id (the signature uniqueId) is missing")
    return sig_id


def build_provide_and_register(
    ss: SubmissionSetMetadata,
    docs: Sequence[tuple[DocumentMetadata, bytes]],
    *,
    replaces: dict[str, str] | None = None,
    signature: bytes | None = None,
) -> tuple[etree._Element, dict[str, bytes]]:
    """ITI-41 body and its MTOM attachments ({Content-ID: bytes}).

    Missing entry UUIDs (submission set, documents), sizes and SHA-1 hashes are assigned in place, as the metadata
    contract says, so the caller can record them. ``replaces`` maps a new document's entry UUID to the entryUUID
    it replaces (RPLC).
    ``signature`` is the XAdES ``ds:Signature`` from :func:`opensegur.transactions.xades.sign_submission_set`;
    its ``@Id`` is the signature entry's uniqueId.
    """
    if not docs:
        raise ValueError("ITI-41 needs at least one document")
    replaces = replaces or {}
    ss.entry_uuid = ss.entry_uuid or _new_id()
    root = _el(f"{_X}ProvideAndRegisterDocumentSetRequest")
    sor = etree.SubElement(root, f"{_LCM}SubmitObjectsRequest")
    rol = etree.SubElement(sor, f"{_R}RegistryObjectList")
    attachments: dict[str, bytes] = {}
    doc_elements: list[tuple[str, str]] = []
    for m, content in docs:
        m.entry_uuid = m.entry_uuid or _new_id()
        # size and hash let the repository detect a truncated or altered attachment (XDSRepositoryMetadataError).
        if m.size is None:
            m.size = len(content)
        if m.hash_sha1 is None:
            m.hash_sha1 = _sha1(content)
        rol.append(render_document_entry(m, m.entry_uuid))
        doc_elements.append((m.entry_uuid, m.unique_id))
        attachments[m.entry_uuid] = content
    sig_entry_id = None
    if signature is not None:
        sig_meta = signature_entry_metadata(
            ss, docs[0][0], _signature_id(signature), len(signature), hashlib.sha1(signature).hexdigest()
        )
        sig_entry_id = _new_id()
        rol.append(render_document_entry(sig_meta, sig_entry_id))
        doc_elements.append((sig_entry_id, sig_meta.unique_id))
        attachments[sig_entry_id] = signature
    for el in render_submission_set(ss, ss.entry_uuid):
        rol.append(el)
    for entry_id, _ in doc_elements:
        rol.append(
            render_association(
                Association(
                    ASSOC_HAS_MEMBER, ss.entry_uuid, entry_id, slots={"SubmissionSetStatus": ["Original"]}
                )
            )
        )
    if sig_entry_id is not None:
        rol.append(render_association(Association(ASSOC_SIGNS, sig_entry_id, ss.entry_uuid)))
    known = {m.entry_uuid for m, _ in docs}
    for new_id, old_id in replaces.items():
        if new_id not in known:
            raise ValueError(f"replaces refers to {new_id}, which is not a document of this submission")
        rol.append(render_association(Association(ASSOC_RPLC, new_id, old_id)))
    # Content-IDs are the entry UUIDs without the urn prefix: unique within the message and readable in logs.
    cids: dict[str, bytes] = {}
    for entry_id, _ in doc_elements:
        cid = entry_id.removeprefix("urn:uuid:") + "@opensegur"
        document = etree.SubElement(root, f"{_X}Document", id=entry_id)
        document.append(xop_include(cid))
        cids[cid] = attachments[entry_id]
    return root, cids


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def parse_provide_and_register(body_el: etree._Element, attachments: dict[str, bytes]) -> ProvideAndRegister:
    """Strict repository/registry-side reading of an ITI-41 request (first error raised as :class:`XdsError`)."""
    if body_el.tag != f"{_X}ProvideAndRegisterDocumentSetRequest":
        raise XdsError("XDSRepositoryError", f"unexpected request {body_el.tag}")
    normalize(body_el)
    rol = body_el.find(f"{_LCM}SubmitObjectsRequest/{_R}RegistryObjectList")
    if rol is None:
        raise XdsError("XDSRegistryMetadataError", "missing SubmitObjectsRequest/RegistryObjectList")
    packages = [rp for rp in rol.findall(f"{_R}RegistryPackage") if is_submission_set(rp)]
    if len(packages) != 1:
        raise XdsError(
            "XDSRegistryMetadataError", f"exactly one submission set expected, found {len(packages)}"
        )
    if len(rol.findall(f"{_R}RegistryPackage")) != 1:
        raise XdsError("XDSRegistryMetadataError", "folders are not supported by the DMP")
    ss = read_submission_set(packages[0])

    contents: dict[str, bytes] = {}
    for doc in body_el.findall(f"{_X}Document"):
        doc_id = doc.get("id")
        if not doc_id:
            raise XdsError("XDSRepositoryMetadataError", "Document without id")
        if doc_id in contents:
            raise XdsError("XDSRepositoryMetadataError", "duplicate Document id", doc_id)
        try:
            contents[doc_id] = xop_or_inline(doc, attachments)
        except MtomError as exc:
            raise XdsError("XDSMissingDocument", str(exc), doc_id) from exc

    entries: list[SubmittedDocument] = []
    signature = None
    unique_ids: set[str] = set()
    for eo in rol.findall(f"{_R}ExtrinsicObject"):
        m = read_document_entry(eo)
        entry_id = m.entry_uuid or ""
        if entry_id not in contents:
            raise XdsError("XDSMissingDocument", f"no Document for entry {m.unique_id}", entry_id)
        if m.unique_id in unique_ids:
            raise XdsError("XDSRegistryDuplicateUniqueIdInMessage", f"uniqueId {m.unique_id} twice", entry_id)
        unique_ids.add(m.unique_id)
        if m.patient_id != ss.patient_id:
            raise XdsError(
                "XDSPatientIdDoesNotMatch",
                f"document patientId {m.patient_id} differs from the submission set's {ss.patient_id}",
                entry_id,
            )
        content = contents.pop(entry_id)
        if m.size is not None and m.size != len(content):
            raise XdsError("XDSRepositoryMetadataError", f"size {m.size} != {len(content)} bytes", entry_id)
        if m.hash_sha1 is not None and m.hash_sha1.lower() != _sha1(content):
            raise XdsError("XDSRepositoryMetadataError", "hash does not match the document content", entry_id)
        submitted = SubmittedDocument(m, content)
        if m.class_code.code == SIGNATURE_CLASS.code:
            if signature is not None:
                raise XdsError("XDSRegistryMetadataError", "more than one submission-set signature", entry_id)
            signature = submitted
        else:
            entries.append(submitted)
    if contents:
        raise XdsError("XDSMissingDocumentMetadata", "Document without metadata", ", ".join(sorted(contents)))
    if not entries:
        raise XdsError("XDSRegistryMetadataError", "the submission contains no document")

    associations = read_associations(rol)
    entry_ids = {d.metadata.entry_uuid or "" for d in entries}
    entry_ids_all = set(entry_ids)
    if signature is not None:
        entry_ids_all.add(signature.metadata.entry_uuid or "")
    members: set[str] = set()
    replaces: dict[str, str] = {}
    signs_ok = False
    for a in associations:
        if a.type == ASSOC_HAS_MEMBER:
            if a.source != ss.entry_uuid or a.target not in entry_ids_all:
                raise XdsError(
                    "XDSRegistryMetadataError", "HasMember must link the submission set to its entries", a.id
                )
            if a.slots.get("SubmissionSetStatus") != ["Original"]:
                raise XdsError(
                    "XDSRegistryMetadataError", "HasMember needs SubmissionSetStatus=Original", a.id
                )
            members.add(a.target)
        elif a.type == ASSOC_RPLC:
            if a.source not in entry_ids or not a.target.startswith("urn:uuid:") or a.target in entry_ids_all:
                raise XdsError(
                    "XDSRegistryMetadataError", "RPLC must link a new entry to an existing entryUUID", a.id
                )
            replaces[a.source] = a.target
        elif a.type == ASSOC_SIGNS:
            if signature is None or a.source != signature.metadata.entry_uuid or a.target != ss.entry_uuid:
                raise XdsError(
                    "XDSRegistryMetadataError", "signs must link the signature to the submission set", a.id
                )
            signs_ok = True
        else:
            raise XdsError("XDSRegistryMetadataError", f"unsupported association type {a.type}", a.id)
    missing = entry_ids_all - members
    if missing:
        raise XdsError(
            "XDSRegistryMetadataError", "entry not member of the submission set", ", ".join(sorted(missing))
        )
    if signature is not None and not signs_ok:
        raise XdsError("XDSRegistryMetadataError", "signature entry without a signs association")
    return ProvideAndRegister(ss, entries, associations, signature, replaces)


# --------------------------------------------------------------------------------------------------------------
# RegistryResponse


def _error_list(parent: etree._Element, errors: Sequence[XdsErrorInfo]) -> None:
    if not errors:
        return
    highest = SEVERITY_ERROR if any(e.severity == "Error" for e in errors) else SEVERITY_WARNING
    lst = etree.SubElement(parent, f"{_RS}RegistryErrorList", highestSeverity=highest)
    for e in errors:
        attrs = {
            "errorCode": e.code,
            "codeContext": e.context,
            "severity": SEVERITY_ERROR if e.severity == "Error" else SEVERITY_WARNING,
        }
        if e.location:
            attrs["location"] = e.location
        etree.SubElement(lst, f"{_RS}RegistryError", **attrs)


def _read_errors(parent: etree._Element) -> list[XdsErrorInfo]:
    out = []
    for e in parent.iterfind(f"{_RS}RegistryErrorList/{_RS}RegistryError"):
        sev: Literal["Error", "Warning"] = (
            "Warning" if (e.get("severity") or "").endswith("Warning") else "Error"
        )
        out.append(XdsErrorInfo(e.get("errorCode", ""), e.get("codeContext", ""), e.get("location", ""), sev))
    return out


def _read_status(el: etree._Element) -> str:
    status = el.get("status", "")
    for short, urn in _STATUS_URNS.items():
        if status == urn:
            return short
    raise XdsError("XDSRegistryError", f"unknown response status {status!r}")


def build_registry_response(
    status: Literal["Success", "Failure", "PartialSuccess"], errors: Sequence[XdsErrorInfo] = ()
) -> etree._Element:
    resp = _el(f"{_RS}RegistryResponse", status=_STATUS_URNS[status])
    _error_list(resp, errors)
    return resp


def parse_registry_response(el: etree._Element) -> RegistryResult:
    if el.tag != f"{_RS}RegistryResponse":
        raise XdsError("XDSRegistryError", f"RegistryResponse expected, got {el.tag}")
    return RegistryResult(_read_status(el), _read_errors(el))


# --------------------------------------------------------------------------------------------------------------
# ITI-18 Registry Stored Query


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format_param(value: str | int | Sequence[str]) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    return "(" + ",".join(_quote(v) for v in value) + ")"


def build_stored_query(
    query_id: str,
    params: dict[str, str | int | Sequence[str] | None],
    return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass",
) -> etree._Element:
    """Generic AdhocQueryRequest: str → quoted single value, sequences → ``('a','b')``, int → bare number."""
    req = _el(f"{_Q}AdhocQueryRequest")
    etree.SubElement(req, f"{_Q}ResponseOption", returnComposedObjects="true", returnType=return_type)
    q = etree.SubElement(req, f"{_R}AdhocQuery", id=query_id)
    for name, value in params.items():
        if value is None or (not isinstance(value, str | int) and not value):
            continue
        _slot(q, name, [_format_param(value)])
    return req


def _codes(codes: Sequence[Coded] | None) -> list[str] | None:
    return [f"{c.code}^^{c.scheme}" for c in codes] if codes else None


def build_find_documents(
    patient_id: str,
    statuses: Sequence[str] = (STATUS_APPROVED,),
    *,
    type_codes: Sequence[Coded] | None = None,
    class_codes: Sequence[Coded] | None = None,
    event_codes: Sequence[Coded] | None = None,
    creation_time_from: str | None = None,
    creation_time_to: str | None = None,
    service_start_time_from: str | None = None,
    service_start_time_to: str | None = None,
    return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass",
) -> etree._Element:
    return build_stored_query(
        Q.FIND_DOCUMENTS,
        {
            "$XDSDocumentEntryPatientId": patient_id,
            "$XDSDocumentEntryStatus": [_status_urn(s) for s in statuses],
            "$XDSDocumentEntryTypeCode": _codes(type_codes),
            "$XDSDocumentEntryClassCode": _codes(class_codes),
            # One parameter: the codes are OR-ed (ITI TF-2a §3.18.4.1.2.3.5); the DRIMbox consumer's modality filter.
            "$XDSDocumentEntryEventCodeList": _codes(event_codes),
            "$XDSDocumentEntryCreationTimeFrom": int(creation_time_from) if creation_time_from else None,
            "$XDSDocumentEntryCreationTimeTo": int(creation_time_to) if creation_time_to else None,
            "$XDSDocumentEntryServiceStartTimeFrom": int(service_start_time_from)
            if service_start_time_from
            else None,
            "$XDSDocumentEntryServiceStartTimeTo": int(service_start_time_to)
            if service_start_time_to
            else None,
        },
        return_type,
    )


def build_find_submission_sets(
    patient_id: str,
    statuses: Sequence[str] = (STATUS_APPROVED,),
    *,
    source_ids: Sequence[str] | None = None,
    submission_time_from: str | None = None,
    return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass",
) -> etree._Element:
    return build_stored_query(
        Q.FIND_SUBMISSION_SETS,
        {
            "$XDSSubmissionSetPatientId": patient_id,
            "$XDSSubmissionSetStatus": [_status_urn(s) for s in statuses],
            "$XDSSubmissionSetSourceId": list(source_ids) if source_ids else None,
            "$XDSSubmissionSetSubmissionTimeFrom": int(submission_time_from)
            if submission_time_from
            else None,
        },
        return_type,
    )


def _by_ids(
    query_id: str,
    uuids: Sequence[str] | None,
    unique_ids: Sequence[str] | None,
    return_type: Literal["LeafClass", "ObjectRef"],
) -> etree._Element:
    if bool(uuids) == bool(unique_ids):
        raise ValueError("give either entry UUIDs or uniqueIds")
    return build_stored_query(
        query_id,
        {
            "$XDSDocumentEntryEntryUUID": list(uuids) if uuids else None,
            "$XDSDocumentEntryUniqueId": list(unique_ids) if unique_ids else None,
        },
        return_type,
    )


def build_get_documents(
    uuids: Sequence[str] | None = None,
    unique_ids: Sequence[str] | None = None,
    return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass",
) -> etree._Element:
    return _by_ids(Q.GET_DOCUMENTS, uuids, unique_ids, return_type)


def build_get_documents_and_associations(
    uuids: Sequence[str] | None = None,
    unique_ids: Sequence[str] | None = None,
    return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass",
) -> etree._Element:
    return _by_ids(Q.GET_DOCUMENTS_AND_ASSOCIATIONS, uuids, unique_ids, return_type)


def build_get_associations(
    uuids: Sequence[str], return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass"
) -> etree._Element:
    return build_stored_query(Q.GET_ASSOCIATIONS, {"$uuid": list(uuids)}, return_type)


def build_get_submission_sets(
    uuids: Sequence[str], return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass"
) -> etree._Element:
    return build_stored_query(Q.GET_SUBMISSION_SETS, {"$uuid": list(uuids)}, return_type)


_TOKEN_RE = re.compile(r"\s*(?:'((?:[^']|'')*)'|([^,()'\s]+))\s*")


def _parse_param_value(raw: str, name: str) -> list[str]:
    # ITI TF-3 Table 4.2.4.1-2: a value not coded as a list, or a list that does not parse, is
    # XDSStoredQueryParamNumber — not the registry's own failure (XDSRegistryError).
    text = raw.strip()
    if text.startswith("("):
        if not text.endswith(")"):
            raise XdsError("XDSStoredQueryParamNumber", f"unbalanced list in {name}: {raw!r}", name)
        text = text[1:-1]
    values: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise XdsError(
                "XDSStoredQueryParamNumber", f"{name} is not a value or a list of values: {raw!r}", name
            )
        values.append(m.group(1).replace("''", "'") if m.group(1) is not None else m.group(2))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise XdsError(
                    "XDSStoredQueryParamNumber", f"{name} is not a value or a list of values: {raw!r}", name
                )
            pos += 1
    return values


def parse_stored_query(body_el: etree._Element) -> StoredQuery:
    """Registry-side reading of an AdhocQueryRequest, enforcing the parameters this registry needs."""
    if body_el.tag != f"{_Q}AdhocQueryRequest":
        raise XdsError("XDSRegistryError", f"AdhocQueryRequest expected, got {body_el.tag}")
    option = body_el.find(f"{_Q}ResponseOption")
    return_type = option.get("returnType", "ObjectRef") if option is not None else "ObjectRef"
    if return_type not in ("LeafClass", "ObjectRef"):
        raise XdsError("XDSRegistryError", f"unsupported returnType {return_type}")
    query = body_el.find(f"{_R}AdhocQuery")
    if query is None:
        raise XdsError("XDSRegistryError", "missing AdhocQuery")
    query_id = query.get("id", "")
    if query_id not in QUERY_NAMES:
        raise XdsError("XDSUnknownStoredQuery", f"unknown stored query {query_id}", query_id)
    params: dict[str, list[str]] = {}
    for name, raws in _slots(query).items():
        if name in params:
            raise XdsError("XDSStoredQueryParamNumber", f"parameter {name} given twice", name)
        params[name] = [v for raw in raws for v in _parse_param_value(raw, name)]
    for group in _REQUIRED_PARAMS.get(query_id, []):
        present = [p for p in group if params.get(p)]
        if not present:
            raise XdsError(
                "XDSStoredQueryMissingParam",
                f"{QUERY_NAMES[query_id]} needs {' or '.join(group)}",
                group[0],
            )
        if len(present) > 1:
            raise XdsError(
                "XDSStoredQueryParamNumber",
                f"{QUERY_NAMES[query_id]} takes only one of {', '.join(group)}",
                present[1],
            )
    for single in ("$XDSDocumentEntryPatientId", "$XDSSubmissionSetPatientId"):
        if single in params and len(params[single]) != 1:
            raise XdsError("XDSStoredQueryParamNumber", f"{single} takes a single value", single)
    return StoredQuery(query_id, QUERY_NAMES[query_id], return_type, params)


def build_query_response(
    entries: Sequence[DocumentMetadata] = (),
    submission_sets: Sequence[SubmissionSetMetadata] = (),
    associations: Sequence[Association] = (),
    *,
    return_type: Literal["LeafClass", "ObjectRef"] = "LeafClass",
    status: Literal["Success", "Failure", "PartialSuccess"] = "Success",
    errors: Sequence[XdsErrorInfo] = (),
) -> etree._Element:
    resp = _el(f"{_Q}AdhocQueryResponse", status=_STATUS_URNS[status])
    _error_list(resp, errors)
    rol = etree.SubElement(resp, f"{_R}RegistryObjectList")
    if return_type == "ObjectRef":
        for obj_id in (
            [e.entry_uuid for e in entries]
            + [s.entry_uuid for s in submission_sets]
            + [a.id for a in associations]
        ):
            if not obj_id:
                raise ValueError("ObjectRef responses need stored objects with ids")
            etree.SubElement(rol, f"{_R}ObjectRef", id=obj_id)
        return resp
    for e in entries:
        if not e.entry_uuid:
            raise ValueError("a stored entry has an entryUUID")
        rol.append(render_document_entry(e, e.entry_uuid))
    for s in submission_sets:
        for el in render_submission_set(s, s.entry_uuid):
            rol.append(el)
    for a in associations:
        rol.append(render_association(a))
    return resp


def parse_query_response(el: etree._Element) -> QueryResult:
    if el.tag != f"{_Q}AdhocQueryResponse":
        raise XdsError("XDSRegistryError", f"AdhocQueryResponse expected, got {el.tag}")
    result = QueryResult(_read_status(el), _read_errors(el))
    rol = el.find(f"{_R}RegistryObjectList")
    if rol is not None:
        normalize(rol)
    if rol is None:
        return result
    result.documents = [read_document_entry(eo) for eo in rol.findall(f"{_R}ExtrinsicObject")]
    result.submission_sets = [
        read_submission_set(rp) for rp in rol.findall(f"{_R}RegistryPackage") if is_submission_set(rp)
    ]
    result.associations = read_associations(rol)
    result.object_refs = [o.get("id", "") for o in rol.findall(f"{_R}ObjectRef")]
    return result


# --------------------------------------------------------------------------------------------------------------
# ITI-43 Retrieve Document Set


def build_retrieve_request(requests: Sequence[RetrieveRequest]) -> etree._Element:
    if not requests:
        raise ValueError("at least one document to retrieve")
    root = _el(f"{_X}RetrieveDocumentSetRequest")
    for r in requests:
        dr = etree.SubElement(root, f"{_X}DocumentRequest")
        if r.home_community_id:
            etree.SubElement(dr, f"{_X}HomeCommunityId").text = r.home_community_id
        etree.SubElement(dr, f"{_X}RepositoryUniqueId").text = r.repository_unique_id
        etree.SubElement(dr, f"{_X}DocumentUniqueId").text = r.document_unique_id
    return root


def parse_retrieve_request(el: etree._Element) -> list[RetrieveRequest]:
    if el.tag != f"{_X}RetrieveDocumentSetRequest":
        raise XdsError("XDSRepositoryError", f"RetrieveDocumentSetRequest expected, got {el.tag}")
    out = []
    for dr in el.findall(f"{_X}DocumentRequest"):
        repo, doc = dr.findtext(f"{_X}RepositoryUniqueId"), dr.findtext(f"{_X}DocumentUniqueId")
        if not repo or not doc:
            raise XdsError(
                "XDSRepositoryMetadataError", "DocumentRequest needs RepositoryUniqueId and DocumentUniqueId"
            )
        out.append(
            RetrieveRequest(
                repo.strip(), doc.strip(), (dr.findtext(f"{_X}HomeCommunityId") or "").strip() or None
            )
        )
    if not out:
        raise XdsError("XDSRepositoryError", "no DocumentRequest")
    return out


def build_retrieve_response(
    documents: Sequence[RetrievedDocument],
    errors: Sequence[XdsErrorInfo] = (),
) -> tuple[etree._Element, dict[str, bytes]]:
    """RetrieveDocumentSetResponse and its MTOM attachments; status derives from documents and errors."""
    if errors and documents:
        status: Literal["Success", "Failure", "PartialSuccess"] = "PartialSuccess"
    elif errors:
        status = "Failure"
    else:
        status = "Success"
    root = _el(f"{_X}RetrieveDocumentSetResponse")
    root.append(build_registry_response(status, errors))
    attachments: dict[str, bytes] = {}
    for i, d in enumerate(documents):
        resp = etree.SubElement(root, f"{_X}DocumentResponse")
        if d.home_community_id:
            etree.SubElement(resp, f"{_X}HomeCommunityId").text = d.home_community_id
        etree.SubElement(resp, f"{_X}RepositoryUniqueId").text = d.repository_unique_id
        etree.SubElement(resp, f"{_X}DocumentUniqueId").text = d.document_unique_id
        etree.SubElement(resp, f"{_X}mimeType").text = d.mime_type
        cid = f"doc{i}.{uuid.uuid4().hex}@opensegur"
        etree.SubElement(resp, f"{_X}Document").append(xop_include(cid))
        attachments[cid] = d.content
    return root, attachments


def parse_retrieve_response(
    el: etree._Element, attachments: dict[str, bytes]
) -> tuple[RegistryResult, list[RetrievedDocument]]:
    if el.tag != f"{_X}RetrieveDocumentSetResponse":
        raise XdsError("XDSRepositoryError", f"RetrieveDocumentSetResponse expected, got {el.tag}")
    rr = el.find(f"{_RS}RegistryResponse")
    if rr is None:
        raise XdsError("XDSRepositoryError", "missing RegistryResponse")
    result = parse_registry_response(rr)
    docs = []
    for resp in el.findall(f"{_X}DocumentResponse"):
        doc_el = resp.find(f"{_X}Document")
        if doc_el is None:
            raise XdsError("XDSMissingDocument", "DocumentResponse without Document")
        try:
            content = xop_or_inline(doc_el, attachments)
        except MtomError as exc:
            raise XdsError("XDSMissingDocument", str(exc)) from exc
        docs.append(
            RetrievedDocument(
                repository_unique_id=(resp.findtext(f"{_X}RepositoryUniqueId") or "").strip(),
                document_unique_id=(resp.findtext(f"{_X}DocumentUniqueId") or "").strip(),
                mime_type=(resp.findtext(f"{_X}mimeType") or "").strip(),
                content=content,
                home_community_id=(resp.findtext(f"{_X}HomeCommunityId") or "").strip() or None,
            )
        )
    return result, docs


# --------------------------------------------------------------------------------------------------------------
# ITI-57 Update Document Set


def build_update_document_set(
    ss: SubmissionSetMetadata,
    *,
    metadata_updates: Sequence[tuple[DocumentMetadata, str]] = (),
    status_updates: Sequence[StatusUpdate] = (),
) -> etree._Element:
    """ITI-57 request (DMP TD3.3a-d): new entry versions and/or availability status changes.

    A metadata update (masking to professionals, visibility to the patient: new confidentiality codes) sends a
    new version of the entry: same ``lid`` (logical id), a new entry UUID, and a HasMember association carrying
    ``PreviousVersion``. A status change (deprecation, which is how a DMP "suppression" is expressed) is an
    UpdateAvailabilityStatus association from the submission set to the entry, with OriginalStatus/NewStatus.
    """
    if not metadata_updates and not status_updates:
        raise ValueError("nothing to update")
    ss.entry_uuid = ss.entry_uuid or _new_id()
    root = _el(f"{_LCM}SubmitObjectsRequest")
    rol = etree.SubElement(root, f"{_R}RegistryObjectList")
    assocs: list[Association] = []
    for m, previous_version in metadata_updates:
        if not m.logical_id:
            raise ValueError(f"metadata update of {m.unique_id} needs the entry's logical id (lid)")
        new_id = _new_id()
        rol.append(render_document_entry(m, new_id))
        assocs.append(
            Association(
                ASSOC_HAS_MEMBER,
                ss.entry_uuid,
                new_id,
                slots={"SubmissionSetStatus": ["Original"], "PreviousVersion": [previous_version]},
            )
        )
    for u in status_updates:
        assocs.append(
            Association(
                ASSOC_UPDATE_AVAILABILITY,
                ss.entry_uuid,
                u.target,
                slots={
                    "OriginalStatus": [_status_urn(u.original_status)],
                    "NewStatus": [_status_urn(u.new_status)],
                },
            )
        )
    for el in render_submission_set(ss, ss.entry_uuid):
        rol.append(el)
    for a in assocs:
        rol.append(render_association(a))
    return root


def parse_update_document_set(body_el: etree._Element) -> UpdateDocumentSet:
    if body_el.tag != f"{_LCM}SubmitObjectsRequest":
        raise XdsError("XDSRegistryError", f"SubmitObjectsRequest expected, got {body_el.tag}")
    normalize(body_el)
    rol = body_el.find(f"{_R}RegistryObjectList")
    if rol is None:
        raise XdsError("XDSRegistryMetadataError", "missing RegistryObjectList")
    packages = [rp for rp in rol.findall(f"{_R}RegistryPackage") if is_submission_set(rp)]
    if len(packages) != 1:
        raise XdsError("XDSRegistryMetadataError", "exactly one submission set expected")
    ss = read_submission_set(packages[0])
    entries = {}
    for eo in rol.findall(f"{_R}ExtrinsicObject"):
        m = read_document_entry(eo)
        if not m.logical_id:
            raise XdsError("XDSMetadataUpdateError", "updated entry without lid", m.entry_uuid or "")
        if m.patient_id != ss.patient_id:
            raise XdsError(
                "XDSPatientIdDoesNotMatch", "entry and submission set patients differ", m.entry_uuid or ""
            )
        entries[m.entry_uuid] = m
    associations = read_associations(rol)
    updates: list[tuple[DocumentMetadata, str]] = []
    status_updates: list[StatusUpdate] = []
    for a in associations:
        if a.source != ss.entry_uuid:
            raise XdsError("XDSMetadataUpdateError", "association not rooted at the submission set", a.id)
        if a.type == ASSOC_HAS_MEMBER and a.target in entries:
            prev = a.slots.get("PreviousVersion", [])
            if len(prev) != 1 or not prev[0]:
                raise XdsError("XDSMetadataUpdateError", "HasMember of an update needs PreviousVersion", a.id)
            updates.append((entries.pop(a.target), prev[0]))
        elif a.type == ASSOC_UPDATE_AVAILABILITY:
            orig, new = a.slots.get("OriginalStatus", []), a.slots.get("NewStatus", [])
            if len(orig) != 1 or len(new) != 1:
                raise XdsError(
                    "XDSMetadataUpdateError",
                    "UpdateAvailabilityStatus needs OriginalStatus and NewStatus",
                    a.id,
                )
            status_updates.append(StatusUpdate(a.target, orig[0], new[0]))
        else:
            raise XdsError("XDSMetadataUpdateError", f"unexpected association {a.type}", a.id)
    if entries:
        raise XdsError(
            "XDSMetadataUpdateError", "entry not linked to the submission set", ", ".join(map(str, entries))
        )
    if not updates and not status_updates:
        raise XdsError("XDSMetadataUpdateError", "the update changes nothing")
    return UpdateDocumentSet(ss, updates, status_updates, associations)


def document_content_b64(content: bytes) -> str:
    """Inline (non-MTOM) rendering of document bytes, for peers that do not accept MTOM."""
    return base64.b64encode(content).decode("ascii")
