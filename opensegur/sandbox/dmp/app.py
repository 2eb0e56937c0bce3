"""DMP sandbox: XDS.b registry + repository (ITI-41/18/43/57) and TD0.2 over SOAP 1.2 / MTOM, persistent.

It validates as strictly as the real DMP, because other editors may run their CI against it: a message the
sandbox accepts must not be refused in production for an envelope, VIHF, signature or metadata detail.

Error reporting:
- envelope, WS-Addressing, MTOM and security (VIHF) problems → SOAP 1.2 fault, ``soap:Sender`` (HTTP 400) with the
  problem code as Subcode (``VIHF_*`` from :class:`opensegur.transactions.vihf.VihfError`, ``VIHF_MODE``,
  ``XML_NON_SUR``, ``XML_INVALIDE``, ``MTOM_INVALIDE``, ``wsa:ActionMismatch``,
  ``wsa:MessageAddressingHeaderRequired``, ``TD02_FORMAT``); injected server faults are ``soap:Receiver`` (500);
- business problems → RegistryResponse (or AdhocQueryResponse / RetrieveDocumentSetResponse) status Failure with
  the IHE XDS error codes (XDSRegistryMetadataError, XDSUnknownPatientId, XDSDuplicateUniqueIdInRegistry,
  XDSPatientIdDoesNotMatch, XDSRepositoryMetadataError, XDSUnresolvedReferenceException, XDSMetadataUpdateError,
  XDSMetadataVersionError, XDSDocumentUniqueIdError, XDSUnknownRepositoryId, XDSUnknownStoredQuery) and, where
  IHE has no code and the DMP guide's codes are not public, sandbox codes: ``DMP_SBX_DMP_FERME`` (closed DMP),
  ``DMP_SBX_OPPOSITION`` (the patient opposed the feeding of the DMP, or the access mode asked),
  ``DMP_SBX_NON_AUTORISE`` (deletion or status change by someone who is not the author, consultation without
  the patient's authorisation), ``DMP_SBX_ACCES_INTERDIT`` (the patient blocked this professional or structure).

Access rules (digest §1.4-1.6): a VIHF signed with a structure certificate cannot claim ``DIRECTE`` (that needs a
CPS card); ``INDIRECTE`` is feeding-only, so queries and retrieves see only the documents of the caller's own
structure (TD3.1b) and the emergency modes are refused to it; otherwise ``MASQUE_PS`` documents are seen only by
their author. A consultation (anything but feeding, in ``INDIRECTE_RENFORCEE`` or ``DIRECTE``) is refused to a
blocked professional or structure, to a structure without the patient's authorisation outside bris de glace and
centre 15, and in a mode the patient opposed.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request, Response
from lxml import etree
from pydantic import BaseModel, Field

from opensegur.content import jdv
from opensegur.documents.metadata import Coded, DocumentMetadata, SubmissionSetMetadata
from opensegur.errors import OpenSegurError
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins
from opensegur.imaging.xdsi import KOS_FORMAT, KOS_MIME
from opensegur.sandbox.dmp.patients import (
    INS_CX_RE,
    DmpPatient,
    DmpStatus,
    PatientIdError,
    PatientRegistry,
    parse_patient_cx,
)
from opensegur.sandbox.dmp.seed import seed_demo_dmp
from opensegur.sandbox.dmp.store import ERR_FORBIDDEN, Caller, DmpStore, StoredEntry, status_short
from opensegur.sandbox.faults import FaultInjector
from opensegur.security.pki import TestPki, structure_id_of
from opensegur.transactions.td02 import (
    ACTION_TD02,
    Td02Error,
    Td02Response,
    build_td02_response,
    parse_td02_request,
)
from opensegur.transactions.vihf import VihfClaims, VihfError, find_vihf, verify_vihf
from opensegur.transactions.xades import SignedDocument, XadesError, verify_submission_set_signature
from opensegur.transactions.xds import (
    ACTION_ITI18,
    ACTION_ITI43,
    ACTION_ITI57,
    ASSOC_HAS_MEMBER,
    ITI41_ACTIONS,
    SIGNATURE_CLASS,
    SIGNATURE_FORMAT,
    SIGNATURE_TYPE,
    Association,
    Q,
    RetrievedDocument,
    StoredQuery,
    XdsError,
    XdsErrorInfo,
    build_query_response,
    build_registry_response,
    build_retrieve_response,
    parse_provide_and_register,
    parse_retrieve_request,
    parse_stored_query,
    parse_update_document_set,
    response_action,
)
from opensegur.transport.mtom import MtomError, build_mtom, parse_mtom
from opensegur.transport.soap import (
    SOAP12_NS,
    SOAP_CONTENT_TYPE,
    WSA_NS,
    SoapFaultError,
    SoapFormatError,
    action_from_content_type,
    envelope,
    fault,
    parse_envelope,
    wsa_headers,
    wsa_values,
)

__all__ = [
    "ERR_BLOCKED",
    "ERR_CLOSED",
    "ERR_FORBIDDEN",
    "ERR_OPPOSITION",
    "REPOSITORY_UNIQUE_ID",
    "TRANSACTIONS",
    "FaultConfig",
    "create_dmp_app",
]

# A 2.25 (UUID-derived) OID cannot collide with a real repository id.
REPOSITORY_UNIQUE_ID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:opensegur:sandbox:dmp:repository').int}"
ERR_CLOSED = "DMP_SBX_DMP_FERME"
ERR_OPPOSITION = "DMP_SBX_OPPOSITION"
ERR_BLOCKED = "DMP_SBX_ACCES_INTERDIT"
EMERGENCY_PURPOSES = frozenset({"bris_de_glace", "centre_15"})

TRANSACTIONS: dict[str, frozenset[str]] = {
    "iti41": ITI41_ACTIONS,
    "iti18": frozenset({ACTION_ITI18}),
    "iti43": frozenset({ACTION_ITI43}),
    "iti57": frozenset({ACTION_ITI57}),
    "td02": frozenset({ACTION_TD02}),
}
MAX_REQUEST_BYTES = 100_000_000  # CDA with embedded PDF/images reach tens of MB
MAX_SLEEP_S = 60.0

# --------------------------------------------------------------------------------------------- metadata checks

_HL7_CONFIDENTIALITY = "2.16.840.1.113883.5.25"
_UID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+(\^[^\s^&]{1,64})?$")
_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Z]{2})?$")
# The volet's mapping: the producer's IPP (…^PI), or the INS itself (…^NH) when there is no secondary identifier.
_SOURCE_PID_RE = re.compile(r"^[^\^&\s]+\^\^\^&[0-2](\.[0-9]+)+&ISO\^(PI|NH)$")

# JDV_J10 is not vendored: the formatCodes known to the content layer (ASS_A11/A12 tables of opensegur.content.jdv)
# plus those the digest sources (§2.5: CVA; §2.4: DICOM KOS). A code outside this list is refused, so add the
# J10/J60 export here (or in jdv) before feeding a new document type.
# The one non-CDA document the DMP takes: the XDS-I.b imaging manifest a DRIMbox publishes (DICOM KOS).
_EXTRA_FORMAT_CODES = (
    Coded("urn:asip:ci-sis:cva:2017", "1.2.250.1.213.1.1.4.2.282", "Carnet de vaccination électronique"),
    KOS_FORMAT,
)


def _format_codes() -> dict[tuple[str, str], Coded]:
    known = [*jdv._MEDIA_TO_FORMAT.values(), *jdv._TEMPLATE_TO_FORMAT.values(), *_EXTRA_FORMAT_CODES]
    return {(c.code, c.scheme): c for c in known}


# JDV_J59 (contentTypeCode DMP) is not vendored either: its code systems are checked, not its codes.
_CONTENT_TYPE_SCHEMES = frozenset({"1.2.250.1.213.2.2", "1.2.250.1.213.1.1.4.6", "1.2.250.1.71.4.2.4"})


def _fmt(c: Coded) -> str:
    return f"{c.code}^^{c.scheme}"


def _meta_error(message: str, location: str = "") -> XdsError:
    return XdsError("XDSRegistryMetadataError", message, location)


def _check_in(value_set: str, c: Coded, slot: str, location: str) -> None:
    if jdv.load_value_set(value_set).get(c.code, c.scheme) is None:
        raise _meta_error(f"{slot} {_fmt(c)} absent du jeu de valeurs {value_set}", location)


def validate_document(m: DocumentMetadata) -> None:
    """DMP rules for an XDSDocumentEntry beyond the ebRIM cardinalities checked by the XDS reader."""
    where = m.entry_uuid or m.unique_id
    if not _UID_RE.match(m.unique_id) or len(m.unique_id) > 128:
        raise _meta_error(f"uniqueId {m.unique_id!r} n'est pas un OID (ou OID^extension)", where)
    is_kos = (m.format_code.code, m.format_code.scheme) == (KOS_FORMAT.code, KOS_FORMAT.scheme)
    if m.mime_type != (KOS_MIME if is_kos else "text/xml"):
        raise _meta_error(
            f"mimeType {m.mime_type!r} : le DMP n'accepte que des documents CDA (text/xml) et des manifestes "
            f"d'imagerie DICOM KOS ({KOS_MIME}, formatCode {KOS_FORMAT.code})",
            where,
        )
    if not _LANG_RE.match(m.language_code):
        raise _meta_error(f"languageCode {m.language_code!r} invalide (ex. fr-FR)", where)
    if jdv.CLASS_CODES.get(m.class_code.code) is None or m.class_code.scheme != jdv.CLASS_CODE_SCHEME:
        raise _meta_error(
            f"classCode {_fmt(m.class_code)} absent du jeu de valeurs JDV_J06_XdsClassCode", where
        )
    _check_in(jdv.JDV_TYPE_CODE, m.type_code, "typeCode", where)
    expected_class = jdv.class_code_for_type(m.type_code.code)
    if expected_class is not None and expected_class.code != m.class_code.code:
        raise _meta_error(
            f"classCode {m.class_code.code} incohérent avec typeCode {m.type_code.code} "
            f"(attendu {expected_class.code}, ASS_X04)",
            where,
        )
    if (m.format_code.code, m.format_code.scheme) not in _format_codes():
        raise _meta_error(
            f"formatCode {_fmt(m.format_code)} absent du jeu de valeurs JDV_J10_XdsFormatCode", where
        )
    _check_in(
        jdv.JDV_HEALTHCARE_FACILITY, m.healthcare_facility_type_code, "healthcareFacilityTypeCode", where
    )
    _check_in(jdv.JDV_PRACTICE_SETTING, m.practice_setting_code, "practiceSettingCode", where)
    _check_confidentiality(m.confidentiality_codes, where)
    if not m.authors or not any(a.person or a.institutions for a in m.authors):
        raise _meta_error("author : au moins un auteur avec authorPerson ou authorInstitution", where)
    for a in m.authors:
        for spec in a.specialties:
            parts = spec.split("^")
            if len(parts) < 3 or not parts[0]:
                raise _meta_error(f"authorSpecialty {spec!r} n'est pas un CE code^libellé^système", where)
            _check_in(jdv.JDV_AUTHOR_SPECIALTY, Coded(parts[0], parts[-1]), "authorSpecialty", where)
    if m.source_patient_id is not None and not _SOURCE_PID_RE.match(m.source_patient_id):
        raise _meta_error(
            f"sourcePatientId {m.source_patient_id!r} n'est ni un IPP (CX …^PI) ni l'INS (CX …^NH)", where
        )


def _check_confidentiality(codes: list[Coded], where: str) -> None:
    if not codes:
        raise _meta_error("confidentialityCode obligatoire", where)
    for c in codes:
        _check_in(jdv.JDV_CONFIDENTIALITY, c, "confidentialityCode", where)
    hl7 = [c for c in codes if c.scheme == _HL7_CONFIDENTIALITY]
    if len(hl7) != 1:
        raise _meta_error(
            "confidentialityCode : exactement un code N, R ou V attendu (2.16.840.1.113883.5.25)", where
        )


def validate_signature_entry(m: DocumentMetadata) -> None:
    where = m.entry_uuid or m.unique_id
    for slot, got, expected in (
        ("classCode", m.class_code, SIGNATURE_CLASS),
        ("typeCode", m.type_code, SIGNATURE_TYPE),
        ("formatCode", m.format_code, SIGNATURE_FORMAT),
    ):
        if (got.code, got.scheme) != (expected.code, expected.scheme):
            raise _meta_error(f"entrée de signature : {slot} {_fmt(got)} au lieu de {_fmt(expected)}", where)
    _check_confidentiality(m.confidentiality_codes, where)


def validate_submission_set(ss: SubmissionSetMetadata) -> None:
    where = ss.entry_uuid or ss.unique_id
    if not _OID_RE.match(ss.unique_id) or len(ss.unique_id) > 64:
        raise _meta_error(f"XDSSubmissionSet.uniqueId {ss.unique_id!r} n'est pas un OID", where)
    if not _OID_RE.match(ss.source_id):
        raise _meta_error(f"XDSSubmissionSet.sourceId {ss.source_id!r} n'est pas un OID", where)
    if ss.content_type_code.scheme not in _CONTENT_TYPE_SCHEMES:
        raise _meta_error(
            f"contentTypeCode {_fmt(ss.content_type_code)} hors des systèmes de JDV_J59-ContentTypeCode-DMP",
            where,
        )


# ----------------------------------------------------------------------------------------------- fault injection


class PatientFixture(BaseModel):
    """A test patient's DMP as a test or another editor's CI declares it (``PUT /dmp/_admin/patients``)."""

    matricule: str = Field(min_length=15, max_length=15)
    oid: str = Field(max_length=64)
    name: str = Field(default="", max_length=200)
    status: DmpStatus = DmpStatus.OUVERT
    closing_date: date | None = None
    closing_reason: str | None = Field(default=None, max_length=200)
    opposition_feeding: bool = False
    opposition_break_glass: bool = False
    opposition_centre_15: bool = False
    blocked: frozenset[str] = Field(default=frozenset(), max_length=100)
    authorised: frozenset[str] | None = Field(default=None, max_length=100)


class FaultConfig(BaseModel):
    latency_ms: int = Field(default=0, ge=0, le=int(MAX_SLEEP_S * 1000))
    http_status: int | None = Field(default=None, ge=400, le=599)
    soap_fault: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z_][\w.-]*$")
    timeout: bool = False
    fail_after_commit: bool = False
    count: int | None = Field(default=None, ge=1)
    transactions: list[str] | None = None


class _Faults:
    def __init__(self, timeout_sleep_s: float) -> None:
        self.timeout_sleep_s = min(timeout_sleep_s, MAX_SLEEP_S)
        self.injector: FaultInjector[FaultConfig] = FaultInjector(max_sleep_s=MAX_SLEEP_S)
        self.calls: deque[dict[str, Any]] = deque(maxlen=500)

    def take(self, transaction: str) -> FaultConfig | None:
        return self.injector.take(when=lambda c: c.transactions is None or transaction in c.transactions)


# ------------------------------------------------------------------------------------------------- SOAP layer


class _Fault(OpenSegurError):
    """Refuse the message with a SOAP fault (envelope or security problem)."""

    def __init__(self, subcode: str, reason: str, code: str = "Sender") -> None:
        super().__init__(f"{subcode}: {reason}")
        self.subcode = subcode
        self.reason = reason
        self.code = code


@dataclass
class _Outcome:
    body: bytes
    media_type: str
    status: int = 200
    result: str = "Success"
    patient: str | None = None
    committed: bool = False


@dataclass
class _Ctx:
    transaction: str
    action: str
    message_id: str
    multipart: bool
    claims: VihfClaims
    caller: Caller
    vihf_matricule: str
    vihf_oid: str
    record: dict[str, Any] = field(default_factory=dict)


def _fault_outcome(f: _Fault) -> _Outcome:
    return _Outcome(
        fault(f"soap:{f.code}", f.reason, subcode=f.subcode),
        SOAP_CONTENT_TYPE,
        400 if f.code == "Sender" else 500,
        f.subcode,
    )


_UNDERSTOOD = (
    f"{{{WSA_NS}}}",
    "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd}",
)


def _check_must_understand(headers: list[etree._Element]) -> None:
    for h in headers:
        flag = h.get(f"{{{SOAP12_NS}}}mustUnderstand", "false")
        if flag in ("true", "1") and not str(h.tag).startswith(_UNDERSTOOD):
            raise _Fault("MustUnderstand", f"en-tête {h.tag} non compris", code="MustUnderstand")


class DmpSandbox:
    """State and request handling, independent of FastAPI (the routes only read bodies and apply faults)."""

    def __init__(self, data_dir: Path, pki: TestPki, patients: PatientRegistry | None = None) -> None:
        self.store = DmpStore(data_dir, REPOSITORY_UNIQUE_ID)
        self.patients = patients or PatientRegistry()
        self.ca_pem = pki.ca_cert.read_bytes()

    # ----------------------------------------------------------------------------------------- entry point

    def handle(self, transaction: str, content_type: str, raw: bytes, record: dict[str, Any]) -> _Outcome:
        try:
            ctx, body, attachments = self._open(transaction, content_type, raw, record)
        except _Fault as f:
            return _fault_outcome(f)
        handler: Callable[[_Ctx, etree._Element, dict[str, bytes]], tuple[etree._Element, dict[str, bytes]]]
        handler = {
            "iti41": self._iti41,
            "iti18": self._iti18,
            "iti43": self._iti43,
            "iti57": self._iti57,
            "td02": self._td02,
        }[transaction]
        matricule = ctx.vihf_matricule
        try:
            response_body, out_attachments = handler(ctx, body, attachments)
            result = ctx.record.get("result", "Success")
        except _Fault as f:
            self.store.log_access(ctx.caller, matricule, transaction, f.subcode, f.reason)
            return _fault_outcome(f)
        except XdsError as exc:
            response_body, out_attachments = self._failure(transaction, exc), {}
            result = exc.code
            ctx.record["detail"] = exc.message
        self.store.log_access(ctx.caller, matricule, transaction, result, ctx.record.get("detail", ""))
        headers = wsa_headers(response_action(ctx.action), relates_to=ctx.message_id)
        env = envelope(response_body, headers)
        committed = bool(ctx.record.get("committed"))
        if ctx.multipart or out_attachments:
            media, chunks = build_mtom(env, out_attachments, action=response_action(ctx.action))
            return _Outcome(b"".join(chunks), media, 200, result, matricule, committed)
        return _Outcome(env, SOAP_CONTENT_TYPE, 200, result, matricule, committed)

    @staticmethod
    def _failure(transaction: str, exc: XdsError) -> etree._Element:
        info = [exc.info()]
        if transaction == "iti18":
            return build_query_response(status="Failure", errors=info)
        if transaction == "iti43":
            return build_retrieve_response([], info)[0]
        return build_registry_response("Failure", info)

    def _open(
        self, transaction: str, content_type: str, raw: bytes, record: dict[str, Any]
    ) -> tuple[_Ctx, etree._Element, dict[str, bytes]]:
        try:
            env_bytes, attachments = parse_mtom(content_type, raw, MAX_REQUEST_BYTES)
        except MtomError as exc:
            raise _Fault("MTOM_INVALIDE", f"message MTOM invalide : {exc}") from exc
        try:
            headers, body = parse_envelope(env_bytes, MAX_REQUEST_BYTES)
        except SoapFormatError as exc:
            if exc.unsafe:
                raise _Fault("XML_NON_SUR", f"XML non sûr refusé : {exc}") from exc
            raise _Fault("XML_INVALIDE", f"message SOAP 1.2 invalide : {exc}") from exc
        except SoapFaultError as exc:
            raise _Fault("XML_INVALIDE", "une requête ne peut pas être un soap:Fault") from exc
        _check_must_understand(headers)
        wsa = wsa_values(headers)
        action = wsa.get("Action", "")
        record["action"] = action
        if not action or not wsa.get("MessageID"):
            raise _Fault(
                "wsa:MessageAddressingHeaderRequired", "wsa:Action et wsa:MessageID sont obligatoires"
            )
        if action not in TRANSACTIONS[transaction]:
            raise _Fault(
                "wsa:ActionMismatch", f"wsa:Action {action!r} ne correspond pas au service {transaction}"
            )
        ct_action = action_from_content_type(content_type)
        if ct_action and ct_action != action:
            raise _Fault(
                "wsa:ActionMismatch", f"action du Content-Type {ct_action!r} ≠ wsa:Action {action!r}"
            )
        try:
            claims = verify_vihf(find_vihf(headers), self.ca_pem)
        except VihfError as exc:
            raise _Fault(exc.code, f"VIHF refusé : {exc.message}") from exc
        vctx = claims.context
        if structure_id_of(claims.signer) is not None and vctx.authentication_mode == "DIRECTE":
            raise _Fault(
                "VIHF_MODE",
                "VIHF signé par un certificat de structure : Authentification_Mode INDIRECTE (ou "
                "INDIRECTE_RENFORCEE) attendu, DIRECTE exige une carte CPx",
            )
        # verify_vihf checked the CX shape and the INS OID; the key is checked against the request's patientId,
        # so that a bad key is reported as the metadata error it is.
        match = INS_CX_RE.match(vctx.patient_ins)
        if match is None:
            raise _Fault("VIHF_INS", f"resource-id {vctx.patient_ins!r} n'est pas un INS CX")
        caller = Caller(
            subject_id=vctx.subject_id,
            subject_name=vctx.subject_name,
            structure_id=vctx.structure_id,
            authentication_mode=vctx.authentication_mode,
            purpose_of_use=vctx.purpose_of_use,
            patient_cx=vctx.patient_ins,
        )
        record.update(subject=vctx.subject_id, structure=vctx.structure_id, patient=match["matricule"])
        ctx = _Ctx(
            transaction,
            action,
            wsa["MessageID"],
            content_type.lower().startswith("multipart/"),
            claims,
            caller,
            match["matricule"],
            match["oid"],
            record,
        )
        return ctx, body, attachments

    # ---------------------------------------------------------------------------------------- patient rules

    def _patient(self, ctx: _Ctx, cx: str, *, feeding: bool) -> tuple[Ins, DmpPatient]:
        try:
            ins = parse_patient_cx(cx)
        except PatientIdError as exc:
            raise _meta_error(str(exc)) from exc
        if ins.matricule != ctx.vihf_matricule or ins.oid != ctx.vihf_oid:
            raise XdsError(
                "XDSPatientIdDoesNotMatch",
                f"le patientId {cx} diffère de l'INS du VIHF (resource-id {ctx.caller.patient_cx})",
            )
        patient = self.patients.lookup(ins)
        if patient.status == DmpStatus.INEXISTANT:
            raise XdsError("XDSUnknownPatientId", f"aucun DMP pour le patient {ins.matricule}")
        if patient.status == DmpStatus.FERME:
            raise XdsError(
                ERR_CLOSED,
                f"le DMP du patient est fermé depuis le {patient.closing_date} ({patient.closing_reason})",
            )
        if feeding and patient.opposition_feeding:
            raise XdsError(ERR_OPPOSITION, "le patient s'est opposé à l'alimentation de son DMP")
        if not feeding:
            _check_consultation(ctx.caller, patient)
        return ins, patient

    def _visible(self, ctx: _Ctx, e: StoredEntry) -> bool:
        if e.metadata.patient_id.split("^", 1)[0] != ctx.vihf_matricule:
            return False
        if ctx.caller.authentication_mode == "INDIRECTE":
            # Indirect authentication is feeding-only: it finds back its own structure's documents (TD3.1b).
            return ctx.caller.structure_id in {e.submitter_structure, e.author_structure}
        masked = any(c.code == "MASQUE_PS" for c in e.metadata.confidentiality_codes)
        return not masked or e.authored_by(ctx.caller)

    # ------------------------------------------------------------------------------------------------ ITI-41

    def _iti41(
        self, ctx: _Ctx, body: etree._Element, attachments: dict[str, bytes]
    ) -> tuple[etree._Element, dict[str, bytes]]:
        sub = parse_provide_and_register(body, attachments)
        ss = sub.submission_set
        ins, _patient = self._patient(ctx, ss.patient_id, feeding=True)
        validate_submission_set(ss)
        for d in sub.documents:
            validate_document(d.metadata)
            if d.metadata.mime_type == KOS_MIME and d.content[128:132] != b"DICM":
                # PS3.10 §7.1: a DICOM file is a 128-byte preamble then "DICM"; anything else is not a manifest.
                raise XdsError(
                    "XDSRepositoryMetadataError",
                    "document application/dicom sans en-tête DICOM (préambule + « DICM ») : pas un manifeste KOS",
                    d.metadata.unique_id,
                )
        if sub.signature is None:
            raise _meta_error(
                "lot de soumission non signé : l'entrée de signature XAdES (classCode "
                f"{SIGNATURE_CLASS.code}) et son association signs sont obligatoires pour le DMP"
            )
        validate_signature_entry(sub.signature.metadata)
        try:
            verify_submission_set_signature(
                sub.signature.content,
                ss.unique_id,
                [
                    SignedDocument(d.metadata.unique_id, d.content, d.metadata.mime_type)
                    for d in sub.documents
                ],
                self.ca_pem,
            )
        except XadesError as exc:
            raise _meta_error(
                f"signature XAdES du lot invalide : {exc}", sub.signature.metadata.unique_id
            ) from exc
        stored = self.store.register(sub, ctx.caller, ins.matricule)
        ctx.record.update(committed=True, entries=stored)
        return build_registry_response("Success"), {}

    # ------------------------------------------------------------------------------------------------ ITI-57

    def _iti57(
        self, ctx: _Ctx, body: etree._Element, _attachments: dict[str, bytes]
    ) -> tuple[etree._Element, dict[str, bytes]]:
        upd = parse_update_document_set(body)
        ins, _patient = self._patient(ctx, upd.submission_set.patient_id, feeding=False)
        validate_submission_set(upd.submission_set)
        for m, _prev in upd.metadata_updates:
            _check_confidentiality(m.confidentiality_codes, m.entry_uuid or m.unique_id)
        self.store.update(upd, ctx.caller, ins.matricule)
        ctx.record["committed"] = True
        return build_registry_response("Success"), {}

    # ------------------------------------------------------------------------------------------------ ITI-18

    def _iti18(
        self, ctx: _Ctx, body: etree._Element, _attachments: dict[str, bytes]
    ) -> tuple[etree._Element, dict[str, bytes]]:
        q = parse_stored_query(body)
        ctx.record["query"] = q.name  # which stored query, for the call log of an editor's CI
        return_type: Literal["LeafClass", "ObjectRef"] = (
            "ObjectRef" if q.return_type == "ObjectRef" else "LeafClass"
        )
        docs: list[DocumentMetadata] = []
        sets: list[SubmissionSetMetadata] = []
        assocs: list[Association] = []
        if q.query_id == Q.FIND_DOCUMENTS:
            self._patient(ctx, q.one("$XDSDocumentEntryPatientId") or "", feeding=False)
            found = self.store.find_entries(
                patient_cx=q.one("$XDSDocumentEntryPatientId"),
                statuses=q.parameters.get("$XDSDocumentEntryStatus", []),
            )
            docs = [e.metadata for e in found if self._visible(ctx, e) and _matches(q, e.metadata)]
        elif q.query_id == Q.FIND_SUBMISSION_SETS:
            cx = q.one("$XDSSubmissionSetPatientId") or ""
            self._patient(ctx, cx, feeding=False)
            statuses = {status_short(s) for s in q.parameters.get("$XDSSubmissionSetStatus", [])}
            if "Approved" in statuses:  # submission sets are never deprecated
                sources = q.parameters.get("$XDSSubmissionSetSourceId")
                since, until = (q.one(f"$XDSSubmissionSetSubmissionTime{b}") for b in ("From", "To"))
                # The criteria first: each visibility check reads the set's members.
                sets = [
                    s
                    for s in self.store.find_submission_sets(patient_cx=cx)
                    if (not sources or s.source_id in sources)
                    and _in_range(s.submission_time, since, until)
                    and self._set_visible(ctx, s)
                ]
        elif q.query_id in (Q.GET_DOCUMENTS, Q.GET_DOCUMENTS_AND_ASSOCIATIONS):
            self._patient(ctx, ctx.caller.patient_cx, feeding=False)
            uuids = q.parameters.get("$XDSDocumentEntryEntryUUID")
            uids = q.parameters.get("$XDSDocumentEntryUniqueId")
            found = (
                self.store.find_entries(entry_uuids=uuids)
                if uuids
                else self.store.find_entries(unique_ids=uids)
            )
            visible = [e for e in found if self._visible(ctx, e)]
            docs = [e.metadata for e in visible]
            if q.query_id == Q.GET_DOCUMENTS_AND_ASSOCIATIONS and visible:
                assocs = self.store.find_associations([e.entry_uuid for e in visible])
        elif q.query_id in (Q.GET_ASSOCIATIONS, Q.GET_SUBMISSION_SETS):
            self._patient(ctx, ctx.caller.patient_cx, feeding=False)
            owned = self._owned_ids(ctx, q.parameters.get("$uuid", []))
            found_assocs = self.store.find_associations(owned) if owned else []
            if q.query_id == Q.GET_ASSOCIATIONS:
                assocs = found_assocs
            else:
                members = [a for a in found_assocs if a.type == ASSOC_HAS_MEMBER and a.target in owned]
                set_ids = list(dict.fromkeys(a.source for a in members))
                sets = self.store.find_submission_sets(entry_uuids=set_ids) if set_ids else []
                assocs = members
        else:
            raise XdsError(
                "XDSUnknownStoredQuery", f"requête {q.name} non prise en charge par le DMP", q.query_id
            )
        ctx.record["found"] = len(docs) + len(sets) + len(assocs)
        return build_query_response(docs, sets, assocs, return_type=return_type), {}

    def _owned_ids(self, ctx: _Ctx, ids: list[str]) -> list[str]:
        """Those of ``ids`` that are visible entries or submission sets of the VIHF's patient."""
        entries = [e.entry_uuid for e in self.store.find_entries(entry_uuids=ids) if self._visible(ctx, e)]
        sets = [
            s.entry_uuid or ""
            for s in self.store.find_submission_sets(entry_uuids=ids)
            if s.patient_id.split("^", 1)[0] == ctx.vihf_matricule and self._set_visible(ctx, s)
        ]
        return entries + sets

    def _set_visible(self, ctx: _Ctx, ss: SubmissionSetMetadata) -> bool:
        members = [
            a.target for a in self.store.find_associations([ss.entry_uuid or ""]) if a.source == ss.entry_uuid
        ]
        return any(self._visible(ctx, e) for e in self.store.find_entries(entry_uuids=members))

    # ------------------------------------------------------------------------------------------------ ITI-43

    def _iti43(
        self, ctx: _Ctx, body: etree._Element, _attachments: dict[str, bytes]
    ) -> tuple[etree._Element, dict[str, bytes]]:
        requests = parse_retrieve_request(body)
        self._patient(ctx, ctx.caller.patient_cx, feeding=False)
        docs: list[RetrievedDocument] = []
        errors: list[XdsErrorInfo] = []
        for r in requests:
            if r.repository_unique_id != REPOSITORY_UNIQUE_ID:
                errors.append(
                    XdsErrorInfo(
                        "XDSUnknownRepositoryId",
                        f"dépôt {r.repository_unique_id} inconnu (attendu {REPOSITORY_UNIQUE_ID})",
                        r.document_unique_id,
                    )
                )
                continue
            live = [
                e
                for e in self.store.find_entries(unique_ids=[r.document_unique_id])
                if e.status != "Deleted" and self._visible(ctx, e)
            ]
            if not live:
                # Deleted, another patient's or not visible: the same answer, so existence does not leak.
                errors.append(
                    XdsErrorInfo(
                        "XDSDocumentUniqueIdError",
                        f"document {r.document_unique_id} introuvable",
                        r.document_unique_id,
                    )
                )
                continue
            e = live[0]
            docs.append(
                RetrievedDocument(
                    REPOSITORY_UNIQUE_ID, r.document_unique_id, e.metadata.mime_type, self.store.content(e)
                )
            )
        if errors and not docs:
            ctx.record["result"] = errors[0].code
        resp, attachments = build_retrieve_response(docs, errors)
        return resp, attachments

    # ------------------------------------------------------------------------------------------------ TD0.2

    def _td02(
        self, ctx: _Ctx, body: etree._Element, _attachments: dict[str, bytes]
    ) -> tuple[etree._Element, dict[str, bytes]]:
        try:
            req = parse_td02_request(body)
            ins = parse_patient_cx(req.ins_cx)
        except (Td02Error, PatientIdError) as exc:
            raise _Fault("TD02_FORMAT", str(exc)) from exc
        if (ins.matricule, ins.oid) != (ctx.vihf_matricule, ctx.vihf_oid):
            raise _Fault("VIHF_INS", "l'INS interrogé diffère de l'INS du VIHF (resource-id)")
        patient = self.patients.lookup(ins)
        if patient.status == DmpStatus.INEXISTANT:
            authorisation = "NON_AUTORISE"
        elif {ctx.caller.structure_id, ctx.caller.subject_id} & patient.blocked:
            authorisation = "INTERDIT"
        elif patient.authorised is not None and ctx.caller.structure_id not in patient.authorised:
            authorisation = "NON_AUTORISE"
        else:
            authorisation = "AUTORISE"
        ctx.record["result"] = patient.status.value
        return build_td02_response(
            Td02Response(
                status=patient.status.value,
                closing_date=patient.closing_date,
                closing_reason=patient.closing_reason,
                opposition_feeding=patient.opposition_feeding,
                opposition_break_glass=patient.opposition_break_glass,
                opposition_centre_15=patient.opposition_centre_15,
                authorisation=authorisation,
                treating_physician=False,
                mon_espace_sante=patient.status == DmpStatus.OUVERT,
            )
        ), {}


