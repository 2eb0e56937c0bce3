"""Flow entry for hospital systems speaking FHIR: an ITI-65 Provide Document Bundle becomes platform documents.

No second pipeline: a PDF goes through the REST intake (``parse_metadata`` then ``accept_rest_document``, the
platform builds the CDA R2 N1); a CDA the hospital built itself is checked against its DocumentReference and
stored like an HL7 one. Either way one Document row and one ``document.process`` job per document, all in the
caller's transaction: one bad DocumentReference refuses the whole Bundle (ITI-65 atomicity).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from opensegur.content.cda import CdaError, CdaHeader, Identifier, parse_cda
from opensegur.content.jdv import JDV_TYPE_CODE, load_value_set
from opensegur.documents.lifecycle import STATUS_LABELS, DocumentStatus
from opensegur.flows.dmp_feed import CDA_MAX_BYTES
from opensegur.flows.rest_intake import (
    RestIntakeError,
    accept_rest_document,
    current_identity,
    parse_metadata,
    record_document,
)
from opensegur.hospital.sites import resolve_site
from opensegur.store.documents import document_with_content
from opensegur.store.models import AuditEvent, Document, Patient, PatientIdentifier, Structure
from opensegur.transactions.mhd import FhirError, ProvideBundle, SubmittedDocument, build_document_reference

__all__ = ["SOURCE", "BundleOutcome", "accept_bundle", "read_document_reference"]

SOURCE = "mhd"
CREATED, EXISTING = "201 Created", "200 OK"
# Where each REST metadata field sits in a DocumentReference, to point the sender at the faulty element.
_FIELD_PATHS = {
    "patient": "subject",
    "author": "author",
    "type_code": "type",
    "title": "content[0].attachment.title",
    "effective_time": "date",
    "practice_setting": "context.practiceSetting",
    "stay.patient_class": "context.encounter",
    "stay.visit_number": "context.encounter",
    "stay.authority_oid": "context.encounter",
    "stay": "context.period",
    "visibility": "securityLabel",
    "replaces": "relatesTo[0]",
}
_NOT_FOUND = {"PATIENT_UNKNOWN", "REPLACED_UNKNOWN", "SITE_UNKNOWN"}


@dataclass(frozen=True)
class BundleOutcome:
    results: list[tuple[str, str | None]]  # per request entry: status line, location
    created: list[int]  # new platform documents: the workers have work
    existing: list[int]  # documents of an earlier identical submission


def _error_path(d: SubmittedDocument, field_name: str | None) -> str:
    if field_name is None:
        return d.expression
    if field_name == "pdf":
        return d.content_expression
    for prefix in (field_name, field_name.split(".")[0]):
        if prefix in _FIELD_PATHS:
            return f"{d.expression}.{_FIELD_PATHS[prefix]}"
    return d.expression


def _from_rest(exc: RestIntakeError, d: SubmittedDocument) -> FhirError:
    if exc.kind == "conflict":
        return FhirError(409, "conflict", exc.message, _error_path(d, exc.field))
    code = "not-found" if exc.code in _NOT_FOUND else "invalid"
    return FhirError(422, code, exc.message, _error_path(d, exc.field))


# ---- identity and site ----------------------------------------------------------------------------------------


def _authorities(site: Structure) -> list[str]:
    return [a for a in (site.ipp_authority_oid, site.ipp_authority, site.finess) if a]


def _patient(s: Session, d: SubmittedDocument) -> tuple[Structure, Patient, dict[str, Any]]:
    """The site and patient the subject names, and the REST ``patient`` object that designates them."""
    for authority, value in d.subject.ipps:
        site = resolve_site(s, [authority])
        if site is None:
            continue
        row = s.scalar(
            select(PatientIdentifier)
            .join(Patient, Patient.id == PatientIdentifier.patient_id)
            .where(
                Patient.structure_id == site.id,
                PatientIdentifier.authority.in_(_authorities(site)),
                PatientIdentifier.value == value,
            )
        )
        if row is not None:
            return site, current_identity(s, row.patient), {"site": site.id, "ipp": value}
    if d.subject.ins is not None:
        matricule, oid = d.subject.ins
        rows = s.scalars(
            select(Patient)
            .where(Patient.ins_matricule == matricule, Patient.ins_oid == oid)
            .order_by(Patient.active.desc(), Patient.id)
        ).all()
        sites = {p.structure_id for p in rows}
        hinted = resolve_site(s, list(d.site_hints))
        if hinted is not None and hinted.id in sites:
            sites = {hinted.id}
        if len(sites) > 1:
            raise FhirError(
                422,
                "multiple-matches",
                "Cet INS désigne des patients de plusieurs sites du GHT : précisez l'établissement (custodian) "
                "ou l'IPP du patient",
                d.subject.expression,
            )
        if sites:
            site_id = sites.pop()
            patient = next(p for p in rows if p.structure_id == site_id)
            return (
                s.get_one(Structure, site_id),
                current_identity(s, patient),
                {"site": site_id, "ins": matricule, "ins_oid": oid},
            )
    named = f"IPP {d.subject.ipps[0][1]}" if d.subject.ipps else "INS fourni"
    raise FhirError(
        422,
        "not-found",
        f"Patient inconnu de la plateforme ({named}) : l'identité doit d'abord être créée par le flux "
        "d'identités de l'établissement",
        d.subject.expression,
    )


# ---- duplicates -----------------------------------------------------------------------------------------------


def _existing(s: Session, d: SubmittedDocument) -> Document | None:
    """A document already known under this masterIdentifier: same bytes → the earlier answer, else a conflict."""
    master = d.master_identifier
    found = s.scalars(
        select(Document)
        .where(
            or_(
                Document.unique_id == master,
                Document.context[("mhd", "master_identifier")].as_string() == master,
            ),
            Document.kind != "deletion",
        )
        .order_by(Document.id)
    ).first()
    if found is None:
        return None
    mhd = found.context.get("mhd") or {}
    if mhd.get("content_sha256") == d.sha256 or found.payload_sha256 == d.sha256:
        return found
    raise FhirError(
        409,
        "conflict",
        f"Identifiant de document « {master} » déjà utilisé sur la plateforme pour un autre contenu "
        f"(document n° {found.id}) : un nouveau contenu demande un nouvel identifiant, ou un remplacement "
        "(relatesTo replaces)",
        f"{d.expression}.masterIdentifier",
    )


def _replaced_unique_id(s: Session, d: SubmittedDocument) -> str | None:
    if d.replaces is None:
        return None
    how, value = d.replaces
    if how == "id":
        target = s.get(Document, int(value))
        if target is None:
            raise FhirError(
                422,
                "not-found",
                f"Document remplacé DocumentReference/{value} inconnu",
                d.expression + ".relatesTo[0]",
            )
        return target.unique_id
    # The sender knows a PDF by the masterIdentifier it gave, not by the id of the CDA the platform built.
    by_master = s.scalars(
        select(Document.unique_id)
        .where(Document.context[("mhd", "master_identifier")].as_string() == value)
        .order_by(Document.id)
    ).first()
    return by_master or value


# ---- the two content cases ------------------------------------------------------------------------------------


def _accept_pdf(
    s: Session,
    d: SubmittedDocument,
    patient_ref: dict[str, Any],
    *,
    oid_root: str,
    actor: str,
    submission_set: str | None,
) -> int:
    if d.confidentiality not in (None, "N"):
        raise FhirError(
            422,
            "not-supported",
            f"Niveau de confidentialité « {d.confidentiality} » non pris en charge pour un PDF : la plateforme "
            "produit un CDA de confidentialité N (utilisez les statuts de visibilité TRE_A07)",
            d.expression + ".securityLabel",
        )
    author = next((a for a in d.authors if a.idnat_ps or a.rpps), None)
    metadata: dict[str, Any] = {
        "patient": patient_ref,
        "author": {
            "idnat_ps": author.idnat_ps,
            "rpps": author.rpps,
            "family": author.family,
            "given": author.given,
            "specialty": author.specialty,
        }
        if author is not None
        else {},
        "type_code": d.type_code,
        "title": d.title,
        "effective_time": d.effective_time or d.period_start,
        "stay": {
            "visit_number": d.visit_number,
            "authority_oid": d.visit_authority,
            "start": d.period_start,
            "end": d.period_end,
            "patient_class": d.patient_class,
        },
        "visibility": {
            "masque_ps": "MASQUE_PS" in d.visibility,
            "invisible_patient": "INVISIBLE_PATIENT" in d.visibility,
            "invisible_rep_legaux": "INVISIBLE_REPRESENTANTS_LEGAUX" in d.visibility,
        },
        "replaces": _replaced_unique_id(s, d),
        "practice_setting": d.practice_setting,
    }
    try:
        accepted = accept_rest_document(
            s,
            parse_metadata(metadata),
            d.content,
            oid_root=oid_root,
            actor=actor,
            source=SOURCE,
            extra_context={"mhd": _mhd_context(d, actor, submission_set)},
        )
    except RestIntakeError as exc:
        raise _from_rest(exc, d) from exc
    return accepted.document_id


def _mhd_context(d: SubmittedDocument, actor: str, submission_set: str | None) -> dict[str, Any]:
    return {
        "master_identifier": d.master_identifier,
        "content_sha256": d.sha256,
        "submission_set": submission_set,
        "actor": actor,
    }


def _join(ident: Identifier | None) -> str | None:
    if ident is None:
        return None
    return f"{ident.root}^{ident.extension}" if ident.extension else ident.root


def _disagree(d: SubmittedDocument, what: str, fhir: str | None, cda: str | None, path: str) -> FhirError:
    return FhirError(
        422,
        "value",
        f"{what} : « {fhir or 'absent'} » dans la DocumentReference, « {cda or 'absent'} » dans le CDA",
        f"{d.expression}.{path}",
    )


def _check_against_header(s: Session, d: SubmittedDocument, header: CdaHeader) -> str | None:
    """The DocumentReference must say what the CDA says. Returns the replaced document's uniqueId."""
    cda_id = _join(header.id)
    if d.master_identifier != cda_id:
        raise _disagree(
            d,
            "Identifiant du document (ClinicalDocument/id)",
            d.master_identifier,
            cda_id,
            "masterIdentifier",
        )
    cda_type = header.code.code if header.code else None
    if d.type_code != cda_type:
        raise _disagree(d, "Type de document (ClinicalDocument/code)", d.type_code, cda_type, "type")
    cda_ins = (header.patient.ins_matricule, header.patient.ins_oid) if header.patient.ins_matricule else None
    compared = False
    if d.subject.ins is not None and cda_ins is not None:
        compared = True
        if d.subject.ins != cda_ins:
            raise _disagree(d, "INS du patient (recordTarget)", d.subject.ins[0], cda_ins[0], "subject")
    cda_ipps = {(i.root, i.extension) for i in header.patient.other_ids if i.extension}
    for authority, value in d.subject.ipps:
        if any(root == authority for root, _ in cda_ipps):
            compared = True
            if (authority, value) not in cda_ipps:
                cda_value = next(ext for root, ext in cda_ipps if root == authority)
                raise _disagree(d, f"IPP du patient ({authority})", value, cda_value, "subject")
    if not compared:
        raise FhirError(
            422,
            "value",
            "Le patient de la DocumentReference ne peut être rapproché du recordTarget du CDA : même INS (ou IPP "
            "de même autorité) attendu des deux côtés",
            f"{d.expression}.subject",
        )
    if d.confidentiality and header.confidentiality and d.confidentiality != header.confidentiality.code:
        raise _disagree(d, "Confidentialité", d.confidentiality, header.confidentiality.code, "securityLabel")
    replaces = _replaced_unique_id(s, d)
    parent = _join(header.replaced_document)
    if replaces != parent:
        raise _disagree(d, "Document remplacé (relatedDocument RPLC)", replaces, parent, "relatesTo")
    return replaces


