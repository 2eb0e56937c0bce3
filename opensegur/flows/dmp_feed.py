"""Flow: a document accepted from the DPI → validated → (waiting for a qualified identity) → sent to the DMP → ZAM.

Each step is a job, so a crash at any point resumes where it stopped:
- ``document.process``: validation (XSD, CI-SIS schematrons), identity and consent gates, XDS metadata, then
  one delivery per destination;
- ``dmp.deliver``: the XDS.b transaction; before re-sending after an uncertain attempt it asks the DMP whether
  the uniqueId is already there, so a document reaches the DMP at most once; a replacement or a deletion
  waits for the delivery of the document it refers to;
- ``zam.send``: the business acknowledgement back to the DPI.
The DMP is reached through ``DmpPort`` and the DPI through ``ZamPort``: this module builds no XML.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, cast

from sqlalchemy import Row, Table, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from opensegur.content.cda import CdaError, CdaHeader, parse_cda
from opensegur.content.validation import CdaValidator, Finding
from opensegur.content.validation import Source as FindingSource
from opensegur.content.xds_metadata import MetadataError, document_metadata
from opensegur.documents.delivery import DeliveryStatus, give_up, set_delivery_status
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.documents.metadata import DocumentMetadata, metadata_from_dict
from opensegur.errors import RetryLater
from opensegur.flows.dmp_consult import patient_cx
from opensegur.flows.dmp_exchanges import DmpRejectedError, DmpUnavailableError, ExchangeRecord
from opensegur.flows.identity_feed import find_or_create_from_pid
from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_outbound import plan_mss_deliveries
from opensegur.flows.worker import PermanentError
from opensegur.hospital.sites import resolve_site
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins
from opensegur.identity.rniv import IdentityStatus
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.documents import document_with_content
from opensegur.store.models import (
    Delivery,
    Document,
    Exchange,
    Job,
    Patient,
    PatientIdentifier,
    Payload,
    Structure,
    utcnow,
)
from opensegur.store.payloads import store_payload
from opensegur.transactions.cda_hl7v2 import DocumentMessage
from opensegur.transactions.hl7v2 import Hl7Error

log = logging.getLogger(__name__)

CDA_MAX_BYTES = 60 * 1024 * 1024


@dataclass
class DmpOutcome:
    entry_uuid: str | None
    exchanges: list[ExchangeRecord] = field(default_factory=list)


@dataclass
class DmpRequest:
    structure: dict[str, Any]  # idnat_struct, name, secteur_activite…: what the VIHF and the submission need
    metadata: DocumentMetadata
    cda: bytes
    stay_class: str | None  # PV1-2, for the submission set contentTypeCode
    replaces_unique_id: str | None = None


class DmpPort(Protocol):
    async def find(
        self, structure: dict[str, Any], patient_cx: str, unique_id: str
    ) -> DocumentMetadata | None: ...

    async def register(self, request: DmpRequest, replaces: DocumentMetadata | None) -> DmpOutcome: ...

    async def delete(self, structure: dict[str, Any], entry: DocumentMetadata) -> DmpOutcome: ...


class ZamPort(Protocol):
    async def send(
        self, document: dict[str, Any], destination: str, ok: bool, errors: list[dict[str, str]]
    ) -> None: ...


# ---- intake (inside the transaction that stores the HL7 message, before the ACK) --------------------------


@dataclass
class Accepted:
    patient_id: int
    structure_id: int
    document_ids: list[int]
    warnings: list[Hl7Error]


def _doc_error(message: str, location: str, app_code: str = "906") -> Hl7Error:
    return Hl7Error(
        code="207", message=message, location=location, severity="E", reject=False, application_code=app_code
    )


def document_flags(
    *,
    dest_dmp: bool = True,
    dest_mssante_ps: bool = False,
    dest_mssante_pat: bool = False,
    ack_reception: bool = False,
    ack_lecture_mss: bool = False,
    connexion_secrete: bool = False,
    modif_conf_code: bool = False,
    masque_ps: bool = False,
    invisible_patient: bool = False,
    invisible_rep_legaux: bool = False,
) -> dict[str, Any]:
    """Routing and visibility of a document, the same for every intake (HL7 MetaDMPMSS, REST)."""
    return {
        "dest_dmp": dest_dmp,
        "dest_mssante_ps": dest_mssante_ps,
        "dest_mssante_pat": dest_mssante_pat,
        "ack_reception": ack_reception,
        "ack_lecture_mss": ack_lecture_mss,
        "connexion_secrete": connexion_secrete,
        "modif_conf_code": modif_conf_code,
        "confidentiality": [
            code
            for code, on in (
                ("MASQUE_PS", masque_ps),
                ("INVISIBLE_PATIENT", invisible_patient),
                ("INVISIBLE_REPRESENTANTS_LEGAUX", invisible_rep_legaux),
            )
            if on
        ],
    }


def _mssante_context(dm: DocumentMessage) -> dict[str, Any]:
    """What the MSSanté mails take from the message (mapping-mss.md): PRT RCT / REPLY, CORPSMAIL_*, NTE-4 FIN."""
    return {
        "recipients": [
            {
                "address": r.address,
                "id": r.person_id,
                "name": " ".join(n for n in (r.given_name, r.family_name) if n) or r.organization_name,
            }
            for r in dm.recipients
            if r.address
        ],
        "reply_to": dm.reply_to,
        "body_ps": dm.meta.corpsmail_ps,
        "body_patient": dm.meta.corpsmail_patient,
        "patient_no_reply": dm.meta.patient_reply_forbidden,
    }


# The document is written and queued, nothing of it read back: a Core INSERT instead of the unit of work's flush.
_DOCUMENT = cast(Table, Document.__table__)
_DELIVERY = cast(Table, Delivery.__table__)
_NEW_DOCUMENT = insert(_DOCUMENT).returning(_DOCUMENT.c.id)


def accept_document(
    s: Session, dm: DocumentMessage, sender: str, actor: str, *, business_acks: bool = True
) -> Accepted:
    """Record the documents of one MDM/ORU and queue their processing. Raises Hl7Error to refuse the message.

    ``business_acks`` says whether a DPI listens for ZAM: without one, the document keeps no ZAM context, so no
    acknowledgement is queued for nobody and its flow view does not wait for one."""
    candidates = [dm.header.sending_facility or ""]
    if dm.author is not None:
        candidates.insert(0, dm.author.organization_id or "")
    site = resolve_site(s, candidates)
    if site is None:
        raise _doc_error("Établissement émetteur inconnu : aucun site du GHT ne le déclare", "MSH^1^4")
    patient, warnings = find_or_create_from_pid(s, site, dm.patient, actor)
    warnings = warnings + list(dm.warnings)
    if dm.unique_document_id is None:
        raise Hl7Error(
            code="101",
            message="Identifiant unique du document absent",
            location="TXA^1^12",
            severity="E",
            reject=False,
        )
    unique_id = str(dm.unique_document_id)
    parent_id = str(dm.parent_document_id) if dm.parent_document_id else None
    existing = {
        d.kind: d
        for d in s.scalars(
            select(Document).where(Document.structure_id == site.id, Document.unique_id == unique_id)
        )
    }
    if dm.kind == "deletion":
        if "deletion" in existing:
            raise _doc_error("Document déjà supprimé : demande de suppression en double", "TXA^1^12", "900")
        if not ({"initial", "replacement"} & existing.keys()):
            raise _doc_error("Suppression d'un document inconnu de la plateforme", "TXA^1^12", "900")
    if dm.kind == "replacement":
        assert parent_id is not None  # the transaction layer requires it on a T10 / OBX-11 C
        if document_with_content(s, site.id, parent_id) is None:
            raise _doc_error("Remplacement d'un document inconnu de la plateforme", "TXA^1^13", "900")
    content = dm.documents[0].content if dm.documents else b""
    digest = store_payload(s, content) if content else None
    same = existing.get(dm.kind)
    if same is not None:
        if same.payload_sha256 != digest:
            raise _doc_error("Identifiant de document déjà utilisé pour un autre contenu", "TXA^1^12")
        warnings.append(
            Hl7Error(
                code="207",
                message="Document déjà reçu : il n'est pas traité une seconde fois",
                location="TXA^1^12",
                severity="W",
                reject=False,
            )
        )
        return Accepted(patient.id, site.id, [same.id], warnings)
    meta = dm.meta
    doc_id = s.execute(
        _NEW_DOCUMENT,
        dict(
            structure_id=site.id,
            patient_id=patient.id,
            source="hl7",
            kind=dm.kind,
            unique_id=unique_id,
            parent_unique_id=parent_id,
            type_code=dm.document_type.code,
            title=dm.document_type.label or None,
            payload_sha256=digest,
            mime_type="text/xml",
            size=len(content),
            status=DocumentStatus.RECEIVED,
            held=False,
            findings=[],
            flags=document_flags(
                dest_dmp=meta.dest_dmp,
                dest_mssante_ps=meta.dest_mssante_ps,
                dest_mssante_pat=meta.dest_mssante_pat,
                ack_reception=meta.ack_reception,
                ack_lecture_mss=meta.ack_lecture_mss,
                connexion_secrete=meta.connexion_secrete,
                modif_conf_code=meta.modif_conf_code,
                masque_ps=meta.masque_ps,
                invisible_patient=meta.invisible_patient,
                invisible_rep_legaux=meta.invisible_rep_legaux,
            ),
            context={
                "zam": {
                    "sending_application": dm.header.sending_application,
                    "sending_facility": dm.header.sending_facility,
                    "control_id": dm.header.control_id,
                    "processing_id": dm.header.processing_id,
                    "charset": dm.header.charset,
                    "sender": sender,
                }
                if business_acks
                else None,
                "patient_class": dm.visit.patient_class,
                "visit_number": dm.visit.visit_number,
                "visit_number_authority": dm.visit.visit_number_authority,
                "first_send": dm.kind == "initial" and not existing,
                "mssante": _mssante_context(dm),
            },
        ),
    ).scalar_one()
    jobs.enqueue(
        s,
        JobKind.PROCESS,
        f"{JobKind.PROCESS}:{doc_id}",
        {"document_id": doc_id},
        structure_id=site.id,
        patient_id=patient.id,
    )
    return Accepted(patient.id, site.id, [doc_id], warnings)


# ---- document.process -------------------------------------------------------------------------------------


@dataclass
class ProcessContext:
    db: Database
    validator: CdaValidator
    strict: bool = False


def _blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "blocking"]


def _finding(source: FindingSource, code: str, message: str, location: str = "") -> Finding:
    return Finding(severity="blocking", source=source, code=code, message=message, location=location)


class HasIns(Protocol):
    @property
    def ins_matricule(self) -> str | None: ...

    @property
    def ins_oid(self) -> str | None: ...


def patient_cx_of(doc: HasIns) -> str:
    """The DMP's patient identifier of a document: its INS as a CX."""
    return patient_cx(doc.ins_matricule or "", doc.ins_oid or "")


