"""Stays from PAM FR movements through the real identity feed (HL7 intake), on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import hl7
import pytest
from sqlalchemy import select

from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.security.access import patient_allowed
from opensegur.security.matrix import Scope
from opensegur.store.db import Database
from opensegur.store.models import InboundMessage, Payload, Stay, Structure
from tests.conftest import EXAMPLES
from tests.flows.helpers import hl7 as msg
from tests.flows.helpers import msh, patient_by_ipp, pid, with_demo

SGL = EXAMPLES / "SGL"
CONSENT = sorted((EXAMPLES / "Vague 2" / "Consentement_DMP_PAMFR").glob("*.er7"))
ANS_VISIT = "000897406"  # PV1-19 of admission.er7 and sortie.er7


@pytest.fixture
def intake(db: Database) -> Hl7Intake:
    return Hl7Intake(with_demo(db))


def breteuil_finess(db: Database) -> str:
    with db.session() as s:
        return s.scalars(select(Structure.finess).where(Structure.ipp_authority == "CHU-X")).one()


def stays(db: Database) -> dict[str, Stay]:
    with db.session() as s:
        rows = s.scalars(select(Stay)).all()
        s.expunge_all()
        return {row.visit_number: row for row in rows}


def ans_segments(name: str) -> list[str]:
    text = (SGL / name).read_bytes().decode("utf-8")
    return [line for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if line]


def ans_transfer(unit: str) -> bytes:
    """The ANS admission template turned into the transfer that follows it, changing only the fields the
    template's readme says a sender adapts (MSH-9/10, EVN dates, ZBE-1, the UF of ZBE-7/8)."""
    out = []
    for line in ans_segments("admission.er7"):
        if line.startswith("ZFA"):  # the readme: only the admission template carries ZFA
            continue
        line = line.replace("ADT^A01^ADT_A01|3975", "ADT^A02^ADT_A02|3985")
        line = line.replace("20240306111154", "20240306151154")
        line = line.replace("ZBE|001^", "ZBE|003^").replace("UF^^^6268", f"UF^^^{unit}")
        out.append(line)
    return msg(*out)


def test_ans_admission_transfer_discharge(intake: Hl7Intake, db: Database) -> None:
    finess = breteuil_finess(db)
    surgery, medicine = Scope.parse(f"unit:{finess}/6268"), Scope.parse(f"unit:{finess}/4010")

    assert intake.handle((SGL / "admission.er7").read_bytes()).ack_code == "AA"
    stay = stays(db)[ANS_VISIT]
    patient = patient_by_ipp(db, "000003")
    assert patient is not None and stay.patient_id == patient.id
    assert (stay.unit_code, stay.patient_class, stay.ended_at, stay.cancelled) == ("6268", "I", None, False)
    # EVN-6 20240306111154 is Paris time (CET): stored in UTC.
    assert stay.started_at.replace(tzinfo=UTC) == datetime(2024, 3, 6, 10, 11, 54, tzinfo=UTC)
    with db.session() as s:
        assert patient_allowed(s, [surgery], patient.id)
        assert not patient_allowed(s, [medicine], patient.id)

    assert intake.handle(ans_transfer("4010")).ack_code == "AA"
    assert stays(db)[ANS_VISIT].unit_code == "4010"
    with db.session() as s:
        assert patient_allowed(s, [medicine], patient.id)
        assert not patient_allowed(s, [surgery], patient.id)

    # sortie.er7 sends its UF in ZBE-8, not ZBE-7, and nothing in PV1-3: the unit stays the last one known.
    assert intake.handle((SGL / "sortie.er7").read_bytes()).ack_code == "AA"
    stay = stays(db)[ANS_VISIT]
    assert stay.unit_code == "4010" and stay.ended_at is not None and not stay.cancelled
    with db.session() as s:
        # Discharged in 2024, long past the grace after discharge: the unit no longer reaches the patient,
        # the site still does.
        assert not patient_allowed(s, [medicine], patient.id)
        assert patient_allowed(s, [Scope.parse(f"site:{finess}")], patient.id)


def test_ans_consent_admissions_open_one_stay_per_visit(intake: Hl7Intake, db: Database) -> None:
    assert len(CONSENT) == 5
    for path in CONSENT:
        assert intake.handle(path.read_bytes()).ack_code == "AA", path.name
    recorded = stays(db)
    # Each example is an A01 with its own PV1-19; all in UF 6268 (ZBE-7), inpatient, current.
    assert set(recorded) == {"000897406", "000197406", "000297406", "000597406", "000997406"}
    assert {(s.unit_code, s.patient_class, s.ended_at, s.cancelled) for s in recorded.values()} == {
        ("6268", "I", None, False)
    }
    assert len({s.patient_id for s in recorded.values()}) == 1


