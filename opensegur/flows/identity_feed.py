"""Flow: a PAM FR identity event from the GAM/DPI → the local identity (RNIV rules) in the same transaction.

The identity update is applied inside the transaction that stores the message, before the ACK: it is a few
rows, it must keep the order in which the GAM sent the events, and the ACK must tell the sender at once when
a trait or an INS is refused. Calls to remote services (INSi) are jobs, never done here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import RowMapping, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from opensegur.flows.dmp_prefetch import request_prefetch
from opensegur.flows.identity_gate import release_waiting_documents
from opensegur.flows.stays import record_stay
from opensegur.hospital.sites import read_site
from opensegur.identity import rniv
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins, is_ins_oid
from opensegur.identity.traits import StrictTraits, consistent_with_ins, normalise_name
from opensegur.store.models import (
    IdentityAlert,
    IdentityEvent,
    Patient,
    PatientIdentifier,
    Structure,
    utcnow,
)
from opensegur.transactions.hl7v2 import Hl7Error
from opensegur.transactions.pam_fr import PamEvent, PamPatient
from opensegur.transactions.pam_fr import PatientIdentifier as PamIdentifier

Status = rniv.IdentityStatus

# HL7 table 0445 values that are reliability attributes, not RNIV statuses: the identity stays provisional.
RELIABILITY_CODES = {"DOUTE", "FICTI", "DOUT", "FICT"}

# ERR-2 is segment^sequence^field^repetition^component: locations stop at the field, which is unambiguous
# whatever repetition of PID-3, PID-5 or PID-11 carried the trait.
FIELD_LOCATION = {
    "matricule": "PID^1^3",
    "oid": "PID^1^3",
    "birth_name": "PID^1^5",
    "first_names": "PID^1^5",
    "birth_date": "PID^1^7",
    "sex": "PID^1^8",
    "birth_place": "PID^1^11",
}


@dataclass
class FeedOutcome:
    patient_id: int
    structure_id: int
    created: bool
    status: str
    warnings: list[Hl7Error] = field(default_factory=list)


def _error(exc: IdentityError, code: str = "102") -> Hl7Error:
    return Hl7Error(
        code=code,
        severity="E",
        location=FIELD_LOCATION.get(exc.field or "", "PID^1"),
        message=exc.message,
        reject=False,
    )


def _authority(event: PamEvent) -> str:
    """The IPP authority as the message names it (PID-3.4.1&PID-3.4.2), for the hospital's engineer to declare."""
    ipp = event.patient.ipp
    names = [ipp.assigning_authority_name, ipp.authority_oid] if ipp is not None else []
    return "&".join(n for n in names if n) or "absente"


def resolve_structure(session: Session, event: PamEvent) -> Structure:
    """The site that owns the IPP: matched on the IPP authority (namespace or OID), else the sending facility.
    Its columns are only read (ids, IPP authority, settings): the kept row, outside the session."""
    candidates: list[str] = []
    if event.patient.ipp is not None:
        candidates += [event.patient.ipp.assigning_authority_name, event.patient.ipp.authority_oid]
    candidates.append(event.header.sending_facility or "")
    site = read_site(session, candidates)
    if site is None:
        raise Hl7Error(
            code="204",
            severity="E",
            location="PID^1^3",
            message=(
                f"Autorité d'affectation de l'IPP « {_authority(event)} » inconnue : aucun site du GHT ne la "
                "déclare ; déclarez-la dans sites.toml du répertoire de configuration (ipp_domain du site)"
            ),
            reject=False,
        )
    return site


def read_traits(p: PamPatient) -> StrictTraits:
    try:
        return StrictTraits.build(
            birth_name=p.birth_name or "",
            first_names=p.first_names or p.first_name or "",
            birth_date=p.birth_date or "",
            sex=p.sex or "",
            birth_place=p.birth_place_cog or None,
        )
    except IdentityError as exc:
        raise _error(exc, "101" if exc.code == "TRAIT_MISSING" else "102") from exc


