"""Flow: the patient's stays from the PAM FR movements — who is cared for where, for the care relationship.

Called by the identity feed inside the transaction that stores the ADT message, once the patient is resolved:
the authorisation matrix reads ``Stay`` to let a unit's team see the patients currently cared for in their unit,
so a movement must be visible as soon as it is acknowledged. One row per site and visit number (PV1-19); a
message without PV1-19 records nothing.

IHE PAM / PAM FR semantics applied to the row:
- A01 admission, A04 outpatient registration, A05 pre-admission: the stay is current (not ended, not
  cancelled), in the unit and class the message gives. A pre-admitted patient is expected: the unit's team
  prepares the stay, so a pre-admission counts as current.
- A02 transfer, A06/A07 class changes, A21/A22 leave of absence and return (the stay stays current), Z99
  update of a movement: the unit (ZBE-7, else PV1-3) and the class (PV1-2) the message gives, when it gives them.
- A03 discharge: ``ended_at`` is the event time (EVN-6, else EVN-2, else now).
- A11 cancel admission, A38 cancel pre-admission: ``cancelled``.
- ZBE-5 = Y (a historic movement, corrected or cancelled after later ones): the current unit does not change.
- A12 cancel transfer: back to the unit the last transfer left (``previous_unit_code``): a PAM FR cancellation
  repeats the cancelled movement (its ZBE-7 is the unit being left), so the row remembers the unit before it.
- A13 cancel discharge: ``ended_at`` back to None.
- A52/A53 cancel leave / cancel return: the stay stays current, nothing to change.
- ZBE-4 CANCEL on a movement trigger (A01 with CANCEL…) cancels that movement, like its dedicated cancel event.
Other movement events (pending events A14-A16/A25-A27, tracking A09/A10, doctor changes A54/A55, account moves,
French Z80-Z89 responsibility events) do not change where the patient is cared for and are not applied.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.content.crbio import parse_ts
from opensegur.store.models import Patient, Stay, Structure, utcnow
from opensegur.transactions.hl7v2 import Hl7Error
from opensegur.transactions.pam_fr import PamEvent

__all__ = ["record_stay"]

ADMISSIONS = frozenset({"A01", "A04", "A05"})
# Movements whose message describes the stay as it is now: their unit and class replace the recorded ones.
DESCRIBING = frozenset({"A02", "A06", "A07", "A21", "A22", "Z99"})
DISCHARGE = "A03"
CANCEL_ADMISSION = frozenset({"A11", "A38"})
CANCEL_TRANSFER = "A12"
TRANSFER = "A02"
CANCEL_DISCHARGE = "A13"
CANCEL_LEAVE = frozenset({"A52", "A53"})
APPLIED = (
    ADMISSIONS | DESCRIBING | CANCEL_ADMISSION | CANCEL_LEAVE | {DISCHARGE, CANCEL_TRANSFER, CANCEL_DISCHARGE}
)
# A cancellation for a visit never received has nothing to cancel; creating the stay would invent a current one.
CANCEL_WITHOUT_STAY = CANCEL_ADMISSION | {CANCEL_TRANSFER}

# The dedicated cancel event of each movement, for senders that cancel with ZBE-4 CANCEL on the original trigger.
CANCEL_OF = {
    "A01": "A11",
    "A04": "A11",
    "A05": "A38",
    "A02": "A12",
    "A03": "A13",
    "A21": "A52",
    "A22": "A53",
}

# Column sizes of ``stay``: longer values are refused rather than cut, which could merge two visits into one.
VISIT_NUMBER_MAX, UNIT_CODE_MAX, PATIENT_CLASS_MAX = 64, 32, 4


def _check_sizes(event: PamEvent) -> None:
    checks = (
        (event.visit_number, VISIT_NUMBER_MAX, "PV1^1^19", "Numéro de venue (PV1-19)"),
        (event.unit, UNIT_CODE_MAX, "ZBE^1^7", "Code d'UF (ZBE-7 ou PV1-3)"),
        (event.patient_class, PATIENT_CLASS_MAX, "PV1^1^2", "Classe de patient (PV1-2)"),
    )
    for value, limit, location, label in checks:
        if value is not None and len(value) > limit:
            raise Hl7Error(
                "102",
                f"Valeur trop longue en {label} : {len(value)} caractères, {limit} au plus",
                location=location,
            )


def _event_time(event: PamEvent) -> datetime:
    at = parse_ts(event.event_datetime)
    # Stored in UTC: SQLite keeps no offset, so every timestamp of the table must share one zone to compare.
    return at.astimezone(UTC) if at is not None else utcnow()


def _describe(stay: Stay, event: PamEvent) -> None:
    if event.unit is not None:
        stay.unit_code = event.unit
    if event.patient_class is not None:
        stay.patient_class = event.patient_class


def record_stay(session: Session, event: PamEvent, patient: Patient, site: Structure) -> Stay | None:
    """Apply the movement of ``event`` to the patient's stay at ``site``; None when it records nothing.

    Raises Hl7Error (the caller's savepoint drops the whole message) for a visit number or unit code too long.
    """
    if event.visit_number is None:
        return None
    trigger = event.trigger
    if event.movement_action == "CANCEL":
        trigger = CANCEL_OF.get(trigger, trigger)
    if trigger not in APPLIED:
        return None
    if event.movement_historic and (trigger in DESCRIBING or trigger == CANCEL_TRANSFER):
        # ZBE-5 = Y: a correction of a past movement; where the patient is now has not changed.
        return None
    _check_sizes(event)
    at = _event_time(event)
    stay = session.scalar(
        select(Stay).where(Stay.structure_id == site.id, Stay.visit_number == event.visit_number)
    )
    if stay is None:
        if trigger in CANCEL_WITHOUT_STAY:
            return None
        # A feed that starts mid-stay (or a lost admission) still tells where the patient is now.
        stay = Stay(
            structure_id=site.id,
            patient_id=patient.id,
            visit_number=event.visit_number,
            started_at=at,
            cancelled=False,
        )
        session.add(stay)
    # The GAM owns the visit: after a merge or a correction, the patient it names now is the stay's patient.
    stay.patient_id = patient.id
    if trigger in ADMISSIONS:
        stay.started_at = at
        stay.ended_at = None
        stay.cancelled = False
        _describe(stay, event)
    elif trigger in DESCRIBING:
        if trigger == TRANSFER and event.unit is not None and event.unit != stay.unit_code:
            stay.previous_unit_code = stay.unit_code
        _describe(stay, event)
    elif trigger == DISCHARGE:
        _describe(stay, event)
        stay.ended_at = at
    elif trigger in CANCEL_ADMISSION:
        stay.cancelled = True
    elif trigger == CANCEL_DISCHARGE:
        stay.ended_at = None
    elif trigger == CANCEL_TRANSFER and stay.previous_unit_code is not None:
        stay.unit_code, stay.previous_unit_code = stay.previous_unit_code, None
    # CANCEL_LEAVE keeps the stay as it is (see the module docstring).
    stay.updated_at = utcnow()
    session.flush()
    return stay
