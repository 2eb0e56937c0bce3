"""Read models for the pages and the API: searches and figures, no business rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.orm import Session, selectinload

from opensegur.flows.identity_feed import probable_duplicates
from opensegur.identity.rniv import IdentityStatus, may_transmit_ins
from opensegur.store.models import IdentityAlert, Patient, PatientIdentifier, Structure


@dataclass
class PatientFilter:
    ins: str | None = None
    ipp: str | None = None
    status: str | None = None
    site: int | None = None
    q: str | None = None
    alerts_only: bool = False
    include_inactive: bool = False
    limit: int = 200
    offset: int = 0
    visible: ColumnElement[bool] | None = None  # the reader's scope (web.deps.patient_filter)


def search_patients(s: Session, f: PatientFilter) -> tuple[list[Patient], int]:
    stmt = select(Patient).options(selectinload(Patient.identifiers), selectinload(Patient.structure))
    if not f.include_inactive:
        stmt = stmt.where(Patient.active.is_(True))
    if f.visible is not None:
        stmt = stmt.where(f.visible)
    if f.ins:
        stmt = stmt.where(Patient.ins_matricule == "".join(f.ins.split()).upper())
    if f.ipp:
        stmt = stmt.where(Patient.identifiers.any(PatientIdentifier.value == f.ipp.strip()))
    if f.status:
        stmt = stmt.where(Patient.status == f.status)
    if f.site:
        stmt = stmt.where(Patient.structure_id == f.site)
    if f.q:
        term = f"%{f.q.strip().upper()}%"
        stmt = stmt.where(
            or_(
                func.upper(Patient.birth_name).like(term),
                func.upper(Patient.used_name).like(term),
                func.upper(Patient.first_names).like(term),
            )
        )
    if f.alerts_only:
        stmt = stmt.where(
            Patient.id.in_(select(IdentityAlert.patient_id).where(IdentityAlert.open.is_(True)))
        )
    total = s.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = s.scalars(
        stmt.order_by(Patient.birth_name, Patient.first_names, Patient.id).limit(f.limit).offset(f.offset)
    ).all()
    return list(rows), total


def ins_metrics(s: Session, visible: ColumnElement[bool] | None = None) -> dict[str, Any]:
    """Share of active identities that are qualified, overall and per site (within ``visible`` if given)."""
    rows = s.execute(
        select(Patient.structure_id, Patient.status, func.count())
        .where(Patient.active.is_(True), visible if visible is not None else true())
        .group_by(Patient.structure_id, Patient.status)
    ).all()
    sites = {st.id: st for st in s.scalars(select(Structure).where(Structure.kind == "EG"))}
    by_status = {status.value: 0 for status in IdentityStatus}
    per_site: dict[int, dict[str, int]] = {}
    for structure_id, status, count in rows:
        by_status[status] = by_status.get(status, 0) + count
        per_site.setdefault(structure_id, {st.value: 0 for st in IdentityStatus})[status] = count
    total = sum(by_status.values())

    def rate(counts: dict[str, int]) -> float:
        n = sum(counts.values())
        return round(counts.get("QUAL", 0) / n, 4) if n else 0.0

    return {
        "active_identities": total,
        "qualified": by_status.get("QUAL", 0),
        "qualified_rate": rate(by_status),
        "by_status": by_status,
        "sites": [
            {
                "structure_id": sid,
                "finess": sites[sid].finess if sid in sites else None,
                "name": sites[sid].name if sid in sites else None,
                "active_identities": sum(c.values()),
                "qualified": c.get("QUAL", 0),
                "qualified_rate": rate(c),
            }
            for sid, c in sorted(per_site.items())
        ],
    }


def open_alerts(
    s: Session, patient_id: int | None = None, limit: int = 50, visible: ColumnElement[bool] | None = None
) -> list[IdentityAlert]:
    stmt = select(IdentityAlert).where(IdentityAlert.open.is_(True))
    if visible is not None:
        stmt = stmt.where(IdentityAlert.patient_id.in_(select(Patient.id).where(visible)))
    if patient_id is not None:
        stmt = stmt.where(
            or_(IdentityAlert.patient_id == patient_id, IdentityAlert.other_patient_id == patient_id)
        )
    return list(s.scalars(stmt.order_by(IdentityAlert.created_at.desc()).limit(limit)))


def patient_json(p: Patient) -> dict[str, Any]:
    """A patient as the API shows it. The matricule leaves only for a qualified identity, per the RNIV."""
    status = IdentityStatus(p.status)
    ins = None
    if p.ins_matricule and may_transmit_ins(status):
        ins = {"matricule": p.ins_matricule, "oid": p.ins_oid}
    return {
        "id": p.id,
        "site": {"id": p.structure_id, "finess": p.structure.finess, "name": p.structure.name},
        "identifiers": [
            {"system": i.authority, "value": i.value, "type": i.type_code} for i in p.identifiers
        ],
        "ins": ins,
        "traits": {
            "birth_name": p.birth_name,
            "first_names": p.first_names,
            "first_name": p.first_names.split(" ")[0] if p.first_names else None,
            "birth_date": p.birth_date.isoformat() if p.birth_date else None,
            "sex": p.sex,
            "birth_place": p.birth_place,
        },
        "used_name": p.used_name,
        "used_first_name": p.used_first_name,
        "status": {"code": status.value, "label": status.label},
        "reliability": p.reliability,
        "active": p.active,
        "merged_into": p.merged_into_id,
    }


def duplicate_candidates(s: Session, p: Patient) -> list[Patient]:
    """Other active identities of the same site that look like the same person (for the merge form)."""
    return probable_duplicates(s, p, same_first_name=False)