# Read before validation, outside the transaction that records its outcome: two columns, which an ORM session
# loaded as two entities under the write lock.
_KIND_AND_CONTENT = (
    select(Document.kind, Payload.data)
    .outerjoin(Payload, Payload.sha256 == Document.payload_sha256)
    .where(Document.id == bindparam("document_id"))
)


def process_document(ctx: ProcessContext, document_id: int) -> str:
    """Validate, apply the gates and create the deliveries. Returns the document's new status."""
    with ctx.db.read_connection() as conn:
        kind, content = conn.execute(_KIND_AND_CONTENT, {"document_id": document_id}).one()
    if kind == "deletion":
        with ctx.db.session() as s:
            doc = s.get_one(Document, document_id)
            # The DMP entry to delete is the patient's of the original document: its INS is the one to use.
            original = document_with_content(s, doc.structure_id, doc.unique_id)
            if original is None or not original.ins_matricule:
                set_status(doc, DocumentStatus.REJECTED, "Document à supprimer jamais envoyé au DMP")
                _enqueue_zam(s, doc, "DMP", ok=False)
                return doc.status
            doc.ins_matricule, doc.ins_oid = original.ins_matricule, original.ins_oid
            return _plan_deliveries(s, doc, None)
    data = content or b""
    # Validation is the costly part (schematrons): outside any transaction.
    findings: list[Finding] = []
    header: CdaHeader | None = None
    try:
        root, header = parse_cda(data, CDA_MAX_BYTES)
        findings = ctx.validator.validate(root, strict=ctx.strict)
    except CdaError as exc:
        findings = [_finding("xml", exc.code, exc.message_fr, exc.xpath or "")]
    with ctx.db.session() as s:
        doc = s.get_one(Document, document_id)
        patient = s.get(Patient, doc.patient_id) if doc.patient_id else None
        if header is not None:
            # The validator already reports a malformed INS (same code): report each problem once.
            seen = {(f.source, f.code) for f in findings}
            findings += [
                f for f in _identity_findings(doc, header, patient) if (f.source, f.code) not in seen
            ]
        doc.findings = [_finding_json(f) for f in findings]
        if _blocking(findings):
            set_status(doc, DocumentStatus.REJECTED, _blocking(findings)[0].message)
            _enqueue_zam(s, doc, "DMP", ok=False)
            return doc.status
        assert header is not None
        if patient is None or patient.status != IdentityStatus.QUAL.value:
            set_status(
                doc, DocumentStatus.WAITING_IDENTITY, "Identité du patient non qualifiée : envoi suspendu"
            )
            return doc.status
        # A first send has, by definition, no earlier copy of its uniqueId (intake refuses another content under it).
        if not doc.context.get("first_send") and _identical_already_delivered(s, doc):
            set_status(
                doc,
                DocumentStatus.ACKNOWLEDGED,
                "Contenu identique déjà présent dans le DMP : rien à renvoyer",
            )
            return doc.status
        ipp, ipp_authority = _ipp(s, patient)
        try:
            metadata = document_metadata(
                header,
                ipp=ipp,
                ipp_authority_oid=ipp_authority,
                confidentiality_flags=set(doc.flags.get("confidentiality", [])),
                size=doc.size,
                hash_sha1=None,
                # referenceIdList needs the stay number's assigning authority; without it the stay is left out.
                stay_number=doc.context.get("visit_number")
                if doc.context.get("visit_number_authority")
                else None,
                stay_authority_oid=doc.context.get("visit_number_authority"),
            )
        except MetadataError as exc:
            doc.findings = doc.findings + [
                _finding_json(_finding("metadata", exc.code, exc.message_fr, exc.field or ""))
            ]
            set_status(doc, DocumentStatus.REJECTED, exc.message_fr)
            _enqueue_zam(s, doc, "DMP", ok=False)
            return doc.status
        doc.context = {**doc.context, "metadata": asdict(metadata)}
        return _plan_deliveries(s, doc, metadata)