def now_ts() -> str:
    return datetime.now(ZoneInfo("Europe/Paris")).strftime("%Y%m%d%H%M%S")


def pv1(visit: str | None, patient_class: str | None) -> str:
    fields = ["PV1", "1", patient_class or "", "^^^CHU-X&000897406&M", *[""] * 15]
    if visit is not None:
        fields.append(f"{visit}^^^CHU-X&000897406&M^VN")
    return "|".join(fields)


def adt(
    trigger: str,
    cid: str,
    *,
    visit: str | None = "V1",
    unit: str | None = "6268",
    patient_class: str | None = "I",
    action: str = "INSERT",
    historic: str = "N",
    ipp: str = "555001",
) -> bytes:
    ts = now_ts()
    zbe = f"ZBE|{cid}^CHU-X^000897406|{ts}||{action}|{historic}||Unité^^^^^CHU-X&000897406&N^UF^^^{unit or ''}||HMS"
    return msg(msh(trigger, cid), f"EVN||{ts}||||{ts}", pid(ipp), pv1(visit, patient_class), zbe)


Step = tuple[str, str, str | None, str | None]  # trigger, ZBE-4, unit, class

A01: Step = ("A01", "INSERT", "6268", "I")


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([A01, ("A02", "INSERT", "4010", None)], ("4010", "I", True, False), id="transfer"),
        pytest.param([("A05", "INSERT", "1001", "P")], ("1001", "P", True, False), id="pre-admission-current"),
        pytest.param([("A05", "INSERT", "1001", "P"), ("A38", "CANCEL", "1001", "P")], ("1001", "P", True, True),
                     id="cancel-pre-admission"),
        pytest.param([A01, ("A11", "CANCEL", "6268", "I")], ("6268", "I", True, True), id="cancel-admission"),
        pytest.param([A01, ("A01", "CANCEL", "6268", "I")], ("6268", "I", True, True), id="zbe-cancel-admission"),
        pytest.param([A01, ("A03", "INSERT", None, None)], ("6268", "I", False, False), id="discharge"),
        pytest.param([A01, ("A03", "INSERT", None, None), ("A13", "CANCEL", None, None)],
                     ("6268", "I", True, False), id="cancel-discharge"),
        pytest.param([A01, ("A03", "INSERT", None, None), ("A03", "CANCEL", None, None)],
                     ("6268", "I", True, False), id="zbe-cancel-discharge"),
        # A cancelled transfer gives the patient back to the unit the transfer left, whose team regains access.
        pytest.param([A01, ("A02", "INSERT", "4010", None), ("A12", "CANCEL", "4010", None)],
                     ("6268", "I", True, False), id="cancel-transfer-back-to-unit"),
        pytest.param([A01, ("A02", "INSERT", "4010", None), ("A02", "CANCEL", "4010", None)],
                     ("6268", "I", True, False), id="zbe-cancel-transfer-back-to-unit"),
        pytest.param([("A04", "INSERT", "3105", "O"), ("A06", "INSERT", None, "I")], ("3105", "I", True, False),
                     id="outpatient-to-inpatient"),
        pytest.param([A01, ("A07", "INSERT", None, "O")], ("6268", "O", True, False), id="inpatient-to-outpatient"),
        pytest.param([A01, ("A21", "INSERT", None, None), ("A22", "INSERT", None, None)],
                     ("6268", "I", True, False), id="leave-of-absence"),
        pytest.param([A01, ("Z99", "UPDATE", "2201", None)], ("2201", "I", True, False), id="z99-update"),
        pytest.param([A01, ("A11", "CANCEL", "6268", "I"), A01], ("6268", "I", True, False), id="re-admission"),
        # A feed that starts after the admission still learns where the patient is.
        pytest.param([("A02", "INSERT", "4010", "I")], ("4010", "I", True, False), id="transfer-unknown-visit"),
        pytest.param([("A03", "INSERT", "4010", "I")], ("4010", "I", False, False), id="discharge-unknown-visit"),
        # Pending events do not move the patient.
        pytest.param([A01, ("A15", "INSERT", "4010", None)], ("6268", "I", True, False), id="pending-transfer"),
    ],
)  # fmt: skip
def test_movement_semantics(
    intake: Hl7Intake, db: Database, steps: list[Step], expected: tuple[str, str, bool, bool]
) -> None:
    for n, (trigger, action, unit, patient_class) in enumerate(steps):
        raw = adt(trigger, f"S{n}", unit=unit, patient_class=patient_class, action=action)
        result = intake.handle(raw)
        assert result.ack_code == "AA", (trigger, result.ack)
    stay = stays(db)["V1"]
    assert (stay.unit_code, stay.patient_class, stay.ended_at is None, stay.cancelled) == expected