def declared_state(p: PamPatient, ins: Ins | None) -> tuple[rniv.IdentityState, str | None]:
    """Map PID-32 (PAM FR 2.11) to an RNIV state; a matricule in PID-3 is only ever sent for a qualified identity."""
    codes = [
        c.upper() for c in (p.identity_reliability or ([p.identity_status] if p.identity_status else []))
    ]
    reliability = ",".join(c for c in codes if c in RELIABILITY_CODES) or None
    declared = next((c for c in codes if c in Status.__members__), None)
    if ins is not None:
        if declared in (None, "VALI", "QUAL"):
            return rniv.from_declared(Status.QUAL), reliability
        raise Hl7Error(
            code="103",
            severity="E",
            location="PID^1^32",
            message=f"Matricule INS transmis avec le statut {declared} : seule une identité qualifiée le porte",
            reject=False,
        )
    if declared == "QUAL":
        raise Hl7Error(
            code="101",
            severity="E",
            location="PID^1^3",
            message="Statut qualifié sans matricule INS en PID-3",
            reject=False,
        )
    return rniv.from_declared(Status(declared) if declared else Status.PROV), reliability


def read_ins(p: PamPatient) -> Ins | None:
    ident = p.ins
    if ident is None:
        return None
    if not ident.authority_oid or not is_ins_oid(ident.authority_oid):
        raise Hl7Error(
            code="103",
            severity="E",
            location="PID^1^3",
            message=f"OID d'INS inconnu : {ident.authority_oid or '(absent)'}",
            reject=False,
        )
    try:
        return Ins.parse(ident.value, ident.authority_oid)
    except IdentityError as exc:
        raise _error(exc) from exc


def _ipp_authority(ident: PamIdentifier, site: Structure) -> str:
    return ident.authority_oid or ident.assigning_authority_name or site.ipp_authority or site.finess


_PATIENT = cast(Table, Patient.__table__)

# Every identity message looks its patient up by IPP: one statement built once, the patient in the same query.
_BY_IDENTIFIER = (
    select(Patient)
    .join(Patient.identifiers)
    .where(
        PatientIdentifier.authority == bindparam("authority"), PatientIdentifier.value == bindparam("value")
    )
)


def find_by_identifier(session: Session, ident: PamIdentifier, site: Structure) -> Patient | None:
    return session.scalar(_BY_IDENTIFIER, {"authority": _ipp_authority(ident, site), "value": ident.value})


# The identity feed reads its patient's columns with a Core query and writes them back with a Core UPDATE: the
# ORM's entity load, identity map and flush cost a quarter of an identity message, and no caller needs the object.
# Its Core statements run on the session's connection: the session's execution adds nothing to them but a fifth.
_IDENTIFIER = cast(Table, PatientIdentifier.__table__)
_PATIENT_BY_IPP = (
    select(_PATIENT)
    .join(_IDENTIFIER, _IDENTIFIER.c.patient_id == _PATIENT.c.id)
    .where(_IDENTIFIER.c.authority == bindparam("authority"), _IDENTIFIER.c.value == bindparam("value"))
)
# The SET clause is the changed columns given at execution (updated_at by its onupdate, as the flush did).
_UPDATE_PATIENT = update(_PATIENT).where(_PATIENT.c.id == bindparam("patient_id"))


def _find_for_feed(
    session: Session, ident: PamIdentifier, site: Structure
) -> tuple[Patient | None, RowMapping | None]:
    """The patient of an IPP and, when the session does not hold it, its columns as stored: that patient is a
    transient copy, written back by :func:`_write_changes`. One the session holds (an earlier message of the same
    transaction loaded it) is returned itself, with no row: its own state is the current one, flushed by the ORM."""
    row = (
        session.connection()
        .execute(_PATIENT_BY_IPP, {"authority": _ipp_authority(ident, site), "value": ident.value})
        .mappings()
        .first()
    )
    if row is None:
        return None, None
    held = session.identity_map.get(session.identity_key(Patient, row["id"]))
    if held is not None:
        return cast(Patient, held), None
    return Patient(**row), row


def _write_changes(session: Session, patient: Patient, stored: RowMapping) -> None:
    """One UPDATE of the columns whose value differs from ``stored``, none when nothing changed (as a flush)."""
    changed: dict[str, Any] = {
        key: getattr(patient, key) for key, value in stored.items() if getattr(patient, key) != value
    }
    if changed:
        session.connection().execute(_UPDATE_PATIENT, {"patient_id": patient.id, **changed})


# Every message records its event and reads nothing back: a Core INSERT (the patient was flushed before it).
_RECORD_EVENT = insert(cast(Table, IdentityEvent.__table__))