def _check_consultation(caller: Caller, patient: DmpPatient) -> None:
    """The DMP's consultation rules for a query, a retrieve or an update outside feeding (module docstring)."""
    emergency = caller.purpose_of_use in EMERGENCY_PURPOSES
    if caller.authentication_mode == "INDIRECTE":
        if emergency:
            raise XdsError(
                ERR_FORBIDDEN,
                "accès en bris de glace ou centre 15 refusé en authentification INDIRECTE : un professionnel "
                "authentifié (INDIRECTE_RENFORCEE ou DIRECTE) est requis",
            )
        return  # feeding software finding back its own documents: _visible limits what it sees
    if {caller.structure_id, caller.subject_id} & patient.blocked:
        raise XdsError(ERR_BLOCKED, "le patient a bloqué l'accès de ce professionnel ou de cette structure")
    if caller.purpose_of_use == "bris_de_glace" and patient.opposition_break_glass:
        raise XdsError(ERR_OPPOSITION, "le patient s'est opposé à l'accès à son DMP en bris de glace")
    if caller.purpose_of_use == "centre_15" and patient.opposition_centre_15:
        raise XdsError(ERR_OPPOSITION, "le patient s'est opposé à l'accès à son DMP par un centre 15")
    if not emergency and patient.authorised is not None and caller.structure_id not in patient.authorised:
        raise XdsError(ERR_FORBIDDEN, "la structure n'a pas l'autorisation d'accès du patient à son DMP")


