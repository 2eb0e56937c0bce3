"""Reading HL7 v2.5 SIU^S12/S13/S14/S15 appointment notifications."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from opensegur.transactions import hl7v2
from opensegur.transactions.hl7v2 import Hl7Error
from opensegur.transactions.siu import Appointment, parse_dtm, parse_siu

INS = "279035121518989"


def message(trigger: str = "S12", *segments: str) -> bytes:
    msh = f"MSH|^~\\&|AGENDA|CHU-X|OPENSEGUR|CHU-X|20260110090000||SIU^{trigger}^SIU_S12|C1|P|2.5|||||FRA|UNICODE UTF-8"
    return ("\r".join([msh, *segments]) + "\r").encode("utf-8")


def sch(appointment: str = "RDV1^AGENDA", start: str = "202603141030", placer: str = "P1") -> str:
    return "|".join(
        ["SCH", placer, appointment, "", "", "", "", "IRM^IRM du genou", "", "15", "min", f"^^^{start}"]
    )


PID = f"PID|1||IPP1^^^CHU-X&000897406&N^PI~{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||PAT-TROIS^DOMINIQUE"
AIL = "AIL|1|A|IMG^12^^CHU-X^^^Bâtiment B^2^Imagerie, bâtiment B, 2e étage"


def parse(raw: bytes) -> Appointment:
    msg, header = hl7v2.parse(raw)
    return parse_siu(msg, header)


def test_s12_with_every_part() -> None:
    appt = parse(
        message(
            "S12",
            sch(),
            "NTE|1||Venir à jeun.",
            PID,
            "RGS|1|A",
            "AIS|1|A|IRM-GEN^IRM du genou|202603141030",
            "NTE|2||Apporter les examens.",
            AIL,
            "AIP|1|A|801234567897^HODA^Adam^^^Dr",
        )
    )
    assert appt.event == "booked" and appt.appointment_id == "RDV1"
    assert appt.patient.ins is not None and appt.patient.ins.value == INS
    assert appt.start == datetime(2026, 3, 14, 9, 30, tzinfo=UTC)  # Paris wall clock, UTC+1 in March
    assert appt.place == "Imagerie, bâtiment B, 2e étage"
    assert appt.service == "IRM du genou" and appt.professionals == ["Dr Adam HODA"]
    assert appt.preparation == "Venir à jeun.\nApporter les examens."
    assert appt.reason == "IRM du genou" and appt.duration_minutes == 15


def test_tq1_wins_over_the_deprecated_sch11_and_an_offset_is_kept() -> None:
    appt = parse(message("S14", sch(), "TQ1|1||||||202603141400+0000", PID, "RGS|1", AIL))
    assert appt.event == "modified"
    assert appt.start == datetime(2026, 3, 14, 14, 0, tzinfo=UTC)


def test_place_from_the_location_components_without_description() -> None:
    appt = parse(message("S12", sch(), PID, "RGS|1", "AIL|1|A|RADIO^3^^CHU-X^^^B^1"))
    assert appt.place == "RADIO, bâtiment B, étage 1, salle 3, CHU-X"


def test_placer_id_when_no_filler_id_and_s13_is_a_modification() -> None:
    appt = parse(message("S13", sch(appointment="", placer="PLACER9"), PID, AIL))
    assert appt.appointment_id == "PLACER9" and appt.event == "modified"


def test_cancellation_needs_neither_date_nor_place() -> None:
    appt = parse(message("S15", sch(start=""), PID))
    assert appt.event == "cancelled" and appt.start is None and appt.place == ""


@pytest.mark.parametrize(
    ("raw", "code", "location", "words"),
    [
        (message("S17", sch(), PID, AIL), "201", "MSH^1^9^1^2", "non supporté"),
        (message("S12", PID, AIL), "100", "SCH", "SCH absent"),
        (
            message("S12", sch(appointment="", placer=""), PID, AIL),
            "101",
            "SCH^1^2",
            "Identifiant du rendez-vous",
        ),
        (message("S12", sch(), AIL), "100", "PID", "PID absent"),
        (message("S12", sch(start=""), PID, AIL), "101", "TQ1^1^7", "absentes"),
        (message("S12", sch(start="20260314"), PID, AIL), "102", "SCH^1^11^1^4", "AAAAMMJJHHMM"),
        (message("S12", sch(start="202602301030"), PID, AIL), "102", "SCH^1^11^1^4", "invalides"),
        (message("S12", sch(), PID), "101", "AIL^1^3", "Lieu"),
        (message("S12", sch(), PID, AIL, "NTE|1||" + "x" * 2100), "102", "NTE^1^3", "trop longues"),
    ],
)
def test_unusable_messages(raw: bytes, code: str, location: str, words: str) -> None:
    with pytest.raises(Hl7Error) as err:
        parse(raw)
    assert err.value.code == code and err.value.location == location and err.value.severity == "E"
    assert words in err.value.message


def test_dtm_forms() -> None:
    assert parse_dtm("202603141030", "X") == datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
    assert parse_dtm("20260714103045.5-0230", "X") == datetime(
        2026, 7, 14, 10, 30, 45, tzinfo=timezone(-timedelta(hours=2, minutes=30))
    )
    with pytest.raises(Hl7Error):
        parse_dtm("202603142460", "X")