def apply_event(session: Session, event: PamEvent, actor: str) -> FeedOutcome:
    """Apply one PAM FR event. Raises Hl7Error (nothing written by the caller's savepoint) on refusal."""
    p = event.patient
    site = resolve_structure(session, event)
    ins = read_ins(p)
    traits = read_traits(p)
    state, reliability = declared_state(p, ins)
    # The NIR encodes the place and date of birth as registered then; commune mergers, renumbered departments
    # and births abroad make honest mismatches, and INSi is the authority. So a mismatch is a warning and an
    # alert for the vigilance team, not a refusal (the ANS example PAT-TROIS has NIR department 51, COG 63220).
    inconsistencies = consistent_with_ins(traits, ins) if ins is not None else []
    warnings = [
        Hl7Error(code="102", severity="W", location="PID^1^3", message=m, reject=False)
        for m in inconsistencies
    ]
    if p.ipp is None:
        raise Hl7Error(
            code="101", severity="E", location="PID^1^3", message="IPP absent de PID-3", reject=True
        )

    if event.trigger == "A40":
        return _merge(session, event, site, actor)
    if event.trigger == "A47" and event.merged_patient_ids:
        _change_identifier(session, event, site)

    patient, stored = _find_for_feed(session, p.ipp, site)
    created = patient is None
    if patient is None:
        patient = Patient(structure_id=site.id, status=Status.PROV.value, dmp_consent={}, insi_state={})
    before = None if created else patient.status
    traits_changed = (
        not created
        and _traits_of(patient) is not None
        and bool(
            _traits_of(patient).differences(traits)  # type: ignore[union-attr]
        )
    )
    local_rank = _rank(patient.status) if not created else -1
    if created or traits_changed or _rank(state.status) >= local_rank:
        _set_state(patient, state)
    else:
        # The GAM declares less than we established locally for the same traits: keep ours, tell a human.
        warnings.append(
            Hl7Error(
                code="207",
                severity="W",
                location="PID^1^32",
                message="Statut transmis inférieur au statut établi localement : conservé, alerte créée",
                reject=False,
            )
        )
        raise_alert(
            session,
            patient,
            "status_conflict",
            f"Le GAM transmet le statut {state.status.value}, l'identité est {patient.status} localement.",
        )
    _set_traits(patient, traits, p)
    patient.reliability = reliability
    patient.deceased = bool(p.death_indicator and p.death_indicator.upper() == "Y") or bool(p.death_date)
    patient.ins_matricule = ins.matricule if ins else (patient.ins_matricule if not traits_changed else None)
    patient.ins_oid = ins.oid if ins else (patient.ins_oid if not traits_changed else None)
    if event.dmp_consent:
        patient.dmp_consent = dict(event.dmp_consent)
    if created:
        _insert(session, patient, p.ipp, site)
    elif stored is not None:
        _write_changes(session, patient, stored)
    else:
        session.flush()
    if ins is not None:
        _check_ins_collision(session, patient)
    if inconsistencies:
        raise_alert(
            session,
            patient,
            "ins_conflict",
            "Matricule INS et traits discordants : " + " ; ".join(inconsistencies),
        )
    if created:
        _check_duplicates(session, patient)
    record_stay(session, event, patient, site)
    request_prefetch(session, event, patient, site)
    session.connection().execute(
        _RECORD_EVENT,
        {
            "patient_id": patient.id,
            "kind": f"pam_{event.trigger.lower()}",
            "actor": actor,
            "status_before": before,
            "status_after": patient.status,
            "detail": {"control_id": event.header.control_id, "traits_changed": traits_changed},
        },
    )
    if patient.status == Status.QUAL.value and before != Status.QUAL.value:
        release_waiting_documents(session, patient.id)
    return FeedOutcome(patient.id, patient.structure_id, created, patient.status, warnings)


def find_or_create_from_pid(
    session: Session, site: Structure, p: PamPatient, actor: str
) -> tuple[Patient, list[Hl7Error]]:
    """The patient a document message names: by IPP, else by INS on an active identity of the site; an
    unknown patient is created from the PID with the status its PID-32 and INS prove. A document message never
    rewrites an existing identity: the GAM's feed is the master of identities."""
    ins = read_ins(p)
    traits = read_traits(p)
    inconsistencies = consistent_with_ins(traits, ins) if ins is not None else []
    warnings = [
        Hl7Error(code="102", severity="W", location="PID^1^3", message=m, reject=False)
        for m in inconsistencies
    ]
    patient = find_by_identifier(session, p.ipp, site) if p.ipp is not None else None
    if patient is None and ins is not None:
        patient = session.scalar(
            select(Patient).where(
                Patient.structure_id == site.id,
                Patient.active.is_(True),
                Patient.ins_matricule == ins.matricule,
                Patient.ins_oid == ins.oid,
            )
        )
    if patient is not None:
        return patient, warnings
    state, reliability = declared_state(p, ins)
    patient = Patient(
        structure_id=site.id, dmp_consent={}, insi_state={}, reliability=reliability, deceased=False
    )
    _set_state(patient, state)
    _set_traits(patient, traits, p)
    patient.ins_matricule, patient.ins_oid = (ins.matricule, ins.oid) if ins else (None, None)
    _insert(session, patient, p.ipp, site)
    # The document flow goes on with the patient's relationships: it joins the session as if it had been read.
    make_transient_to_detached(patient)
    session.add(patient)
    _check_duplicates(session, patient)
    if inconsistencies:
        raise_alert(
            session,
            patient,
            "ins_conflict",
            "Matricule INS et traits discordants : " + " ; ".join(inconsistencies),
        )
    session.add(
        IdentityEvent(
            patient_id=patient.id,
            kind="created_from_document",
            actor=actor,
            status_before=None,
            status_after=patient.status,
            detail={},
        )
    )
    return patient, warnings