# ---------------------------------------------------------------------------------------------- query filters

_CODE_PARAMS: dict[str, Callable[[DocumentMetadata], list[Coded]]] = {
    "$XDSDocumentEntryClassCode": lambda m: [m.class_code],
    "$XDSDocumentEntryTypeCode": lambda m: [m.type_code],
    "$XDSDocumentEntryFormatCode": lambda m: [m.format_code],
    "$XDSDocumentEntryPracticeSettingCode": lambda m: [m.practice_setting_code],
    "$XDSDocumentEntryHealthcareFacilityTypeCode": lambda m: [m.healthcare_facility_type_code],
    "$XDSDocumentEntryConfidentialityCode": lambda m: m.confidentiality_codes,
    "$XDSDocumentEntryEventCodeList": lambda m: m.event_codes,
}
_TIME_PARAMS: dict[str, tuple[Callable[[DocumentMetadata], str | None], bool]] = {
    "$XDSDocumentEntryCreationTimeFrom": (lambda m: m.creation_time, True),
    "$XDSDocumentEntryCreationTimeTo": (lambda m: m.creation_time, False),
    "$XDSDocumentEntryServiceStartTimeFrom": (lambda m: m.service_start_time, True),
    "$XDSDocumentEntryServiceStartTimeTo": (lambda m: m.service_start_time, False),
    "$XDSDocumentEntryServiceStopTimeFrom": (lambda m: m.service_stop_time, True),
    "$XDSDocumentEntryServiceStopTimeTo": (lambda m: m.service_stop_time, False),
}