def _accept_cda(
    s: Session,
    d: SubmittedDocument,
    site: Structure,
    patient: Patient,
    *,
    actor: str,
    submission_set: str | None,
) -> int:
    try:
        _root, header = parse_cda(d.content, CDA_MAX_BYTES)
    except CdaError as exc:
        raise FhirError(422, "invalid", f"CDA illisible : {exc.message_fr}", d.content_expression) from exc
    replaces = _check_against_header(s, d, header)
    if replaces is not None and document_with_content(s, site.id, replaces) is None:
        raise FhirError(
            422,
            "not-found",
            f"Document remplacé « {replaces} » inconnu de la plateforme sur ce site",
            f"{d.expression}.relatesTo[0]",
        )
    kind = "replacement" if replaces else "initial"
    doc = record_document(
        s,
        site=site,
        patient=patient,
        source=SOURCE,
        actor=actor,
        kind=kind,
        unique_id=d.master_identifier,
        set_id=_join(header.set_id),
        version=header.version_number,
        parent_unique_id=replaces,
        type_code=d.type_code,
        title=header.title or d.title,
        cda=d.content,
        visibility=(
            "MASQUE_PS" in d.visibility,
            "INVISIBLE_PATIENT" in d.visibility,
            "INVISIBLE_REPRESENTANTS_LEGAUX" in d.visibility,
        ),
        stay=(d.patient_class, d.visit_number, d.visit_authority),
        context={"mhd": _mhd_context(d, actor, submission_set)},
    )
    return doc.id


