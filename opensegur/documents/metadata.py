"""XDS metadata of one document and its submission set, as plain data.

The contract between the CI-SIS content layer (which derives it from the CDA header and the JDV value sets) and
the XDS.b transaction layer (which renders it as ebRIM for ITI-41/57 and reads it back from ITI-18). No XML here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Coded:
    """A code from a value set: ``scheme`` is the codingScheme OID (or name, e.g. ``URN``, ``ASTM``)."""

    code: str
    scheme: str
    display: str = ""


@dataclass(frozen=True)
class XdsAuthor:
    """One XDS author: values already rendered in the HL7 v2 datatypes the XDS slots carry."""

    person: str | None = None  # XCN, e.g. "801234567897^RÉAULT^Pierre^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    institutions: tuple[str, ...] = ()  # XON, e.g. "CHU-X^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1000897406"
    roles: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()  # "SM07^Médecine générale^1.2.250.1.71.4.2.5"
    telecom: tuple[str, ...] = ()


def xcn_id(xcn: str | None) -> str | None:
    """idNat_PS of an authorPerson XCN (first component)."""
    value = (xcn or "").split("^", 1)[0].strip()
    return value or None


def cx_of_type(cxs: Sequence[str], id_type: str) -> str | None:
    """The identifier (CX.1) of the first CX or CXi among ``cxs`` whose type code (the last component: CX.5, or a
    referenceIdList CXi's type such as ``urn:ihe:iti:xds:2013:accession``) is ``id_type``."""
    for cx in cxs:
        value, *rest = cx.split("^")
        if rest and rest[-1] == id_type and value:
            return value
    return None


def xon_name(xon: str) -> str:
    """The organisation's name of an authorInstitution XON (first component)."""
    return xon.split("^", 1)[0]


def xon_id(xon: str) -> str | None:
    """idNat_Struct of an authorInstitution XON (tenth component)."""
    parts = xon.split("^")
    return parts[9].strip() or None if len(parts) > 9 else None


@dataclass
class DocumentMetadata:
    """XDSDocumentEntry attributes (ITI-41 / ITI-57 / ITI-18)."""

    unique_id: str  # CDA ClinicalDocument/id rendered as XDS uniqueId: "root" or "root^extension"
    patient_id: str  # CX with the INS: "<matricule>^^^&<INS OID>&ISO^NH"
    mime_type: str  # "text/xml" for a CDA
    class_code: Coded
    type_code: Coded
    format_code: Coded
    healthcare_facility_type_code: Coded
    practice_setting_code: Coded
    confidentiality_codes: list[
        Coded
    ]  # "N" (or R/V) plus MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REPRESENTANTS_LEGAUX
    creation_time: str  # UTC, YYYYMMDDhhmmss (XDS DTM)
    language_code: str = "fr-FR"
    title: str = ""
    comments: str = ""
    authors: list[XdsAuthor] = field(default_factory=list)
    legal_authenticator: str | None = None  # XCN
    service_start_time: str | None = None
    service_stop_time: str | None = None
    event_codes: list[Coded] = field(default_factory=list)
    source_patient_id: str | None = None  # CX with the IPP: "<IPP>^^^&<authority OID>&ISO^PI"
    source_patient_info: list[str] = field(
        default_factory=list
    )  # "PID-5|NOM^Prénom^^^^^L", "PID-7|…", "PID-8|F"
    reference_ids: list[str] = field(default_factory=list)  # referenceIdList (CXi), e.g. the stay number
    size: int | None = None
    hash_sha1: str | None = None
    entry_uuid: str | None = None  # "urn:uuid:…"; assigned when building the submission when absent
    repository_unique_id: str | None = None  # set by the repository (ITI-18 answers)
    availability_status: str | None = None  # Approved / Deprecated (ITI-18 answers and ITI-57 updates)
    version: str | None = None  # rim:VersionInfo of the entry (ITI-57 needs the previous lid and version)
    logical_id: str | None = None  # lid (ITI-57)

    @property
    def act_time(self) -> str | None:
        """When the act took place (serviceStartTime), else when the document was created: the date a list of
        documents shows, sorts by and a search bounds."""
        return self.service_start_time or self.creation_time


@dataclass
class SubmissionSetMetadata:
    unique_id: str  # OID generated per submission
    source_id: str  # OID of the sending system (the platform's, per structure)
    patient_id: str
    content_type_code: Coded  # JDV_J59 ContentTypeCode-DMP, from the stay class (PV1-2)
    submission_time: str  # UTC YYYYMMDDhhmmss
    authors: list[XdsAuthor] = field(default_factory=list)
    title: str = ""
    entry_uuid: str | None = None
    # XON|XCN|XTN values (ITI TF-3 4.2.3.3.6): who the sender meant it for, when known (XDM/XDR by mail).
    intended_recipients: list[str] = field(default_factory=list)


# ---- as JSON: the sandbox registry's rows, a document's context, the DMP tab's listing -------------------------


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _dataclass_fields(obj: object) -> dict[str, Any]:
    # json calls this for each nested dataclass (Coded, XdsAuthor): the JSON of dataclasses.asdict, without its
    # deep copy of every value.
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: getattr(obj, name) for name in _field_names(type(obj))}
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def metadata_to_json(m: DocumentMetadata | SubmissionSetMetadata) -> str:
    return json.dumps(m, ensure_ascii=False, default=_dataclass_fields)


def coded_from_dict(d: dict[str, str]) -> Coded:
    return Coded(d["code"], d["scheme"], d.get("display", ""))


def author_from_dict(d: dict[str, Any]) -> XdsAuthor:
    return XdsAuthor(
        person=d.get("person"),
        institutions=tuple(d.get("institutions", ())),
        roles=tuple(d.get("roles", ())),
        specialties=tuple(d.get("specialties", ())),
        telecom=tuple(d.get("telecom", ())),
    )


def metadata_from_dict(data: dict[str, Any]) -> DocumentMetadata:
    """The inverse of ``dataclasses.asdict`` (or of :func:`metadata_to_json` once parsed)."""
    d = dict(data)
    for name in (
        "class_code",
        "type_code",
        "format_code",
        "healthcare_facility_type_code",
        "practice_setting_code",
    ):
        d[name] = coded_from_dict(d[name])
    d["confidentiality_codes"] = [coded_from_dict(c) for c in d.get("confidentiality_codes", [])]
    d["event_codes"] = [coded_from_dict(c) for c in d.get("event_codes", [])]
    d["authors"] = [author_from_dict(a) for a in d.get("authors", [])]
    return DocumentMetadata(**d)


def metadata_from_json(text: str) -> DocumentMetadata:
    return metadata_from_dict(json.loads(text))