def _code_key(value: str) -> tuple[str, str]:
    code, _, scheme = value.partition("^^")
    return code, scheme


def _matches(q: StoredQuery, m: DocumentMetadata) -> bool:
    for name, getter in _CODE_PARAMS.items():
        wanted = q.parameters.get(name)
        if wanted:
            have = {(c.code, c.scheme) for c in getter(m)}
            keys = {_code_key(v) for v in wanted}
            if not any(
                (code, scheme) in have if scheme else code in {h[0] for h in have} for code, scheme in keys
            ):
                return False
    for name, (time_of, lower) in _TIME_PARAMS.items():
        bound = q.one(name)
        if bound is None:
            continue
        if not _in_range(time_of(m), bound if lower else None, None if lower else bound):
            return False
    return True


def _in_range(value: str | None, since: str | None, until: str | None) -> bool:
    """A DTM within [since, until) (ITI TF-2a 3.18.4.1.2.3.6), compared padded to seconds as IHE compares DTMs
    of different precision; a missing value is outside any bound."""
    if since is None and until is None:
        return True
    if value is None:
        return False
    v = value.ljust(14, "0")
    return (since is None or v >= since.ljust(14, "0")) and (until is None or v < until.ljust(14, "0"))


# ------------------------------------------------------------------------------------------------ FastAPI app