def _finding_json(f: Finding) -> dict[str, str]:
    return {
        "severity": f.severity,
        "source": f.source,
        "code": f.code,
        "message": f.message,
        "location": f.location or "",
    }


def _identity_findings(doc: Document, header: CdaHeader, patient: Patient | None) -> list[Finding]:
    """The CDA must name the patient by an INS, and that INS must be the local identity's."""
    ins = header.patient.ins_matricule
    oid = header.patient.ins_oid
    if not ins or not oid:
        return [_finding("identity", "INS_ABSENT", "Le document ne porte pas d'INS dans recordTarget")]
    try:
        Ins.parse(ins, oid)
    except IdentityError as exc:
        return [_finding("identity", exc.code, exc.message, "recordTarget/patientRole/id")]
    doc.ins_matricule, doc.ins_oid = ins, oid
    if (
        patient is not None
        and patient.status == IdentityStatus.QUAL.value
        and (patient.ins_matricule != ins or patient.ins_oid != oid)
    ):
        return [
            _finding(
                "identity",
                "INS_MISMATCH",
                "L'INS du document n'est pas celui de l'identité qualifiée du patient",
                "recordTarget/patientRole/id",
            )
        ]
    return []


def _opposed(patient: Patient) -> bool:
    consent = patient.dmp_consent or {}
    return "IO" in {str(v) for v in consent.values()}