def test_a_historic_movement_leaves_the_current_unit(intake: Hl7Intake, db: Database) -> None:
    """ZBE-5 = Y: a Z99 correcting, or an A12 cancelling, a transfer that later ones followed does not move the
    patient out of the unit they are in now."""
    assert intake.handle(adt("A01", "H1")).ack_code == "AA"
    assert intake.handle(adt("A02", "H2", unit="4010", patient_class=None)).ack_code == "AA"
    assert intake.handle(adt("A02", "H3", unit="2201", patient_class=None)).ack_code == "AA"
    assert (
        intake.handle(
            adt("Z99", "H4", unit="3105", patient_class=None, action="UPDATE", historic="Y")
        ).ack_code
        == "AA"
    )
    assert (
        intake.handle(
            adt("A12", "H5", unit="4010", patient_class=None, action="CANCEL", historic="Y")
        ).ack_code
        == "AA"
    )
    assert stays(db)["V1"].unit_code == "2201"
    assert intake.handle(adt("Z99", "H6", unit="3105", patient_class=None, action="UPDATE")).ack_code == "AA"
    assert stays(db)["V1"].unit_code == "3105"  # the current movement, corrected


def test_cancellation_of_an_unknown_visit_records_nothing(intake: Hl7Intake, db: Database) -> None:
    for n, trigger in enumerate(("A11", "A38", "A12")):
        assert intake.handle(adt(trigger, f"C{n}", action="CANCEL")).ack_code == "AA"
    assert stays(db) == {}


def test_message_without_visit_number_records_no_stay(intake: Hl7Intake, db: Database) -> None:
    assert intake.handle(adt("A01", "N1", visit=None)).ack_code == "AA"
    assert patient_by_ipp(db, "555001") is not None
    assert stays(db) == {}


def test_discharge_grace(intake: Hl7Intake, db: Database) -> None:
    finess = breteuil_finess(db)
    unit = [Scope.parse(f"unit:{finess}/6268")]
    assert intake.handle(adt("A01", "G1")).ack_code == "AA"
    assert intake.handle(adt("A03", "G2", unit=None)).ack_code == "AA"
    patient = patient_by_ipp(db, "555001")
    assert patient is not None
    with db.session() as s:
        assert patient_allowed(s, unit, patient.id)  # just discharged: letters are still being written
        later = datetime.now(UTC) + timedelta(hours=49)
        assert not patient_allowed(s, unit, patient.id, now=later)


@pytest.mark.parametrize(
    ("kwargs", "location"),
    [
        ({"visit": "9" * 65}, "PV1^1^19"),
        ({"unit": "U" * 33}, "ZBE^1^7"),
        ({"patient_class": "INPAT"}, "PV1^1^2"),
    ],
)
def test_oversized_visit_fields_are_refused(
    intake: Hl7Intake, db: Database, kwargs: dict[str, str], location: str
) -> None:
    result = intake.handle(adt("A01", f"L-{location}", **kwargs))
    assert result.ack_code == "AE"
    err = hl7.parse(result.ack.decode("utf-8").replace("\n", "\r")).segment("ERR")
    assert str(err[2]).startswith(location) and str(err[8])
    assert stays(db) == {}
    # The refusal undoes all the message wrote (the identity it created first), yet the message is kept.
    assert patient_by_ipp(db, "555001") is None
    with db.session() as s:
        stored = s.get(InboundMessage, result.message_id)
        assert stored is not None and stored.status == "rejected" and stored.ack == result.ack
        assert s.get(Payload, stored.payload_sha256) is not None


def test_refusals_among_messages_arriving_together_undo_their_own_message_alone(
    intake: Hl7Intake, db: Database
) -> None:
    # Several connections' messages share a commit (store/group_commit): a refusal does not touch its neighbours.
    raws = [adt("A01", f"G{i}", visit="9" * 65 if i % 2 else f"G{i}", ipp=f"5560{i}") for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(intake.handle, raws))
    assert [r.ack_code for r in results] == ["AA", "AE"] * 4
    assert [patient_by_ipp(db, f"5560{i}") is not None for i in range(8)] == [True, False] * 4
    assert sorted(stays(db)) == ["G0", "G2", "G4", "G6"]
    with db.session() as s:
        assert [s.get_one(InboundMessage, r.message_id).ack for r in results] == [r.ack for r in results]