_NEW_PATIENT = insert(_PATIENT).returning(_PATIENT.c.id)
_NEW_IDENTIFIER = insert(cast(Table, PatientIdentifier.__table__))


def _insert(session: Session, patient: Patient, ipp: PamIdentifier | None, site: Structure) -> None:
    """Write a new identity and its IPP, every column set on ``patient``, which stays outside the session: two
    Core INSERTs, where the unit of work spent a third of an identity message's time."""
    patient.active, patient.merged_into_id = True, None
    patient.created_at = patient.updated_at = utcnow()
    values = {column.key: getattr(patient, column.key) for column in _PATIENT.columns if column.key != "id"}
    patient.id = session.connection().execute(_NEW_PATIENT, values).scalar_one()
    if ipp is not None:
        session.connection().execute(
            _NEW_IDENTIFIER,
            {
                "patient_id": patient.id,
                "authority": _ipp_authority(ipp, site),
                "value": ipp.value,
                "type_code": "PI",
            },
        )


_RANK = {Status.PROV.value: 0, Status.RECUP.value: 1, Status.VALI.value: 1, Status.QUAL.value: 2}


def _rank(status: str) -> int:
    return _RANK.get(status, 0)


def _set_state(patient: Patient, state: rniv.IdentityState) -> None:
    patient.status = state.status.value
    patient.insi_verified = state.insi_verified
    patient.document_checked = state.document_checked


def _traits_of(patient: Patient) -> StrictTraits | None:
    if patient.birth_date is None or not patient.birth_name:
        return None
    try:
        return StrictTraits.build(
            patient.birth_name, patient.first_names, patient.birth_date, patient.sex, patient.birth_place
        )
    except IdentityError:
        return None


def _set_traits(patient: Patient, traits: StrictTraits, p: PamPatient) -> None:
    patient.birth_name = traits.birth_name
    patient.first_names = traits.first_names
    patient.birth_date = traits.birth_date
    patient.sex = traits.sex.value
    patient.birth_place = traits.birth_place
    patient.used_name = p.used_name or None
    patient.used_first_name = p.used_first_name or None


def raise_alert(
    session: Session, patient: Patient, kind: str, message: str, other: Patient | None = None
) -> None:
    """Open an alert unless the same one is already open."""
    exists = session.scalar(
        select(IdentityAlert).where(
            IdentityAlert.patient_id == patient.id,
            IdentityAlert.kind == kind,
            IdentityAlert.open.is_(True),
            IdentityAlert.other_patient_id == (other.id if other else None),
        )
    )
    if exists is None:
        session.add(
            IdentityAlert(
                patient_id=patient.id,
                other_patient_id=other.id if other else None,
                kind=kind,
                message=message,
            )
        )


def close_alerts(session: Session, patient_id: int, kind: str) -> None:
    for alert in session.scalars(
        select(IdentityAlert).where(
            IdentityAlert.patient_id == patient_id, IdentityAlert.kind == kind, IdentityAlert.open.is_(True)
        )
    ):
        alert.open = False
        alert.closed_at = utcnow()


def _check_ins_collision(session: Session, patient: Patient) -> None:
    others = session.scalars(
        select(Patient).where(
            Patient.ins_matricule == patient.ins_matricule, Patient.id != patient.id, Patient.active.is_(True)
        )
    ).all()
    for other in others:
        raise_alert(
            session,
            patient,
            "duplicate",
            "Même matricule INS qu'une autre identité active : doublon probable",
            other,
        )


def _first_name(first_names: str | None) -> str:
    return normalise_name(first_names.split(" ")[0]) if first_names else ""


