"""The ORU^R01 of a CR de biologie's results for the DPI, field by field and read back with hl7v2.parse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from opensegur.content.cda import parse_cda
from opensegur.content.crbio import LabObservation, extract_results
from opensegur.transactions.hl7v2 import parse
from opensegur.transactions.hl7v2_message import get_field, segments
from opensegur.transactions.lps_mdm import LpsPatient, MessageRoute
from opensegur.transactions.oru_results import (
    OruObservation,
    OruReport,
    abnormal_flag,
    build_oru_results,
    observation_from_lab,
)
from tests.conftest import SHARED

CISIS = SHARED / "cisis" / "ExemplesCDA"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PARIS_SUMMER = timezone(timedelta(hours=2))
PATIENT = LpsPatient(
    birth_name="PAT-TROIS",
    first_names="DOMINIQUE MARIE-LOUISE",
    birth_date="19790328",
    sex="F",
    ins_matricule="279035121518989",
    ins_oid="1.2.250.1.213.1.4.10",
    ipp="IPP42",
    ipp_namespace="CHT",
    ipp_authority="1.2.250.1.999.7",
    identity_status="QUAL",
)
ROUTE = MessageRoute(receiving_application="DPI", receiving_facility="CHT")


def _report(name: str, **kwargs: object) -> OruReport:
    content = (CISIS / name).read_bytes()
    header = parse_cda(content)[1]
    args: dict[str, object] = {
        "patient": PATIENT,
        "id_root": header.id.root,
        "id_extension": header.id.extension,
        "set_root": header.set_id.root if header.set_id else None,
        "set_extension": header.set_id.extension if header.set_id else None,
        "observations": [observation_from_lab(o) for o in extract_results(content)],
        "reported_at": datetime(2021, 4, 1, 17, 10, tzinfo=timezone(timedelta(hours=1))),
    }
    args.update(kwargs)
    return OruReport(**args)  # type: ignore[arg-type]


def _lab(**kwargs: object) -> LabObservation:
    args: dict[str, object] = {
        "loinc": "2345-7",
        "label": "Glucose",
        "value": "5.2",
        "value_num": 5.2,
        "unit": "mmol/L",
        "reference_low": None,
        "reference_high": None,
        "reference_text": None,
        "interpretation": None,
        "observed_at": None,
    }
    args.update(kwargs)
    return LabObservation(**args)  # type: ignore[arg-type]


def test_tsh_report_field_by_field() -> None:
    raw = build_oru_results(_report("BIO-CR-BIO_2024.01_TSH_1.xml"), ROUTE, control_id="MSSR7-1", now=NOW)
    assert raw.endswith(b"\r") and b"\n" not in raw
    message, header = parse(raw)
    assert (header.message_type, header.trigger, header.structure) == ("ORU", "R01", "ORU_R01")
    assert (header.version, header.control_id, header.charset) == ("2.5", "MSSR7-1", "UNICODE UTF-8")
    assert header.receiving_application == "DPI" and header.receiving_facility == "CHT"
    assert header.datetime == "20260102030405+0000"
    assert [seg.id for seg in message] == ["MSH", "PID", "PV1", "ORC", "OBR", "OBX", "OBX"]

    pid = segments(message, "PID")[0]
    assert get_field(pid, 3, 1, 1) == "279035121518989" and get_field(pid, 3, 1, 5) == "INS"
    assert get_field(pid, 3, 1, 4, 2) == "1.2.250.1.213.1.4.10"
    assert get_field(pid, 3, 2, 1) == "IPP42" and get_field(pid, 3, 2, 5) == "PI"
    assert get_field(pid, 5, 1, 1) == "PAT-TROIS" and get_field(pid, 5, 1, 3) == "DOMINIQUE MARIE-LOUISE"
    assert (get_field(pid, 7), get_field(pid, 8), get_field(pid, 32)) == ("19790328", "F", "QUAL")
    assert get_field(segments(message, "PV1")[0], 2) == "N"

    orc, obr = segments(message, "ORC")[0], segments(message, "OBR")[0]
    assert get_field(orc, 1) == "RE"
    assert get_field(obr, 2) == get_field(orc, 2) == "1.2.250.1.213.1.1.1.55.2024.9.1"  # the CDA id
    assert get_field(obr, 3) == get_field(orc, 3) == "1.2.250.1.213.1.1.1.55.2024.9"  # its setId
    assert [get_field(obr, 4, 1, c) for c in (1, 2, 3)] == ["11502-2", "CR d'examens biologiques", "LN"]
    assert get_field(obr, 7) == "20140402145521+0200"  # the earliest result
    assert get_field(obr, 22) == "20210401171000+0100"
    assert get_field(obr, 25) == "F"

    tsh, t4 = segments(message, "OBX")
    assert [get_field(tsh, f) for f in (1, 2)] == ["1", "NM"]
    assert [get_field(tsh, 3, 1, c) for c in (1, 3)] == ["3016-3", "LN"]
    assert get_field(tsh, 3, 1, 2).startswith("Thyréostimuline")
    assert get_field(tsh, 5) == "1.950"  # the lab's precision, not the float's
    assert [get_field(tsh, 6, 1, c) for c in (1, 3)] == ["m[IU]/L", "UCUM"]
    assert (get_field(tsh, 7), get_field(tsh, 8), get_field(tsh, 11)) == ("0.27-4.2", "N", "F")
    assert get_field(tsh, 14) == "20140402145521+0200"
    assert (get_field(t4, 1), get_field(t4, 3), get_field(t4, 5)) == ("2", "3024-7", "7.67")
    assert (get_field(t4, 7), get_field(t4, 8)) == ("9.3-17.0", "L")


def test_result_without_loinc_and_with_an_interval_is_text() -> None:
    raw = build_oru_results(_report("BIO-CR-BIO_2024.01_CRP_non_LOINC.xml"), ROUTE, control_id="C1", now=NOW)
    [obx] = segments(parse(raw)[0], "OBX")
    assert get_field(obx, 2) == "ST"
    # No LOINC: the lab's local code, coding system "L" (HL7 table 0396, local).
    assert get_field(obx, 3, 1, 1) == "1234" and get_field(obx, 3, 1, 3) == "L"
    assert get_field(obx, 3, 1, 2).startswith("C Réactive protéine")
    assert (get_field(obx, 5), get_field(obx, 6), get_field(obx, 7)) == ("≤ 1.0", "mg/L", "≤ 5.0")


def test_local_code_coded_value_and_escaping() -> None:
    hostile = "a|b^c~d&e\\f\r\ng"
    report = OruReport(
        patient=PATIENT,
        id_root="1.2.250.1.999.7.1",
        id_extension="CR|42",
        set_root=None,
        set_extension=None,
        observations=[
            OruObservation(code="CRP-L", label=hostile, value=hostile, code_system="99LAB", unit="mg/L"),
            OruObservation(
                code="5778-6",
                label="Couleur",
                value=None,
                coded_value=("371244009", "jaune", "SCT"),
                interpretation="POS",
                observed_at=datetime(2024, 1, 4, 13, 19, 33, tzinfo=PARIS_SUMMER),
            ),
        ],
    )
    message, _ = parse(build_oru_results(report, ROUTE, control_id="C2", now=NOW))
    text, coded = segments(message, "OBX")
    assert [get_field(text, 3, 1, c) for c in (1, 3)] == ["CRP-L", "99LAB"]
    assert get_field(text, 3, 1, 2) == get_field(text, 5) == "a|b^c~d&e\\f  g"
    assert get_field(text, 2) == "ST"
    assert get_field(coded, 2) == "CE"
    assert [get_field(coded, 5, 1, c) for c in (1, 2, 3)] == ["371244009", "jaune", "SCT"]
    assert get_field(coded, 8) == "A"
    obr = segments(message, "OBR")[0]
    # No setId: the filler order number is the document id too, with its extension (EI ext^^root^ISO).
    assert get_field(obr, 2, 1, 1) == get_field(obr, 3, 1, 1) == "CR|42"
    assert get_field(obr, 3, 1, 3) == "1.2.250.1.999.7.1" and get_field(obr, 3, 1, 4) == "ISO"
    assert get_field(obr, 7) == "20240104131933+0200"


def test_replacing_report_is_a_correction() -> None:
    message, _ = parse(
        build_oru_results(
            _report("BIO-CR-BIO_2024.01_TSH_1.xml", corrected=True), ROUTE, control_id="C3", now=NOW
        )
    )
    assert get_field(segments(message, "OBR")[0], 25) == "C"
    assert {get_field(obx, 11) for obx in segments(message, "OBX")} == {"C"}


def test_observation_from_lab_values() -> None:
    assert observation_from_lab(_lab()).value_type == "NM"
    # A number the NM syntax refuses is rewritten without exponent.
    assert observation_from_lab(_lab(value="1e-7", value_num=1e-7)).value == "0.0000001"
    interval = observation_from_lab(_lab(value="< 0.128", value_num=None))
    assert (interval.value_type, interval.value) == ("ST", "< 0.128")
    bounded = observation_from_lab(_lab(reference_low=-2.0, reference_high=3.5, reference_text="-2 – 3,5"))
    assert bounded.reference_range == "-2.0-3.5"
    high_only = observation_from_lab(_lab(reference_high=5.0, reference_text="≤ 5.0"))
    assert high_only.reference_range == "≤ 5.0"
    assert observation_from_lab(_lab(loinc="")).code == ""


@pytest.mark.parametrize(
    ("cda_code", "flag"),
    [("N", "N"), ("H", "H"), ("LL", "LL"), ("HU", "H"), ("LU", "L"), ("R", "R"), ("S", "S"), ("POS", "A"),
     ("DET", "A"), ("NEG", ""), ("", ""), (None, "")],
)  # fmt: skip
def test_abnormal_flags_follow_table_0078(cda_code: str | None, flag: str) -> None:
    assert abnormal_flag(cda_code) == flag


def test_other_charset_and_refusals() -> None:
    report = _report("BIO-CR-BIO_2024.01_TSH_1.xml")
    latin = MessageRoute(charset="8859/15")
    raw = build_oru_results(report, latin, control_id="C4", now=NOW)
    assert "Thyréostimuline".encode("iso-8859-15") in raw
    assert parse(raw)[1].charset == "8859/15"
    with pytest.raises(ValueError, match="MSH-18"):
        build_oru_results(report, MessageRoute(charset="EBCDIC"), control_id="C5", now=NOW)
    with pytest.raises(ValueError, match="at least one result"):
        build_oru_results(
            _report("BIO-CR-BIO_2024.01_TSH_1.xml", observations=[]), ROUTE, control_id="C6", now=NOW
        )


def test_coded_result_goes_as_ce_with_its_coding_system() -> None:
    hpv = observation_from_lab(
        _lab(
            loinc="",
            value="Absence",
            value_num=None,
            local_code=("HPV-L", "1.2.250.1.999.7"),
            value_code=("260415000", "Non détecté", "2.16.840.1.113883.6.96"),
        )
    )
    assert hpv.value_type == "CE"
    assert (hpv.code, hpv.code_system) == ("HPV-L", "L")
    assert hpv.coded_value == ("260415000", "Non détecté", "SCT")
