"""Flow entry for hospital systems without HL7: a PDF and its metadata become a CDA R2 N1 the platform builds.

The platform is the author of the CDA here, so it allocates the identifiers (under the editor's ``oid_root``)
and carries setId/version across replacements. Everything else follows the HL7 path: one Document row and one
``document.process`` job committed together, then the same validation, gates and delivery. There is no DPI
waiting for an HL7 acknowledgement, so the document has no ZAM context and its status is read over the API.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.content.builder import (
    N1Encounter,
    N1Input,
    N1Organization,
    N1Patient,
    N1Professional,
    PdfInfo,
    build_n1,
    check_pdf,
)
from opensegur.content.cda import CdaError, Identifier, parse_cda
from opensegur.content.jdv import (
    JDV_AUTHOR_SPECIALTY,
    JDV_PRACTICE_SETTING,
    JDV_TYPE_CODE,
    class_code_for_type,
    content_type_code_for_patient_class,
    load_value_set,
)
from opensegur.documents.lifecycle import DocumentStatus
from opensegur.errors import OpenSegurError
from opensegur.flows.dmp_feed import document_flags
from opensegur.flows.jobs import JobKind
from opensegur.hospital.sites import resolve_site
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import OID_NIR, Ins
from opensegur.identity.professionals import idnat_ps_from_rpps, parse_idnat_ps
from opensegur.store import jobs
from opensegur.store.models import AuditEvent, Document, Patient, PatientIdentifier, Professional, Structure
from opensegur.store.payloads import load_payload, store_payload

__all__ = [
    "DEFAULT_MAX_PDF_BYTES",
    "RestIntakeError",
    "PatientRef",
    "AuthorRef",
    "StayRef",
    "RestDocument",
    "RestAccepted",
    "parse_metadata",
    "accept_rest_document",
    "record_document",
]

DEFAULT_MAX_PDF_BYTES = 20 * 1024 * 1024
_PARIS = ZoneInfo("Europe/Paris")
# When the caller names no specialty, the profession alone is still a valid J01 author code.
DEFAULT_SPECIALTY = "G15_10"
DEFAULT_PRACTICE_SETTING = "ETABLISSEMENT"
# Arcs under the editor's OID root: documents and sets get their own, per site, so ids never collide across
# sites sharing one platform.
ARC_DOCUMENT = 1
ARC_SET = 2


class RestIntakeError(OpenSegurError, ValueError):
    """A refusal the caller can act on. ``kind`` drives the HTTP status at the edge; ``message`` is French."""

    def __init__(self, kind: str, code: str, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "invalid" (422), "conflict" (409)
        self.code = code
        self.message = message
        self.field = field_name


@dataclass(frozen=True)
class PatientRef:
    site: int | str  # structure id of the site, or its FINESS / IPP authority
    ipp: str | None = None
    ins: str | None = None
    ins_oid: str | None = None


@dataclass(frozen=True)
class AuthorRef:
    idnat_ps: str  # normalised: "8" + RPPS, "0" + ADELI…
    family: str | None = None
    given: str | None = None
    specialty: str | None = None


@dataclass(frozen=True)
class StayRef:
    visit_number: str | None = None
    authority_oid: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    patient_class: str | None = None


@dataclass(frozen=True)
class RestDocument:
    patient: PatientRef
    author: AuthorRef
    type_code: str
    title: str | None
    effective_time: datetime
    stay: StayRef = field(default_factory=StayRef)
    masque_ps: bool = False
    invisible_patient: bool = False
    invisible_rep_legaux: bool = False
    replaces: str | None = None
    practice_setting: str = DEFAULT_PRACTICE_SETTING


@dataclass(frozen=True)
class RestAccepted:
    document_id: int
    unique_id: str
    patient_id: int
    kind: str
    version: int


# ---- metadata parsing -----------------------------------------------------------------------------------------


def _invalid(code: str, message: str, field_name: str | None = None) -> RestIntakeError:
    return RestIntakeError("invalid", code, message, field_name)


def _obj(data: Any, name: str, required: bool = True) -> dict[str, Any]:
    if data is None and not required:
        return {}
    if not isinstance(data, dict):
        raise _invalid("METADATA_INVALID", f"« {name} » doit être un objet JSON", name)
    return data


def _text(data: dict[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _invalid("METADATA_MISSING", f"Champ obligatoire absent : « {path} »", path)
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _invalid("METADATA_INVALID", f"« {path} » doit être une chaîne de caractères", path)
    return value.strip()


def _flag(data: dict[str, Any], key: str, path: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise _invalid("METADATA_INVALID", f"« {path} » doit valoir true ou false", path)
    return value


def _time(data: dict[str, Any], key: str, path: str, *, required: bool = False) -> datetime | None:
    raw = _text(data, key, path, required=required)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise _invalid(
            "METADATA_INVALID", f"« {path} » : date ISO 8601 attendue (ex. 2024-03-05T14:30:00+01:00)", path
        ) from exc
    # A date without offset is a hospital wall-clock time: France, not the server's zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=_PARIS)


def parse_metadata(data: Any) -> RestDocument:
    """The ``metadata`` JSON of the intake, checked field by field with French messages."""
    root = _obj(data, "metadata")
    p = _obj(root.get("patient"), "patient")
    site = p.get("site", p.get("site_id"))
    if site is None or isinstance(site, bool) or not isinstance(site, int | str) or str(site).strip() == "":
        raise _invalid("METADATA_MISSING", "Champ obligatoire absent : « patient.site »", "patient.site")
    ipp = _text(p, "ipp", "patient.ipp")
    ins = _text(p, "ins", "patient.ins")
    if not ipp and not ins:
        raise _invalid(
            "METADATA_MISSING", "Le patient doit être désigné par son IPP ou son matricule INS", "patient"
        )
    patient = PatientRef(
        site=site if isinstance(site, int) else site.strip(),
        ipp=ipp,
        ins=ins,
        ins_oid=_text(p, "ins_oid", "patient.ins_oid"),
    )

    a = _obj(root.get("author"), "author")
    idnat = _text(a, "idnat_ps", "author.idnat_ps")
    rpps = _text(a, "rpps", "author.rpps")
    try:
        if idnat:
            parse_idnat_ps(idnat)
            idnat = "".join(idnat.split()).upper()
        elif rpps:
            idnat = idnat_ps_from_rpps(rpps)
        else:
            raise _invalid(
                "METADATA_MISSING", "L'auteur doit être désigné par son idNat_PS ou son RPPS", "author"
            )
    except IdentityError as exc:
        raise _invalid(exc.code, exc.message, "author." + (exc.field or "idnat_ps")) from exc
    author = AuthorRef(
        idnat_ps=idnat,
        family=_text(a, "family", "author.family"),
        given=_text(a, "given", "author.given"),
        specialty=_text(a, "specialty", "author.specialty"),
    )

    type_code = _text(root, "type_code", "type_code", required=True)
    assert type_code is not None
    if load_value_set(JDV_TYPE_CODE).get(type_code) is None:
        raise _invalid(
            "TYPE_CODE_UNKNOWN",
            f"Type de document « {type_code} » absent du jeu de valeurs JDV_J07 (codes LOINC du DMP)",
            "type_code",
        )
    if class_code_for_type(type_code) is None:
        # Accepting it would only end in a metadata rejection after the 202: say so now.
        raise _invalid(
            "TYPE_CODE_UNSUPPORTED",
            f"Type de document « {type_code} » pas encore pris en charge pour le DMP "
            "(classe XDS inconnue : table ASS_X04 à compléter)",
            "type_code",
        )
    if author.specialty and load_value_set(JDV_AUTHOR_SPECIALTY).get(author.specialty) is None:
        raise _invalid(
            "SPECIALTY_UNKNOWN",
            f"Spécialité « {author.specialty} » absente du jeu de valeurs JDV_J01",
            "author.specialty",
        )
    practice = _text(root, "practice_setting", "practice_setting") or DEFAULT_PRACTICE_SETTING
    if load_value_set(JDV_PRACTICE_SETTING).get(practice) is None:
        raise _invalid(
            "PRACTICE_SETTING_UNKNOWN",
            f"Secteur d'activité « {practice} » absent du jeu de valeurs JDV_J04",
            "practice_setting",
        )

    st = _obj(root.get("stay"), "stay", required=False)
    patient_class = _text(st, "patient_class", "stay.patient_class")
    if patient_class and content_type_code_for_patient_class(patient_class) is None:
        raise _invalid(
            "PATIENT_CLASS_UNKNOWN",
            f"Classe de patient « {patient_class} » inconnue (I, O, E, R ou N attendu, comme en PV1-2)",
            "stay.patient_class",
        )
    stay = StayRef(
        visit_number=_text(st, "visit_number", "stay.visit_number"),
        authority_oid=_text(st, "authority_oid", "stay.authority_oid"),
        start=_time(st, "start", "stay.start"),
        end=_time(st, "end", "stay.end"),
        patient_class=patient_class.upper() if patient_class else None,
    )
    if stay.start and stay.end and stay.end < stay.start:
        raise _invalid("METADATA_INVALID", "La fin du séjour précède son début", "stay.end")

    vis = _obj(root.get("visibility"), "visibility", required=False)
    effective = _time(root, "effective_time", "effective_time", required=True)
    assert effective is not None
    return RestDocument(
        patient=patient,
        author=author,
        type_code=type_code,
        title=_text(root, "title", "title"),
        effective_time=effective,
        stay=stay,
        masque_ps=_flag(vis, "masque_ps", "visibility.masque_ps"),
        invisible_patient=_flag(vis, "invisible_patient", "visibility.invisible_patient"),
        invisible_rep_legaux=_flag(vis, "invisible_rep_legaux", "visibility.invisible_rep_legaux"),
        replaces=_text(root, "replaces", "replaces"),
        practice_setting=practice,
    )


# ---- intake -------------------------------------------------------------------------------------------------


def _site(s: Session, ref: int | str) -> Structure:
    site: Structure | None
    if isinstance(ref, int) or ref.isdigit() and len(ref) < 9:
        site = s.get(Structure, int(ref))
        site = site if site is not None and site.kind == "EG" else None
    else:
        site = resolve_site(s, [ref])
    if site is None:
        raise _invalid("SITE_UNKNOWN", f"Site « {ref} » inconnu : aucun établissement du GHT", "patient.site")
    return site


def current_identity(s: Session, patient: Patient) -> Patient:
    # A merged identity lives on in the one it was merged into; documents follow it there.
    seen: set[int] = set()
    while not patient.active and patient.merged_into_id and patient.id not in seen:
        seen.add(patient.id)
        patient = s.get_one(Patient, patient.merged_into_id)
    return patient


def _find_patient(s: Session, site: Structure, ref: PatientRef) -> Patient:
    found: Patient | None = None
    if ref.ins:
        try:
            ins = Ins.parse(ref.ins, ref.ins_oid or OID_NIR)
        except IdentityError as exc:
            raise _invalid(exc.code, exc.message, "patient.ins") from exc
        stmt = select(Patient).where(Patient.structure_id == site.id, Patient.ins_matricule == ins.matricule)
        if ref.ins_oid:
            stmt = stmt.where(Patient.ins_oid == ins.oid)
        found = s.scalars(stmt.order_by(Patient.active.desc(), Patient.id)).first()
    if found is None and ref.ipp:
        authorities = [a for a in (site.ipp_authority_oid, site.ipp_authority, site.finess) if a]
        row = s.scalar(
            select(PatientIdentifier).where(
                PatientIdentifier.authority.in_(authorities), PatientIdentifier.value == ref.ipp
            )
        )
        found = row.patient if row is not None else None
    if found is None:
        named = f"IPP {ref.ipp}" if ref.ipp else f"INS {ref.ins}"
        raise _invalid("PATIENT_UNKNOWN", f"Patient inconnu sur le site {site.name} ({named})", "patient")
    return current_identity(s, found)


def _author(s: Session, ref: AuthorRef) -> N1Professional:
    known = s.scalar(select(Professional).where(Professional.idnat_ps == ref.idnat_ps))
    family = ref.family or (known.family_name if known else None)
    given = ref.given or (known.given_name if known else None)
    if not family or not given:
        raise _invalid(
            "AUTHOR_INCOMPLETE",
            f"Professionnel {ref.idnat_ps} inconnu de la plateforme : nom et prénom de l'auteur requis",
            "author",
        )
    return N1Professional(ref.idnat_ps, family, given, ref.specialty or DEFAULT_SPECIALTY)


def _n1_patient(patient: Patient) -> N1Patient:
    if not patient.ins_matricule or not patient.ins_oid:
        raise _invalid(
            "PATIENT_WITHOUT_INS",
            "Identité sans INS : le DMP exige l'INS du patient. Qualifiez l'identité (INSi et pièce "
            "d'identité) avant d'envoyer le document.",
            "patient",
        )
    if patient.birth_date is None or not patient.birth_place:
        raise _invalid(
            "PATIENT_INCOMPLETE",
            "Date ou lieu de naissance absent de l'identité : traits stricts à compléter",
            "patient",
        )
    try:
        ins = Ins.parse(patient.ins_matricule, patient.ins_oid)
    except IdentityError as exc:
        raise _invalid(exc.code, exc.message, "patient") from exc
    ipp = next((i for i in patient.identifiers if i.type_code == "PI"), None)
    return N1Patient(
        ins=ins,
        birth_family=patient.birth_name,
        given_names=patient.first_names.split(),
        birth_date=patient.birth_date.strftime("%Y%m%d"),
        gender=patient.sex if patient.sex in ("M", "F") else "U",
        birthplace_cog=patient.birth_place,
        ipp=ipp.value if ipp else None,
        # The CDA needs an OID; an IPP authority known only by its namespace stays out of the header.
        ipp_authority_oid=ipp.authority if ipp and _is_oid(ipp.authority) else None,
        used_family=patient.used_name,
        used_given=patient.used_first_name,
    )


def _is_oid(value: str) -> bool:
    parts = value.split(".")
    return len(parts) > 1 and all(p.isdigit() for p in parts)


def _split(unique_id: str) -> Identifier:
    root, _, ext = unique_id.partition("^")
    return Identifier(root, ext or None)


def _join(ident: Identifier) -> str:
    return f"{ident.root}^{ident.extension}" if ident.extension else ident.root


def _new_id(oid_root: str, arc: int, site: Structure) -> Identifier:
    # 16 hex characters: the longest extension XDS allows in a uniqueId, 64 random bits.
    return Identifier(f"{oid_root}.{arc}.{site.id}", uuid.uuid4().hex[:16].upper())


def _parent(s: Session, site: Structure, patient: Patient, replaces: str) -> tuple[Document, Identifier, int]:
    """The document being replaced, its set id and the version the new one takes."""
    versions = s.scalars(
        select(Document).where(Document.structure_id == site.id, Document.unique_id == replaces)
    ).all()
    parent = next((d for d in versions if d.kind in ("initial", "replacement")), None)
    if parent is None:
        raise RestIntakeError(
            "invalid",
            "REPLACED_UNKNOWN",
            f"Document à remplacer « {replaces} » inconnu sur ce site",
            "replaces",
        )
    if any(d.kind == "deletion" for d in versions):
        raise RestIntakeError(
            "conflict", "REPLACED_DELETED", "Le document à remplacer a été supprimé du DMP", "replaces"
        )
    if parent.patient_id != patient.id:
        raise RestIntakeError(
            "conflict",
            "REPLACED_OTHER_PATIENT",
            "Le document à remplacer concerne un autre patient",
            "replaces",
        )
    if parent.status == DocumentStatus.REJECTED:
        raise RestIntakeError(
            "conflict",
            "REPLACED_REJECTED",
            "Le document à remplacer a été rejeté : envoyez une nouvelle version initiale",
            "replaces",
        )
    newer = s.scalar(
        select(Document).where(
            Document.structure_id == site.id,
            Document.parent_unique_id == replaces,
            Document.kind == "replacement",
            Document.status != DocumentStatus.REJECTED,
        )
    )
    if newer is not None:
        raise RestIntakeError(
            "conflict",
            "REPLACED_ALREADY",
            f"Ce document a déjà été remplacé par « {newer.unique_id} » : remplacez la dernière version",
            "replaces",
        )
    set_id = _split(parent.set_id) if parent.set_id else None
    version = parent.version
    if (set_id is None or version is None) and parent.payload_sha256:
        # Documents received over HL7 keep their set and version only inside their CDA.
        try:
            _root, header = parse_cda(load_payload(s, parent.payload_sha256))
            set_id = set_id or header.set_id
            version = version or header.version_number
        except CdaError:
            pass
    return parent, set_id or _split(parent.unique_id), (version or 1) + 1


def accept_rest_document(
    s: Session,
    req: RestDocument,
    pdf: bytes,
    *,
    oid_root: str,
    actor: str,
    source: str = "rest",
    extra_context: dict[str, Any] | None = None,
) -> RestAccepted:
    """Build the CDA, store it and queue its processing, in the caller's transaction.

    ``source`` names the entry (``rest``, or ``mhd`` for a PDF sent in a FHIR Bundle) in the document and its audit
    event; ``extra_context`` keeps what that entry needs later (e.g. the sender's own document id)."""
    try:
        info: PdfInfo = check_pdf(pdf)
    except CdaError as exc:
        raise _invalid(exc.code, exc.message_fr, "pdf") from exc
    site = _site(s, req.patient.site)
    patient = _find_patient(s, site, req.patient)
    n1_patient = _n1_patient(patient)
    author = _author(s, req.author)
    document_id = _new_id(oid_root, ARC_DOCUMENT, site)
    kind = "initial"
    set_id, version, replaces = _new_id(oid_root, ARC_SET, site), 1, None
    if req.replaces:
        _doc, set_id, version = _parent(s, site, patient, req.replaces)
        kind, replaces = "replacement", _split(req.replaces)
    stay = req.stay
    stay_authority = stay.authority_oid or (site.settings or {}).get("visit_number_authority_oid")
    type_label = load_value_set(JDV_TYPE_CODE).codes[req.type_code].display
    title = req.title or type_label
    data = N1Input(
        document_id=document_id,
        set_id=set_id,
        version=version,
        type_code=req.type_code,
        title=title,
        effective_time=req.effective_time,
        patient=n1_patient,
        author=author,
        author_time=req.effective_time,
        organization=N1Organization("1" + site.finess, site.name),
        encounter=N1Encounter(
            start=stay.start or req.effective_time,
            facility_type=str((site.settings or {}).get("secteur_activite", "SA01")),
            end=stay.end,
            stay_id=Identifier(stay_authority, stay.visit_number)
            if stay.visit_number and stay_authority
            else None,
        ),
        service_start=req.effective_time,
        practice_setting=req.practice_setting,
        replaces=replaces,
    )
    try:
        cda = build_n1(data, pdf)
    except CdaError as exc:
        raise _invalid(exc.code, exc.message_fr) from exc
    doc = record_document(
        s,
        site=site,
        patient=patient,
        source=source,
        actor=actor,
        kind=kind,
        unique_id=_join(document_id),
        set_id=_join(set_id),
        version=version,
        parent_unique_id=req.replaces,
        type_code=req.type_code,
        title=title,
        cda=cda,
        visibility=(req.masque_ps, req.invisible_patient, req.invisible_rep_legaux),
        stay=(stay.patient_class, stay.visit_number, stay_authority),
        context={
            "rest": {
                "actor": actor,
                "pdf_pages": info.pages,
                "pdfa_part": info.pdfa_part,
                "pdf_size": len(pdf),
            },
            **(extra_context or {}),
        },
    )
    return RestAccepted(doc.id, doc.unique_id, patient.id, kind, version)


def record_document(
    s: Session,
    *,
    site: Structure,
    patient: Patient,
    source: str,
    actor: str,
    kind: str,
    unique_id: str,
    set_id: str | None,
    version: int | None,
    parent_unique_id: str | None,
    type_code: str | None,
    title: str | None,
    cda: bytes,
    visibility: tuple[bool, bool, bool],
    stay: tuple[str | None, str | None, str | None],
    context: dict[str, Any],
) -> Document:
    """The Document row, its ``document.process`` job and the audit event, in the caller's transaction: what every
    intake without HL7 records once it holds a CDA (built here from a PDF, or sent as is over FHIR).

    ``visibility`` is (MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REP_LEGAUX); ``stay`` is (patient class, visit number,
    its authority OID) — the number is kept only with its authority, which the XDS referenceIdList needs.
    """
    patient_class, visit_number, visit_authority = stay
    doc = Document(
        structure_id=site.id,
        patient_id=patient.id,
        source=source,
        kind=kind,
        unique_id=unique_id,
        set_id=set_id,
        version=version,
        parent_unique_id=parent_unique_id,
        type_code=type_code,
        title=title,
        payload_sha256=store_payload(s, cda),
        mime_type="text/xml",
        size=len(cda),
        status=DocumentStatus.RECEIVED,
        held=False,
        findings=[],
        # Same keys as the HL7 path so that the flow reads every source alike; only the DMP is a destination here.
        flags=document_flags(
            masque_ps=visibility[0], invisible_patient=visibility[1], invisible_rep_legaux=visibility[2]
        ),
        context={
            "patient_class": patient_class,
            "visit_number": visit_number if visit_authority else None,
            "visit_number_authority": visit_authority if visit_number else None,
            "first_send": kind == "initial",
            **context,
        },
    )
    s.add(doc)
    s.flush()
    jobs.enqueue(
        s,
        JobKind.PROCESS,
        f"{JobKind.PROCESS}:{doc.id}",
        {"document_id": doc.id},
        structure_id=site.id,
        patient_id=patient.id,
    )
    s.add(
        AuditEvent(
            actor=actor,
            action="submit_document",
            patient_id=patient.id,
            reason="api" if source == "rest" else source,
            detail={"document_id": doc.id, "unique_id": unique_id, "kind": kind},
        )
    )
    return doc