def _identical_already_delivered(s: Session, doc: Document) -> bool:
    other = s.scalar(
        select(Document).where(
            Document.structure_id == doc.structure_id,
            Document.unique_id == doc.unique_id,
            Document.id != doc.id,
            Document.payload_sha256 == doc.payload_sha256,
            Document.status.in_((DocumentStatus.SENT, DocumentStatus.ACKNOWLEDGED)),
        )
    )
    return other is not None


# The patient's IPP, read as two columns: loading the identifiers as entities cost a tenth of the processing.
_IPP = (
    select(PatientIdentifier.value, PatientIdentifier.authority)
    .where(PatientIdentifier.patient_id == bindparam("patient_id"), PatientIdentifier.type_code == "PI")
    .order_by(PatientIdentifier.id)
    .limit(1)
)

_OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


def _ipp(s: Session, patient: Patient) -> tuple[str | None, str | None]:
    """The IPP and its assigning authority when that is an OID: sourcePatientId is a CX with an ISO authority, and
    an authority known only by namespace or a non-ISO id (PID-3 ``CHU-X&000897406&N``) would make the DMP refuse
    the submission; without one, the metadata fall back to the INS, as the DMP annex allows."""
    # On the connection: the session's execution would first flush the findings just set, in an UPDATE of its own.
    row = s.connection().execute(_IPP, {"patient_id": patient.id}).first()
    if row is None:
        return None, None
    return row.value, row.authority if row.authority and _OID_RE.match(row.authority) else None


_STATUS_OF_DELIVERY: dict[str, DocumentStatus] = {
    DeliveryStatus.DELIVERED: DocumentStatus.SENT,
    DeliveryStatus.SENDING: DocumentStatus.SENDING,
    DeliveryStatus.WAITING: DocumentStatus.SENDING,
    DeliveryStatus.FAILED: DocumentStatus.ERROR,
    DeliveryStatus.DEAD: DocumentStatus.ERROR,
}


# Every document's: built once, and two columns rather than an entity to load and flush.
_DELIVERY_BY_KEY = select(_DELIVERY.c.id, _DELIVERY.c.status).where(_DELIVERY.c.key == bindparam("key"))
_NEW_DELIVERY = insert(_DELIVERY).returning(_DELIVERY.c.id)


def _plan_deliveries(s: Session, doc: Document, metadata: DocumentMetadata | None) -> str:
    to_dmp = doc.flags.get("dest_dmp", True) is not False
    if doc.kind != "deletion":
        # A mail cannot be taken back: deletions concern the DMP only. MSSanté destinations do not wait for the DMP
        # and an opposition to the DMP feed does not stop them (independent exchanges, regles-gestion-mssante.md).
        planned = plan_mss_deliveries(s, doc, update_status=not to_dmp)
        patient = s.get(Patient, doc.patient_id) if doc.patient_id else None
        if to_dmp and patient is not None and _opposed(patient):
            set_status(doc, DocumentStatus.OPPOSITION, "Le patient s'est opposé à l'alimentation de son DMP")
            _enqueue_zam(s, doc, "DMP", ok=False)
            return doc.status
        if planned and not to_dmp:
            return doc.status
    if not to_dmp:
        set_status(doc, DocumentStatus.VALIDATED, "Document non destiné au DMP")
        return doc.status
    action = {"initial": "register", "replacement": "replace", "deletion": "delete"}[doc.kind]
    key = f"{doc.unique_id}:DMP:{action}"
    delivery = s.connection().execute(_DELIVERY_BY_KEY, {"key": key}).first()
    if delivery is not None and delivery.status not in (DeliveryStatus.PENDING, DeliveryStatus.HELD):
        # This job ran again (its lease expired after a crash, or a release re-queued it) while the delivery was
        # already on its way: the delivery tells where the document stands, never an earlier step.
        if not (
            delivery.status == DeliveryStatus.DELIVERED
            and doc.status in (DocumentStatus.SENT, DocumentStatus.ACKNOWLEDGED)
        ):
            set_status(doc, _STATUS_OF_DELIVERY.get(delivery.status, DocumentStatus(doc.status)))
        return doc.status
    if delivery is None:
        delivery_id = (
            s.connection()
            .execute(
                _NEW_DELIVERY,
                {
                    "document_id": doc.id,
                    "destination": "DMP",
                    "action": action,
                    "key": key,
                    "status": DeliveryStatus.HELD if doc.held else DeliveryStatus.PENDING,
                },
            )
            .scalar_one()
        )
    else:
        delivery_id = delivery.id
    set_status(doc, DocumentStatus.HELD if doc.held else DocumentStatus.VALIDATED)
    if not doc.held:
        jobs.enqueue(
            s,
            JobKind.DELIVER,
            f"{JobKind.DELIVER}:{delivery_id}",
            {"delivery_id": delivery_id},
            structure_id=doc.structure_id,
            patient_id=doc.patient_id,
        )
    return doc.status


