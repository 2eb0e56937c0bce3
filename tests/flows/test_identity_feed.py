"""HL7 v2 identity feed (PAM FR) through the durable intake, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import hl7
import pytest
from sqlalchemy import func, select

from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.flows.identity_feed import apply_event
from opensegur.store.db import Database
from opensegur.store.models import IdentityAlert, IdentityEvent, InboundMessage, Patient, Payload
from opensegur.transactions import hl7v2, pam_fr
from tests.conftest import EXAMPLES
from tests.flows.helpers import hl7 as msg
from tests.flows.helpers import msh, patient_by_ipp, pid, with_demo

ANS_IDENTITY_EXAMPLES = sorted((EXAMPLES / "SGL").glob("*.er7")) + sorted(
    (EXAMPLES / "Vague 2" / "Consentement_DMP_PAMFR").glob("*.er7")
)
VALID_INS = "279035121518989"  # PAT-TROIS DOMINIQUE, key 89 by the NIR rule


def ack_of(raw: bytes) -> hl7.Message:
    return hl7.parse(raw.decode("utf-8").replace("\n", "\r"))


def err_fields(ack: hl7.Message) -> list[tuple[str, str]]:
    out = []
    for seg in ack.segments("ERR") if any(str(s[0]) == "ERR" for s in ack) else []:
        out.append((str(seg[2]), str(seg[3])))
    return out


@pytest.fixture
def intake(db: Database) -> Hl7Intake:
    return Hl7Intake(with_demo(db))


def test_ans_identity_examples_are_accepted(intake: Hl7Intake, db: Database) -> None:
    assert len(ANS_IDENTITY_EXAMPLES) == 7
    for path in ANS_IDENTITY_EXAMPLES:
        result = intake.handle(path.read_bytes())
        assert result.ack_code == "AA", (path.name, result.ack)
        ack = ack_of(result.ack)
        assert str(ack.segment("MSA")[1]) == "AA"
    p = patient_by_ipp(db, "000003")
    assert p is not None
    assert (p.birth_name, p.first_names, p.sex, p.status) == ("PAT-TROIS", "DOMINIQUE", "F", "QUAL")
    assert (p.ins_matricule, p.ins_oid) == (VALID_INS, "1.2.250.1.213.1.4.10")
    # The last consent example processed sets the DMP consent values.
    assert p.dmp_consent
    with db.session() as s:
        # admission.er7 and ConsentementConsultation…er7 share control id 3975: stored once.
        assert s.scalar(select(func.count()).select_from(InboundMessage)) == 6
        assert (
            s.scalar(select(func.count()).select_from(Patient).where(Patient.ins_matricule == VALID_INS)) == 1
        )


def test_each_consent_example_sets_its_consent(db: Database) -> None:
    intake = Hl7Intake(with_demo(db))
    path = (
        EXAMPLES
        / "Vague 2"
        / "Consentement_DMP_PAMFR"
        / "NonConsentementConsultation_OppositionAlimentation.er7"
    )
    assert intake.handle(path.read_bytes()).ack_code == "AA"
    p = patient_by_ipp(db, "000003")
    assert p is not None
    assert "IO" in p.dmp_consent.values() and "INC" in p.dmp_consent.values()


def test_repeated_control_id_is_answered_again_and_processed_once(intake: Hl7Intake, db: Database) -> None:
    raw = msg(msh("A28", "C1"), "EVN||20240306111154", pid("777"))
    first = intake.handle(raw)
    second = intake.handle(raw)
    assert first.ack_code == second.ack_code == "AA"
    assert second.duplicate and first.ack == second.ack
    with db.session() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(InboundMessage).where(InboundMessage.control_id == "C1")
            )
            == 1
        )
        assert (
            s.scalar(select(func.count()).select_from(Patient).where(Patient.birth_name == "VERLAINE")) == 1
        )
        # The repeat was applied and then went back with its record, which its control id refused.
        events = select(IdentityEvent.kind).join(Patient).where(Patient.birth_name == "VERLAINE")
        assert s.scalars(events).all() == ["pam_a28"]


def test_a_repeat_arriving_after_a_later_update_changes_nothing(intake: Hl7Intake, db: Database) -> None:
    first = msg(msh("A28", "R1"), "EVN||20240306111154", pid("778"))
    assert intake.handle(first).ack_code == "AA"
    renamed = msg(msh("A31", "R2"), "EVN||20240306111200", pid("778", name="RIMBAUD"))
    assert intake.handle(renamed).ack_code == "AA"
    again = intake.handle(first)
    assert again.duplicate and again.ack_code == "AA"
    p = patient_by_ipp(db, "778")
    assert p is not None and p.birth_name == "RIMBAUD"
    with db.session() as s:
        kinds = s.scalars(select(IdentityEvent.kind).where(IdentityEvent.patient_id == p.id)).all()
    assert kinds == ["pam_a28", "pam_a31"]


def test_one_message_arriving_on_several_connections_at_once_is_processed_once_and_all_get_its_ack(
    intake: Hl7Intake, db: Database
) -> None:
    # The connections' messages share a commit (store/group_commit): the copies meet in one transaction or in
    # the next, and each sees the first.
    raw = msg(msh("A28", "C9"), "EVN||20240306111154", pid("779"))
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(intake.handle, [raw] * 6))
    assert [r.ack_code for r in results] == ["AA"] * 6
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.ack for r in results}) == 1
    with db.session() as s:
        stored = select(func.count()).select_from(InboundMessage).where(InboundMessage.control_id == "C9")
        assert s.scalar(stored) == 1
        assert (
            s.scalar(select(func.count()).select_from(Patient).where(Patient.birth_name == "VERLAINE")) == 1
        )


def test_every_accepted_message_is_stored_with_its_payload(intake: Hl7Intake, db: Database) -> None:
    raw = msg(msh("A28", "C2"), "EVN||20240306111154", pid("778"))
    result = intake.handle(raw)
    with db.session() as s:
        row = s.get_one(InboundMessage, result.message_id)
        assert s.get_one(Payload, row.payload_sha256).data == raw
        assert row.ack == result.ack and row.status == "accepted"


@pytest.mark.parametrize(
    ("segment", "location", "code", "ack_code"),
    [
        (pid("801", ins="279035121518988", status="VALI"), "PID^1^3", "102", "AE"),  # wrong NIR key
        (pid("802", ins=VALID_INS, oid="1.2.3.4", status="VALI"), "PID^1^3", "103", "AE"),  # unknown OID
        (pid("803", birth="19790230"), "PID^1^7", "102", "AE"),  # impossible date
        (pid("804", sex="X"), "PID^1^8", "103", "AE"),
        (pid("805", name=""), "PID^1^5", "101", "AE"),  # missing birth name
        (pid("806", ins=VALID_INS, status="PROV"), "PID^1^32", "103", "AE"),  # INS on a provisional identity
    ],
)
def test_bad_identity_input_is_refused_with_err(
    intake: Hl7Intake, db: Database, segment: str, location: str, code: str, ack_code: str
) -> None:
    result = intake.handle(msg(msh("A28", f"BAD-{location}-{code}-{segment[8:11]}"), "EVN||2024", segment))
    ack = ack_of(result.ack)
    assert str(ack.segment("MSA")[1]) == ack_code
    err = ack.segment("ERR")
    assert str(err[2]).startswith(location), str(err)
    assert str(err[3]).startswith(code)
    assert str(err[8])  # a French user message
    with db.session() as s:
        row = s.get_one(InboundMessage, result.message_id)
        assert row.status == "rejected"  # kept, visible, not applied
        assert (
            s.scalar(
                select(func.count())
                .select_from(Patient)
                .where(Patient.identifiers.any(value=segment.split("|")[3].split("^")[0]))
            )
            == 0
        )


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"garbage that is not HL7", "100"),
        (msg("MSH|^~\\&|GAM|CHU-X|A|B|2024||ADT^A28^ADT_A05|X1|P|9.9", "PID|1"), "203"),
        (msg("MSH|^~\\&|GAM|CHU-X|A|B|2024||ADT^A99^ADT_A01|X2|P|2.5", "EVN||2024", pid("901")), "201"),
        (msg("MSH|^~\\&|GAM|CHU-X|A|B|2024||ORM^O01^ORM_O01|X4|P|2.5", "PID|1"), "200"),
    ],
)
def test_malformed_messages_get_ar(intake: Hl7Intake, raw: bytes, code: str) -> None:
    result = intake.handle(raw)
    ack = ack_of(result.ack)
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("ERR")[3]).startswith(code)


def test_ins_inconsistent_with_traits_is_accepted_with_warning_and_alert(
    intake: Hl7Intake, db: Database
) -> None:
    result = intake.handle(
        msg(
            msh("A28", "W1"), "EVN||2024", pid("808", ins=VALID_INS, birth="19790328", sex="M", status="VALI")
        )
    )
    assert result.ack_code == "AA"
    err = ack_of(result.ack).segment("ERR")
    assert str(err[2]) == "PID^1^3" and str(err[4]) == "W"
    p = patient_by_ipp(db, "808")
    assert p is not None and p.status == "QUAL"
    with db.session() as s:
        assert (
            s.scalar(
                select(IdentityAlert).where(
                    IdentityAlert.patient_id == p.id, IdentityAlert.kind == "ins_conflict"
                )
            )
            is not None
        )


def test_message_without_pid_gets_ae(intake: Hl7Intake) -> None:
    # A content error, not an envelope one: AE (HL7 2.5 §2.9.2), with the missing segment named.
    result = intake.handle(msg("MSH|^~\\&|GAM|CHU-X|A|B|2024||ADT^A28^ADT_A05|X3|P|2.5", "EVN||2024"))
    err = ack_of(result.ack).segment("ERR")
    assert result.ack_code == "AE" and str(err[3]).startswith("100") and str(err[2]).startswith("PID")


def test_strict_trait_change_by_the_gam_drops_the_status(intake: Hl7Intake, db: Database) -> None:
    ins = "261045935000" + "{:02d}"
    from opensegur.identity.ins import nir_key

    matricule = "2610459350001"
    matricule += f"{nir_key(matricule):02d}"
    assert (
        intake.handle(
            msg(msh("A28", "T1"), "EVN||2024", pid("950", name="LEROY", ins=matricule, status="VALI"))
        ).ack_code
        == "AA"
    )
    assert patient_by_ipp(db, "950").status == "QUAL"  # type: ignore[union-attr]
    # The GAM corrects the first name and now declares the identity validated without INS.
    assert (
        intake.handle(
            msg(
                msh("A31", "T2", "A05"),
                "EVN||2024",
                pid("950", name="LEROY", first="JEANNINE", status="VALI"),
            )
        ).ack_code
        == "AA"
    )
    p = patient_by_ipp(db, "950")
    assert p is not None and p.status == "VALI" and p.first_names == "JEANNINE" and p.ins_matricule is None
    assert ins  # the template above documents the layout used


def test_an_update_that_changes_nothing_leaves_the_identity_row_as_it_was(
    intake: Hl7Intake, db: Database
) -> None:
    intake.handle(msg(msh("A28", "N1"), "EVN||2024", pid("952", name="MOREAU")))
    stored = patient_by_ipp(db, "952")
    assert stored is not None
    assert (
        intake.handle(msg(msh("A31", "N2", "A05"), "EVN||2024", pid("952", name="MOREAU"))).ack_code == "AA"
    )
    again = patient_by_ipp(db, "952")
    assert again is not None and again.updated_at == stored.updated_at
    assert (
        intake.handle(msg(msh("A31", "N3", "A05"), "EVN||2024", pid("952", name="MOREAU", sex="M"))).ack_code
        == "AA"
    )
    changed = patient_by_ipp(db, "952")
    assert changed is not None and changed.sex == "M" and changed.updated_at > stored.updated_at
    assert changed.first_names == stored.first_names and changed.created_at == stored.created_at


def test_an_update_of_a_patient_the_transaction_holds_changes_that_object(
    intake: Hl7Intake, db: Database
) -> None:
    # Messages of one group commit share a session: the patient an earlier one loaded is the one updated.
    intake.handle(msg(msh("A28", "H1"), "EVN||2024", pid("953", name="MOREAU")))
    message, header = hl7v2.parse(
        msg(msh("A31", "H2", "A05"), "EVN||2024", pid("953", name="MOREAU", first="LUC"))
    )
    stored = patient_by_ipp(db, "953")
    assert stored is not None
    with db.session() as s:
        held = s.get_one(Patient, stored.id)
        outcome = apply_event(s, pam_fr.parse_pam(message, header), actor="test")
        assert outcome.patient_id == held.id and held.first_names == "LUC"
    p = patient_by_ipp(db, "953")
    assert p is not None and p.first_names == "LUC"


def test_lower_status_for_same_traits_keeps_local_status_and_warns(intake: Hl7Intake, db: Database) -> None:
    from opensegur.identity.ins import nir_key

    number = "2610459350002"
    matricule = f"{number}{nir_key(number):02d}"
    intake.handle(msg(msh("A28", "L1"), "EVN||2024", pid("951", name="LEROY", ins=matricule, status="VALI")))
    result = intake.handle(msg(msh("A08", "L2", "A01"), "EVN||2024", pid("951", name="LEROY", status="PROV")))
    assert result.ack_code == "AA"
    assert str(ack_of(result.ack).segment("ERR")[4]) == "W"
    p = patient_by_ipp(db, "951")
    assert p is not None and p.status == "QUAL"
    with db.session() as s:
        assert (
            s.scalar(
                select(IdentityAlert).where(
                    IdentityAlert.patient_id == p.id, IdentityAlert.kind == "status_conflict"
                )
            )
            is not None
        )


def test_a40_merges_identities(intake: Hl7Intake, db: Database) -> None:
    intake.handle(msg(msh("A28", "M1"), "EVN||2024", pid("960", name="DUVAL")))
    intake.handle(msg(msh("A28", "M2"), "EVN||2024", pid("961", name="DUVAL")))
    with db.session() as s:
        assert s.scalar(
            select(func.count()).select_from(IdentityAlert).where(IdentityAlert.kind == "duplicate")
        )
    result = intake.handle(
        msg(msh("A40", "M3", "A39"), "EVN||2024", pid("960", name="DUVAL"), "MRG|961^^^CHU-X&000897406&N^PI")
    )
    assert result.ack_code == "AA", result.ack
    survivor, merged = patient_by_ipp(db, "960"), None
    with db.session() as s:
        merged = s.scalar(select(Patient).where(Patient.merged_into_id == survivor.id))  # type: ignore[union-attr]
        assert merged is not None and not merged.active
        values = {i.value for i in s.get_one(Patient, survivor.id).identifiers}  # type: ignore[union-attr]
        assert values == {"960", "961"}


def test_a47_changes_the_ipp(intake: Hl7Intake, db: Database) -> None:
    intake.handle(msg(msh("A28", "I1"), "EVN||2024", pid("970", name="BLANC")))
    result = intake.handle(
        msg(msh("A47", "I2", "A30"), "EVN||2024", pid("971", name="BLANC"), "MRG|970^^^CHU-X&000897406&N^PI")
    )
    assert result.ack_code == "AA", result.ack
    assert patient_by_ipp(db, "970") is None
    assert patient_by_ipp(db, "971") is not None


def test_unknown_ipp_authority_is_refused(intake: Hl7Intake) -> None:
    segment = pid("990").replace("CHU-X&000897406&N", "AUTRE&1.2.3&ISO")
    raw = msg("MSH|^~\\&|GAM|AILLEURS|A|B|2024||ADT^A28^ADT_A05|U1|P|2.5", "EVN||2024", segment)
    result = intake.handle(raw)
    assert result.ack_code == "AE"
    assert str(ack_of(result.ack).segment("ERR")[3]).startswith("204")
