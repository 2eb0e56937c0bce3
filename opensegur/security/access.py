"""Which patients an actor may see: the scopes of the authorisation matrix turned into database filters.

The matrix (``matrix.py``) says in which scopes an action is granted; this module says which patients those
scopes reach, at the data level, so that patient lists are filtered in the query and a single patient is checked
by the same rule:
- ``ght``: every patient;
- ``site:<FINESS>``: the patients whose identity belongs to that site (``Patient.structure_id``);
- ``unit:<FINESS>/<UF>``: the care relationship — a stay of the patient in that unit of that site, not
  cancelled, current or ended less than ``DISCHARGE_GRACE`` ago (``flows/stays.py`` records the stays from the
  PAM FR movements).
A merged identity (``Patient.merged_into_id``) is judged on its own row: its stays and site, not its survivor's.
Merges move the identifiers, not the stays, so a unit team reaches a merged-away identity only through the
stays recorded under it; following the survivor would need a join on every list for a rare case.

Break the glass: outside these scopes a professional may still open one patient's record in an emergency, with
a motif; the audit trail records it and the access lasts ``GLASS_DURATION``. Deciding whether the actor holds
the ``break_glass`` action (and a strong session) is the matrix's job, done by the web layer before calling.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, false, or_, select, true
from sqlalchemy.orm import Session

from opensegur.security.actor import Actor
from opensegur.security.matrix import Scope
from opensegur.store.models import AuditEvent, Patient, Stay, Structure, utcnow

__all__ = [
    "BREAK_GLASS_ACTION",
    "DISCHARGE_GRACE",
    "GLASS_DURATION",
    "MIN_MOTIF_LENGTH",
    "break_glass",
    "glass_broken",
    "patient_allowed",
    "patient_allowed_or_glass",
    "patient_scope_filter",
]

# A discharged patient's letters, reports and results are still written by the unit for a while after the A03:
# the unit's team keeps the care relationship for two days after discharge.
DISCHARGE_GRACE = timedelta(hours=48)
# Long enough for an emergency shift's work on the record, short enough that the motif stays the reason.
GLASS_DURATION = timedelta(hours=4)
# A motif must say something: "urgence" alone is not a reason a reviewer can check.
MIN_MOTIF_LENGTH = 10
BREAK_GLASS_ACTION = "break_glass"
_REASON_PREFIX = "bris de glace: "
_REASON_MAX = 200  # audit_event.reason; the full motif goes into ``detail``


def patient_scope_filter(scopes: Sequence[Scope], *, now: datetime | None = None) -> ColumnElement[bool]:
    """A WHERE clause on ``Patient`` keeping the patients these scopes reach; no scope reaches no one."""
    if any(scope.kind == "ght" for scope in scopes):
        return true()
    sites = sorted({scope.site for scope in scopes if scope.kind == "site" and scope.site})
    units = sorted({(scope.site, scope.unit) for scope in scopes if scope.kind == "unit"})
    clauses: list[ColumnElement[bool]] = []
    if sites:
        clauses.append(
            Patient.structure_id.in_(
                select(Structure.id).where(Structure.kind == "EG", Structure.finess.in_(sites))
            )
        )
    if units:
        since = (now or utcnow()) - DISCHARGE_GRACE
        clauses.append(
            exists(
                select(Stay.id)
                .join(Structure, Structure.id == Stay.structure_id)
                .where(
                    Stay.patient_id == Patient.id,
                    Stay.cancelled.is_(False),
                    or_(Stay.ended_at.is_(None), Stay.ended_at >= since),
                    or_(*(and_(Structure.finess == site, Stay.unit_code == unit) for site, unit in units)),
                )
            )
        )
    return or_(*clauses) if clauses else false()


def patient_allowed(
    session: Session, scopes: Sequence[Scope], patient_id: int, *, now: datetime | None = None
) -> bool:
    """Whether these scopes reach this patient (an unknown patient is reached by none)."""
    found = session.scalar(
        select(Patient.id).where(Patient.id == patient_id, patient_scope_filter(scopes, now=now))
    )
    return found is not None


def break_glass(session: Session, actor: Actor, patient_id: int, reason: str) -> None:
    """Record that ``actor`` breaks the glass on this patient's record; ValueError (French) without a motif."""
    motif = " ".join(reason.split())
    if len(motif) < MIN_MOTIF_LENGTH:
        raise ValueError(
            f"Bris de glace refusé : un motif d'au moins {MIN_MOTIF_LENGTH} caractères est obligatoire"
        )
    if session.get(Patient, patient_id) is None:
        raise ValueError("Bris de glace refusé : patient inconnu")
    session.add(
        AuditEvent(
            action=BREAK_GLASS_ACTION,
            patient_id=patient_id,
            reason=(_REASON_PREFIX + motif)[:_REASON_MAX],
            detail={"motif": motif},
            **actor.audit_fields(),
        )
    )
    session.flush()


def glass_broken(session: Session, actor: Actor, patient_id: int, now: datetime | None = None) -> bool:
    """Whether this account broke the glass on this patient less than ``GLASS_DURATION`` ago."""
    since = (now or utcnow()) - GLASS_DURATION
    # The account id when there is one: a login name can be reused after a departure, the id cannot.
    who = (
        AuditEvent.account_id == actor.account_id
        if actor.account_id is not None
        else AuditEvent.actor == actor.name
    )
    found = session.scalar(
        select(AuditEvent.id)
        .where(
            AuditEvent.action == BREAK_GLASS_ACTION,
            AuditEvent.patient_id == patient_id,
            who,
            AuditEvent.at >= since,
        )
        .limit(1)
    )
    return found is not None


def patient_allowed_or_glass(
    session: Session, actor: Actor, scopes: Sequence[Scope], patient_id: int, *, now: datetime | None = None
) -> bool:
    """The scopes reach the patient, or the actor broke the glass on them recently."""
    if patient_allowed(session, scopes, patient_id, now=now):
        return True
    return glass_broken(session, actor, patient_id, now)