# Run for every new identity: built once, on table columns (a Core query, half the cost of the ORM's), and only
# the compared columns are read (no ORM object per namesake); the rare duplicate is then loaded whole.
_SAME_BIRTH = select(_PATIENT.c.id, _PATIENT.c.birth_name, _PATIENT.c.first_names).where(
    _PATIENT.c.id != bindparam("patient"),
    _PATIENT.c.active.is_(True),
    _PATIENT.c.structure_id == bindparam("site"),
    _PATIENT.c.birth_date == bindparam("born"),
)
_SAME_BIRTH_AND_SEX = _SAME_BIRTH.where(_PATIENT.c.sex == bindparam("sex"))


def probable_duplicates(session: Session, patient: Patient, *, same_first_name: bool = True) -> list[Patient]:
    """Other active identities of the same site with the same normalised birth name and birth date; by
    default also the same sex and first name (the alert rule), the looser form feeds the merge form."""
    if patient.birth_date is None:
        return []
    stmt = _SAME_BIRTH_AND_SEX if same_first_name else _SAME_BIRTH
    params = {"patient": patient.id, "site": patient.structure_id, "born": patient.birth_date}
    if same_first_name:
        params["sex"] = patient.sex
    name, first = normalise_name(patient.birth_name), _first_name(patient.first_names)
    return [
        session.get_one(Patient, row.id)
        for row in session.connection().execute(stmt, params)
        if normalise_name(row.birth_name) == name
        and (not same_first_name or _first_name(row.first_names) == first)
    ]


def _check_duplicates(session: Session, patient: Patient) -> None:
    for other in probable_duplicates(session, patient):
        raise_alert(
            session,
            patient,
            "duplicate",
            "Mêmes traits (nom, prénom, date de naissance, sexe) qu'une autre identité",
            other,
        )


def _merge(session: Session, event: PamEvent, site: Structure, actor: str) -> FeedOutcome:
    """A40: the identities named in MRG-1 are merged into the one of PID-3 (which may be new)."""
    p = event.patient
    assert p.ipp is not None
    sources = [s for s in (find_by_identifier(session, i, site) for i in event.merged_patient_ids) if s]
    target = find_by_identifier(session, p.ipp, site)
    if target is None:
        if not sources:
            raise Hl7Error(
                code="204",
                severity="E",
                location="MRG^1^1",
                message="Fusion : ni l'identité source ni l'identité cible ne sont connues",
                reject=False,
            )
        # The surviving IPP is new to us: it takes over the first source identity.
        target = sources.pop(0)
        target.identifiers.append(
            PatientIdentifier(authority=_ipp_authority(p.ipp, site), value=p.ipp.value, type_code="PI")
        )
    merge_into(session, target, sources, actor, reason=f"A40 {event.header.control_id}")
    return FeedOutcome(target.id, target.structure_id, False, target.status)


def merge_into(session: Session, target: Patient, sources: list[Patient], actor: str, reason: str) -> None:
    for src in sources:
        if src.id == target.id:
            continue
        for ident in list(src.identifiers):
            src.identifiers.remove(ident)
            session.flush()
            target.identifiers.append(
                PatientIdentifier(authority=ident.authority, value=ident.value, type_code=ident.type_code)
            )
        src.active = False
        src.merged_into_id = target.id
        for alert in session.scalars(
            select(IdentityAlert).where(
                IdentityAlert.open.is_(True),
                (IdentityAlert.patient_id == src.id) | (IdentityAlert.other_patient_id == src.id),
            )
        ):
            alert.open = False
        session.add(
            IdentityEvent(
                patient_id=src.id,
                kind="merged_into",
                actor=actor,
                status_before=src.status,
                status_after=src.status,
                detail={"target": target.id, "reason": reason},
            )
        )
        session.add(
            IdentityEvent(
                patient_id=target.id,
                kind="merge",
                actor=actor,
                status_before=target.status,
                status_after=target.status,
                detail={"source": src.id, "reason": reason},
            )
        )
    session.flush()


def _change_identifier(session: Session, event: PamEvent, site: Structure) -> None:
    """A47: the IPP in MRG-1 is replaced by the one in PID-3."""
    assert event.patient.ipp is not None
    for old in event.merged_patient_ids:
        row = session.scalar(
            select(PatientIdentifier).where(
                PatientIdentifier.authority == _ipp_authority(old, site), PatientIdentifier.value == old.value
            )
        )
        if row is not None:
            row.value = event.patient.ipp.value
            row.authority = _ipp_authority(event.patient.ipp, site)
    session.flush()