def create_dmp_app(
    data_dir: Path,
    pki: TestPki,
    *,
    prefix: str = "/dmp",
    patients: PatientRegistry | None = None,
    timeout_sleep_s: float = MAX_SLEEP_S,
    demo_content: Sequence[DmpPatient] = (),
) -> FastAPI:
    """The DMP sandbox; mount it with ``app.include_router(create_dmp_app(...).router)``. ``demo_content``: the
    patients whose open DMP gets the demo documents (once; see ``seed``)."""
    sandbox = DmpSandbox(data_dir, pki, patients)
    if demo_content:
        seed_demo_dmp(sandbox.store, list(demo_content))
    faults = _Faults(timeout_sleep_s)
    app = FastAPI(title="OpenSégur DMP sandbox", docs_url=None, redoc_url=None)
    app.state.dmp = sandbox
    app.state.dmp_faults = faults

    async def serve(transaction: str, request: Request) -> Response:
        record: dict[str, Any] = {"at": datetime.now(UTC).isoformat(), "transaction": transaction}
        faults.calls.append(record)
        cfg = faults.take(transaction)
        if cfg is not None:
            record["injected"] = cfg.model_dump()
            if cfg.latency_ms:
                await faults.injector.sleep(cfg.latency_ms / 1000)
            if cfg.timeout:
                await faults.injector.sleep(faults.timeout_sleep_s)
                record["status"] = 504
                return Response("sandbox: injected timeout", status_code=504, media_type="text/plain")
            if cfg.http_status is not None and not cfg.fail_after_commit:
                record["status"] = cfg.http_status
                return Response(
                    f"sandbox: injected HTTP {cfg.http_status}",
                    status_code=cfg.http_status,
                    media_type="text/plain",
                )
            if cfg.soap_fault:
                record.update(status=500, result=cfg.soap_fault)
                body = fault(
                    "soap:Receiver", "Erreur injectée par le bac à sable DMP.", subcode=cfg.soap_fault
                )
                return Response(body, status_code=500, media_type=SOAP_CONTENT_TYPE)
        size = 0
        chunks: list[bytes] = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_REQUEST_BYTES:
                record.update(status=413, result="TOO_LARGE")
                return Response(
                    fault("soap:Sender", "Requête trop volumineuse.", subcode="TAILLE"),
                    status_code=413,
                    media_type=SOAP_CONTENT_TYPE,
                )
            chunks.append(chunk)
        raw = b"".join(chunks)
        outcome = await asyncio.to_thread(
            sandbox.handle, transaction, request.headers.get("content-type", ""), raw, record
        )
        record.update(status=outcome.status, result=outcome.result)
        if cfg is not None and cfg.fail_after_commit:
            # The work is done (and committed when it succeeded): the client must not trust its retry logic
            # to know that, only a query.
            status = cfg.http_status or 500
            record.update(status=status, fail_after_commit=True)
            return Response(
                f"sandbox: injected HTTP {status} after commit", status_code=status, media_type="text/plain"
            )
        return Response(outcome.body, status_code=outcome.status, media_type=outcome.media_type)

    def endpoint_for(transaction: str) -> Callable[[Request], Awaitable[Response]]:
        # A closure, not a defaulted parameter: FastAPI would read that one from the query string.
        async def endpoint(request: Request) -> Response:
            return await serve(transaction, request)

        return endpoint

    for name in TRANSACTIONS:
        app.add_api_route(f"{prefix}/{name}", endpoint_for(name), methods=["POST"], name=f"dmp_{name}")

    @app.get(f"{prefix}/inspect")
    async def inspect(patient: str = Query(min_length=15, max_length=15)) -> dict[str, Any]:
        found = sandbox.patients.by_matricule(patient.upper())
        entries = await asyncio.to_thread(sandbox.store.inspect, patient.upper())
        return {
            "patient": patient.upper(),
            "dmp": found.status.value if found else None,
            "entries": entries,
        }

    @app.get(f"{prefix}/access-history")
    async def access_history(patient: str = Query(min_length=15, max_length=15)) -> dict[str, Any]:
        history = await asyncio.to_thread(sandbox.store.access_history, patient.upper())
        return {"patient": patient.upper(), "accesses": history}

    @app.put(f"{prefix}/_admin/patients")
    async def declare_patient(fixture: PatientFixture) -> dict[str, Any]:
        try:
            ins = Ins.parse(fixture.matricule, fixture.oid)
        except IdentityError as exc:
            raise HTTPException(422, f"INS refusé : {exc.message}") from exc
        fields = fixture.model_dump(exclude={"matricule", "oid"})
        sandbox.patients.add(DmpPatient(ins.matricule, ins.oid, **fields))
        return {"patient": ins.matricule, "oid": ins.oid, "dmp": fixture.status.value}

    @app.get(f"{prefix}/_admin/patients")
    async def listed_patients() -> list[dict[str, Any]]:
        return [
            {"patient": p.matricule, "oid": p.oid, "name": p.name, "dmp": p.status.value}
            for p in sandbox.patients.listed()
        ]

    @app.post(f"{prefix}/_admin/faults")
    async def set_faults(cfg: FaultConfig) -> dict[str, Any]:
        unknown = set(cfg.transactions or ()) - set(TRANSACTIONS)
        if unknown:
            raise HTTPException(422, f"transactions inconnues : {sorted(unknown)}")
        faults.injector.set(cfg, count=cfg.count)
        return {"fault": cfg.model_dump()}

    @app.delete(f"{prefix}/_admin/faults")
    async def clear_faults() -> dict[str, Any]:
        faults.injector.clear()
        return {"fault": None}

    @app.get(f"{prefix}/_admin/calls")
    async def calls() -> list[dict[str, Any]]:
        return list(faults.calls)

    @app.delete(f"{prefix}/_admin/calls")
    async def clear_calls() -> dict[str, int]:
        faults.calls.clear()
        return {"calls": 0}

    return app