def accept_bundle(s: Session, bundle: ProvideBundle, *, oid_root: str, actor: str) -> BundleOutcome:
    """Store every document of the Bundle and queue its processing, in the caller's transaction."""
    created: list[int] = []
    existing: list[int] = []
    locations: dict[int, tuple[str, str]] = {}
    set_uid = bundle.submission_set.unique_id
    for d in bundle.documents:
        same = _existing(s, d)
        if same is not None:
            existing.append(same.id)
            locations[d.index] = (EXISTING, f"DocumentReference/{same.id}")
            continue
        site, patient, ref = _patient(s, d)
        if d.kind == "pdf":
            doc_id = _accept_pdf(s, d, ref, oid_root=oid_root, actor=actor, submission_set=set_uid)
        else:
            doc_id = _accept_cda(s, d, site, patient, actor=actor, submission_set=set_uid)
        created.append(doc_id)
        locations[d.index] = (CREATED, f"DocumentReference/{doc_id}")
    all_existing = not created
    results: list[tuple[str, str | None]] = []
    for i, _kind in enumerate(bundle.resource_types):
        if i in locations:
            results.append(locations[i])
        elif i in bundle.binaries:
            results.append((locations[bundle.binaries[i]][0], None))
        else:
            # The List, a Patient or an author resource: taken in, not kept as resources of their own.
            results.append((EXISTING if all_existing else CREATED, None))
    return BundleOutcome(results, created, existing)