# ---- hold / release / retry by a professional --------------------------------------------------------------


def hold(db: Database, document_id: int, actor: str) -> None:
    with db.session() as s:
        doc = s.get_one(Document, document_id)
        set_status(doc, DocumentStatus.HELD, f"Retenu par {actor}")  # refused once sent, or while sending
        doc.held = True
        for d in doc.deliveries:
            if d.status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED, DeliveryStatus.WAITING):
                set_delivery_status(d, DeliveryStatus.HELD)


def _requeue_delivery(s: Session, doc: Document, d: Delivery) -> None:
    """A new job for a delivery a human released or retried: a fresh key, since the old job is done or dead."""
    kind = JobKind.DELIVER if d.destination == "DMP" else JobKind.MSS_SEND
    jobs.enqueue(
        s,
        kind,
        f"{kind}:{d.id}:{utcnow().isoformat()}",
        {"delivery_id": d.id},
        structure_id=doc.structure_id,
        patient_id=doc.patient_id,
    )


def _requeue_processing(s: Session, doc: Document) -> None:
    jobs.enqueue(
        s,
        JobKind.PROCESS,
        f"{JobKind.PROCESS}:{doc.id}:{utcnow().isoformat()}",
        {"document_id": doc.id},
        structure_id=doc.structure_id,
        patient_id=doc.patient_id,
    )


def release(db: Database, document_id: int, actor: str) -> None:
    with db.session() as s:
        doc = s.get_one(Document, document_id)
        doc.held = False
        pending = [d for d in doc.deliveries if d.status == DeliveryStatus.HELD]
        for d in pending:
            set_delivery_status(d, DeliveryStatus.PENDING)
            _requeue_delivery(s, doc, d)
        if pending:
            set_status(doc, DocumentStatus.VALIDATED, f"Libéré par {actor}")
        else:
            set_status(doc, DocumentStatus.RECEIVED, f"Libéré par {actor}")
            _requeue_processing(s, doc)


def retry(db: Database, document_id: int, actor: str) -> int:
    """Put the failed deliveries of a document back in the queue."""
    with db.session() as s:
        doc = s.get_one(Document, document_id)
        n = 0
        for d in doc.deliveries:
            if d.status in (DeliveryStatus.FAILED, DeliveryStatus.DEAD):
                set_delivery_status(d, DeliveryStatus.PENDING)
                _requeue_delivery(s, doc, d)
                n += 1
        if n:
            set_status(doc, DocumentStatus.VALIDATED, f"Nouvel essai demandé par {actor}")
        return n


# ---- dmp.deliver ------------------------------------------------------------------------------------------


# Read at every delivery: the four columns, not the site's entity.
_SITE_INFO = select(Structure.id, Structure.finess, Structure.name, Structure.settings).where(
    Structure.id == bindparam("structure_id")
)


def structure_info(s: Session, structure_id: int) -> dict[str, Any]:
    """What the DMP client needs of a site for the VIHF and the submission set."""
    site = s.execute(_SITE_INFO, {"structure_id": structure_id}).one()
    return {
        "id": site.id,
        "finess": site.finess,
        "idnat_struct": "1" + site.finess,
        "name": site.name,
        "settings": dict(site.settings or {}),
    }


_EXCHANGE = cast(Table, Exchange.__table__)
_NEW_EXCHANGE = insert(_EXCHANGE)


def _record(
    s: Session,
    delivery: DeliveryRow,
    exchanges: list[ExchangeRecord],
    outcome: str,
    detail: str | None = None,
) -> None:
    for e in exchanges:
        s.connection().execute(
            _NEW_EXCHANGE,
            {
                "delivery_id": delivery.id,
                "document_id": delivery.document_id,
                "transaction": e.transaction,
                "endpoint": e.endpoint,
                "request_sha256": store_payload(s, e.request) if e.request else None,
                "response_sha256": store_payload(s, e.response) if e.response else None,
                "http_status": e.http_status,
                "outcome": outcome,
                "detail": detail,
                "duration_ms": e.duration_ms,
            },
        )


@dataclass
class DeliveryRow:
    """A delivery as its job reads and records it: columns, where loading the entity and its document and
    flushing them cost more than the bookkeeping itself."""

    id: int
    document_id: int
    destination: str
    action: str
    status: str
    entry_uuid: str | None


@dataclass
class DocumentRow:
    """The delivered document's columns that a delivery reads or changes (``status``, ``status_reason``)."""

    id: int
    structure_id: int
    patient_id: int | None
    kind: str
    unique_id: str
    parent_unique_id: str | None
    type_code: str | None
    payload_sha256: str | None
    ins_matricule: str | None
    ins_oid: str | None
    status: str
    status_reason: str | None
    context: dict[str, Any]


_DELIVERY_FIELDS = len(fields(DeliveryRow))
_DELIVERY_AND_DOCUMENT = (
    select(
        *(_DELIVERY.c[f.name] for f in fields(DeliveryRow)),
        *(_DOCUMENT.c[f.name] for f in fields(DocumentRow)),
    )
    .join_from(_DELIVERY, _DOCUMENT, _DOCUMENT.c.id == _DELIVERY.c.document_id)
    .where(_DELIVERY.c.id == bindparam("delivery_id"))
)
# The columns each step changes are named by its parameters; ``updated_at`` follows by its onupdate.
_UPDATE_DELIVERY = update(_DELIVERY).where(_DELIVERY.c.id == bindparam("delivery_id"))
_UPDATE_DOCUMENT = update(_DOCUMENT).where(_DOCUMENT.c.id == bindparam("document_id"))


def _read_delivery(s: Session, delivery_id: int) -> tuple[DeliveryRow, DocumentRow]:
    row = s.connection().execute(_DELIVERY_AND_DOCUMENT, {"delivery_id": delivery_id}).one()
    return DeliveryRow(*row[:_DELIVERY_FIELDS]), DocumentRow(*row[_DELIVERY_FIELDS:])


def _write_delivery(s: Session, d: DeliveryRow, **values: Any) -> None:
    s.connection().execute(_UPDATE_DELIVERY, {"delivery_id": d.id, "status": d.status, **values})


def _write_document_status(s: Session, doc: DocumentRow) -> None:
    s.connection().execute(
        _UPDATE_DOCUMENT, {"document_id": doc.id, "status": doc.status, "status_reason": doc.status_reason}
    )


DeliveryHook = Callable[[Session, DeliveryRow, DocumentRow], None]
"""Called in the transaction that records a delivery: what else the DMP's acceptance of a document starts."""


# The bytes to send, not an entity for the session to track.
_CONTENT = select(Payload.data).where(Payload.sha256 == bindparam("sha256"))


# The delivery a replacement or a deletion refers to, locked (see ``deliver``).
_PARENT = (
    select(_DELIVERY.c.id, _DELIVERY.c.status)
    .join_from(_DELIVERY, _DOCUMENT, _DOCUMENT.c.id == _DELIVERY.c.document_id)
    .where(
        _DOCUMENT.c.structure_id == bindparam("structure_id"),
        _DOCUMENT.c.unique_id == bindparam("unique_id"),
        _DELIVERY.c.destination == bindparam("destination"),
        _DELIVERY.c.action.in_(("register", "replace")),
    )
    .with_for_update(of=_DELIVERY)
)