# ---- read back -------------------------------------------------------------------------------------------------


def read_document_reference(s: Session, document_id: int, actor: str) -> dict[str, Any] | None:
    """The DocumentReference of a platform document, its status mapped to current / superseded / entered-in-error."""
    doc = s.get(Document, document_id)
    if doc is None or doc.kind == "deletion":
        return None
    deleted = s.scalar(
        select(Document.id).where(
            Document.structure_id == doc.structure_id,
            Document.unique_id == doc.unique_id,
            Document.kind == "deletion",
        )
    )
    newer = s.scalar(
        select(Document.id).where(
            Document.structure_id == doc.structure_id,
            Document.parent_unique_id == doc.unique_id,
            Document.kind == "replacement",
            Document.status != DocumentStatus.REJECTED,
        )
    )
    status: Literal["current", "superseded", "entered-in-error"] = (
        "entered-in-error"
        if deleted is not None or doc.status == DocumentStatus.REJECTED
        else "superseded"
        if newer is not None
        else "current"
    )
    patient = s.get(Patient, doc.patient_id) if doc.patient_id else None
    matricule = doc.ins_matricule or (patient.ins_matricule if patient else None)
    oid = doc.ins_oid or (patient.ins_oid if patient else None)
    concept = load_value_set(JDV_TYPE_CODE).get(doc.type_code or "")
    created = doc.created_at if doc.created_at.tzinfo else doc.created_at.replace(tzinfo=UTC)
    s.add(
        AuditEvent(
            actor=actor,
            action="read_document_status",
            patient_id=doc.patient_id,
            reason=SOURCE,
            detail={"document_id": doc.id},
        )
    )
    return build_document_reference(
        resource_id=doc.id,
        status=status,
        unique_id=doc.unique_id,
        submitted_id=(doc.context.get("mhd") or {}).get("master_identifier"),
        ins=(matricule, oid) if matricule and oid else None,
        type_code=doc.type_code,
        type_display=concept.display if concept else None,
        title=doc.title,
        date=created.isoformat(),
        flow_label=STATUS_LABELS.get(doc.status, doc.status),
        content_url=f"/api/v1/documents/{doc.id}/content",
        content_type=doc.mime_type,
        size=doc.size,
        replaces=doc.parent_unique_id,
    )