async def deliver(
    db: Database, dmp: DmpPort, delivery_id: int, attempt: int, on_delivered: DeliveryHook | None = None
) -> dict[str, Any]:
    def _load() -> tuple[DeliveryRow, DocumentRow, dict[str, Any], bytes, Row[Any, Any] | None]:
        with db.session() as s:
            d, doc = _read_delivery(s, delivery_id)
            parent = None
            if doc.kind in ("replacement", "deletion"):
                parent_unique = doc.parent_unique_id if doc.kind == "replacement" else doc.unique_id
                # Locked so that the parent's delivery cannot commit between this check and the "waiting" mark
                # below: _delivered wakes the waiting deliveries it sees (PostgreSQL; SQLite serialises writers).
                parent = (
                    s.connection()
                    .execute(
                        _PARENT,
                        {
                            "structure_id": doc.structure_id,
                            "unique_id": parent_unique,
                            "destination": d.destination,
                        },
                    )
                    .first()
                )
            data = (
                s.execute(_CONTENT, {"sha256": doc.payload_sha256}).scalar_one()
                if doc.payload_sha256
                else b""
            )
            waits = (
                doc.kind in ("replacement", "deletion")
                and (parent is not None or doc.kind == "replacement")
                and (parent is None or parent.status != DeliveryStatus.DELIVERED)
            )
            if d.status in (DeliveryStatus.HELD, DeliveryStatus.DELIVERED):
                pass
            elif waits:
                # Never overtake the document this one refers to; its delivery wakes this one up.
                set_delivery_status(d, DeliveryStatus.WAITING)
                _write_delivery(s, d)
                set_status(
                    doc, DocumentStatus.VALIDATED, "En attente de l'envoi au DMP du document d'origine"
                )
                _write_document_status(s, doc)
            else:
                set_delivery_status(d, DeliveryStatus.SENDING)
                _write_delivery(s, d, submitted_at=utcnow())
                set_status(doc, DocumentStatus.SENDING)
                _write_document_status(s, doc)
            return d, doc, structure_info(s, doc.structure_id), data, parent

    d, doc, structure, data, parent = await asyncio.to_thread(_load)
    if d.status == DeliveryStatus.DELIVERED:
        return {"skipped": "already delivered"}
    if d.status == DeliveryStatus.HELD:
        return {"skipped": "held"}
    if d.status == DeliveryStatus.WAITING:
        return {"waiting": parent.id if parent is not None else None}
    if doc.kind == "deletion" and parent is None:
        message = "Suppression d'un document jamais envoyé au DMP"
        await asyncio.to_thread(_failed, db, delivery_id, "XDSUnknownDocument", message, [], False)
        raise PermanentError(message)
    stored = doc.context.get("metadata")
    metadata = metadata_from_dict(stored) if stored else None
    patient_cx = patient_cx_of(doc)
    try:
        if attempt > 1 and d.action in ("register", "replace"):
            # The previous attempt may have reached the DMP before failing: ask before sending again.
            existing = await dmp.find(structure, patient_cx, doc.unique_id)
            if existing is not None:
                await asyncio.to_thread(
                    _delivered, db, delivery_id, existing.entry_uuid, [], "already present", on_delivered
                )
                return {"entry_uuid": existing.entry_uuid, "found": True}
        if d.action == "delete":
            target = await dmp.find(structure, patient_cx, doc.unique_id)
            if target is None:
                raise DmpRejectedError("XDSUnknownDocument", "Document à supprimer absent du DMP")
            outcome = await dmp.delete(structure, target)
        else:
            assert metadata is not None
            replaces = None
            if d.action == "replace":
                replaces = await dmp.find(structure, patient_cx, doc.parent_unique_id or "")
                if replaces is None:
                    raise DmpRejectedError("XDSUnknownDocument", "Document remplacé absent du DMP")
            outcome = await dmp.register(
                DmpRequest(
                    structure,
                    metadata,
                    data,
                    doc.context.get("patient_class"),
                    doc.parent_unique_id if d.action == "replace" else None,
                ),
                replaces,
            )
    except DmpUnavailableError as exc:
        await asyncio.to_thread(_failed, db, delivery_id, "DMP_UNAVAILABLE", str(exc), exc.exchanges, True)
        raise RetryLater(str(exc), outage=exc.outage) from exc
    except DmpRejectedError as exc:
        await asyncio.to_thread(_failed, db, delivery_id, exc.code, exc.message, exc.exchanges, False)
        raise PermanentError(str(exc)) from exc
    await asyncio.to_thread(
        _delivered, db, delivery_id, outcome.entry_uuid, outcome.exchanges, "success", on_delivered
    )
    return {"entry_uuid": outcome.entry_uuid}


def _delivered(
    db: Database,
    delivery_id: int,
    entry_uuid: str | None,
    exchanges: list[ExchangeRecord],
    outcome: str,
    on_delivered: DeliveryHook | None,
) -> None:
    with db.session() as s:
        d, doc = _read_delivery(s, delivery_id)
        set_delivery_status(d, DeliveryStatus.DELIVERED)
        d.entry_uuid = entry_uuid or d.entry_uuid
        _write_delivery(s, d, entry_uuid=d.entry_uuid, delivered_at=utcnow(), last_error=None)
        _record(s, d, exchanges, outcome)
        set_status(doc, DocumentStatus.SENT)
        _write_document_status(s, doc)
        _enqueue_zam(s, doc, d.destination, ok=True)
        if d.action in ("register", "replace"):
            _wake_waiting(s, d, doc)
        if on_delivered is not None:
            on_delivered(s, d, doc)


# Asked at every delivery, and almost always empty: built once, its key not recomputed for each document.
_WAITING_FOR = (
    select(Delivery)
    .join(Document)
    .where(
        Document.structure_id == bindparam("structure_id"),
        Delivery.destination == bindparam("destination"),
        Delivery.status == DeliveryStatus.WAITING,
        or_(
            (Document.kind == "replacement") & (Document.parent_unique_id == bindparam("unique_id")),
            (Document.kind == "deletion") & (Document.unique_id == bindparam("unique_id")),
        ),
    )
)


def _wake_waiting(s: Session, parent: DeliveryRow, doc: DocumentRow) -> None:
    """Queue the replacements and deletions that were waiting for this delivery."""
    params = {"structure_id": doc.structure_id, "destination": parent.destination, "unique_id": doc.unique_id}
    waiting = s.scalars(_WAITING_FOR, params).all()
    for child in waiting:
        set_delivery_status(child, DeliveryStatus.PENDING)
        jobs.enqueue(
            s,
            JobKind.DELIVER,
            f"{JobKind.DELIVER}:{child.id}:after:{parent.id}:{utcnow().isoformat()}",
            {"delivery_id": child.id},
            structure_id=child.document.structure_id,
            patient_id=child.document.patient_id,
        )


def _failed(
    db: Database, delivery_id: int, code: str, message: str, exchanges: list[ExchangeRecord], retryable: bool
) -> None:
    with db.session() as s:
        d, doc = _read_delivery(s, delivery_id)
        set_delivery_status(d, DeliveryStatus.FAILED if retryable else DeliveryStatus.DEAD)
        _write_delivery(s, d, error_code=code, last_error=message)
        _record(s, d, exchanges, "retry" if retryable else "rejected", f"{code}: {message}")
        set_status(doc, DocumentStatus.ERROR, f"{code} : {message}")
        _write_document_status(s, doc)
        if not retryable:
            _enqueue_zam(s, doc, d.destination, ok=False)


# ---- zam.send ---------------------------------------------------------------------------------------------


class _Acknowledged(Protocol):
    """A document as its ZAM's queuing reads it: the entity or a ``DocumentRow``."""

    @property
    def id(self) -> int: ...

    @property
    def structure_id(self) -> int: ...

    @property
    def patient_id(self) -> int | None: ...

    @property
    def status(self) -> str: ...

    @property
    def context(self) -> dict[str, Any]: ...


def _enqueue_zam(s: Session, doc: _Acknowledged, destination: str, ok: bool) -> None:
    if not doc.context.get("zam"):
        return  # REST intake: no DPI waiting for an HL7 acknowledgement
    jobs.enqueue(
        s,
        JobKind.ZAM,
        f"{JobKind.ZAM}:{doc.id}:{destination}:{doc.status}",
        {"document_id": doc.id, "destination": destination, "ok": ok},
        structure_id=doc.structure_id,
        patient_id=doc.patient_id,
        lane=jobs.Lane.PROMPT,
    )


# What a ZAM says of its document, read as columns: the ORM entity cost more than the message.
_ZAM_FACTS = select(
    Document.id,
    Document.unique_id,
    Document.status,
    Document.status_reason,
    Document.context,
    Document.kind,
    Document.findings,
).where(Document.id == bindparam("document_id"))
_REFUSAL = (
    select(Delivery.error_code, Delivery.last_error)
    .where(
        Delivery.document_id == bindparam("document_id"),
        Delivery.destination == bindparam("destination"),
        Delivery.status == DeliveryStatus.DEAD,
        Delivery.error_code.is_not(None),
        Delivery.error_code != "",
    )
    .order_by(Delivery.id)
    .limit(1)
)
# The lifecycle's SENT → ACKNOWLEDGED, guarded by the status it leaves: one statement, no entity loaded.
_ACKNOWLEDGE = (
    update(_DOCUMENT)
    .where(_DOCUMENT.c.id == bindparam("document_id"), _DOCUMENT.c.status == DocumentStatus.SENT)
    .values(status=DocumentStatus.ACKNOWLEDGED, status_reason=None)
)


def _zam_facts(
    db: Database, document_id: int, destination: str, ok: bool
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    with db.read_connection() as conn:
        doc = conn.execute(_ZAM_FACTS, {"document_id": document_id}).one()
        errors = [f for f in doc.findings if ok or f.get("severity") == "blocking"] if doc.findings else []
        if not ok and doc.status_reason and not errors:
            # A refusal by the DMP: its error code (XDS or DMP) is what the DPI needs in ERR-5.
            refused = conn.execute(_REFUSAL, {"document_id": document_id, "destination": destination}).first()
            errors = [
                {
                    "severity": "blocking",
                    "source": "delivery",
                    "code": refused.error_code if refused else "DMP",
                    "message": (refused.last_error if refused else None) or doc.status_reason,
                    "location": "",
                }
            ]
    info = {
        "id": doc.id,
        "unique_id": doc.unique_id,
        "status": doc.status,
        "context": doc.context,
        "kind": doc.kind,
    }
    return info, errors


def _acknowledge(db: Database, document_id: int) -> None:
    with db.session() as s:
        s.execute(_ACKNOWLEDGE, {"document_id": document_id})


async def send_zam(db: Database, zam: ZamPort, document_id: int, destination: str, ok: bool) -> None:
    info, errors = await asyncio.to_thread(_zam_facts, db, document_id, destination, ok)
    await zam.send(info, destination, ok, errors)
    if ok:
        await asyncio.to_thread(_acknowledge, db, document_id)


# ---- job handlers -----------------------------------------------------------------------------------------


def make_process_handler(ctx: ProcessContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        status = await asyncio.to_thread(process_document, ctx, int(job.args["document_id"]))
        return {"status": status}

    return handle


def delivery_given_up(s: Session, job: Job) -> None:
    """The delivery's job is in the dead letters, its attempts or its outage time spent: the delivery shows that
    it failed for good (it said a new try was planned) and the DPI gets its negative ZAM, as for a refusal. An
    operator's « Relancer » of the job sends it again."""
    d = s.get(Delivery, int(job.args["delivery_id"]))
    # A run that stopped mid-send may have reached the DMP: the replay asks it first, and the DPI is told nothing yet.
    if d is not None and give_up(d) == DeliveryStatus.FAILED:
        _enqueue_zam(s, d.document, d.destination, ok=False)


def make_deliver_handler(db: Database, dmp: DmpPort, on_delivered: DeliveryHook | None = None) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await deliver(db, dmp, int(job.args["delivery_id"]), job.attempts, on_delivered)

    return handle


def make_zam_handler(db: Database, zam: ZamPort) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        await send_zam(db, zam, int(job.args["document_id"]), job.args["destination"], bool(job.args["ok"]))
        return {}

    return handle
