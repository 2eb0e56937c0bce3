"""Structured CR-BIO results, read from the ANS examples of the CI-SIS kit and from hostile or odd inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from opensegur.content.cda import CdaError
from opensegur.content.crbio import LabObservation, extract_results, parse_ts

from .conftest import ANS_EXAMPLES

PLUS_2 = timezone(timedelta(hours=2))
PLUS_1 = timezone(timedelta(hours=1))
PARIS = ZoneInfo("Europe/Paris")


def results(name: str) -> list[LabObservation]:
    return extract_results((ANS_EXAMPLES / name).read_bytes())


def by_loinc(rows: list[LabObservation], loinc: str) -> list[LabObservation]:
    return [r for r in rows if r.loinc == loinc]


# ---- the ANS examples -----------------------------------------------------------------------------------------

# How many Laboratory Observations each example holds (counted by hand in the files: template
# 1.3.6.1.4.1.19376.1.3.1.6 under an entry 1.3.6.1.4.1.19376.1.3.1).
EXPECTED_COUNTS = {
    "BIO-CR-BIO_2021.01_Auto-Presentable.xml": 11,
    "BIO-CR-BIO_2021.01_CDA-R2-Niveau-1.xml": 0,
    "BIO-CR-BIO_2021.01_CR-2nde-intention.xml": 1,
    "BIO-CR-BIO_2023.01_Electrophorese.xml": 44,
    "BIO-CR-BIO_2024.01_CRP_non_LOINC.xml": 1,
    "BIO-CR-BIO_2024.01_DEP-CCU-tout-structuré.xml": 2,
    "BIO-CR-BIO_2024.01_Electrophorese.xml": 44,
    "BIO-CR-BIO_2024.01_Glycémie deux unités principales_mole_masse.xml": 2,
    "BIO-CR-BIO_2024.01_Microbiologie_V1.xml": 14,
    "BIO-CR-BIO_2024.01_TSH_1.xml": 2,
    "BIO-CR-BIO_2024.01_TSH_2.xml": 2,
    "BIO-TROD_2024.01_Cystite.xml": 3,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_every_result_of_the_ans_examples_is_read(name: str) -> None:
    rows = results(name)
    assert len(rows) == EXPECTED_COUNTS[name]
    for r in rows:
        assert r.label and r.observed_at is not None and r.observed_at.tzinfo is not None
        if r.value_num is not None:
            assert r.value is not None and float(r.value) == r.value_num


def test_tsh_report_values_units_ranges_and_flags() -> None:
    tsh, ft4 = results("BIO-CR-BIO_2024.01_TSH_1.xml")
    assert tsh == LabObservation(
        loinc="3016-3",
        label="Thyréostimuline [Arbitraire/Volume] Sérum/Plasma ; Numérique",
        value="1.950",
        value_num=1.95,
        unit="m[IU]/L",
        reference_low=0.27,
        reference_high=4.2,
        reference_text="0.270 – 4.200",
        interpretation="N",
        observed_at=datetime(2014, 4, 2, 14, 55, 21, tzinfo=PLUS_2),
    )
    assert (ft4.loinc, ft4.value_num, ft4.unit, ft4.interpretation) == ("3024-7", 7.67, "pg/mL", "L")
    assert (ft4.reference_low, ft4.reference_high) == (9.3, 17.0)
    assert ft4.value_num is not None and ft4.reference_low is not None
    assert ft4.value_num < ft4.reference_low  # the flag agrees with the range


def test_electrophoresis_batteries_coded_values_and_antibiogram() -> None:
    rows = results("BIO-CR-BIO_2024.01_Electrophorese.xml")
    proteins = by_loinc(rows, "2885-2")[0]
    # "63.000000" in the file: zeros beyond three decimals are dropped from the text, not from the number.
    assert (proteins.value_num, proteins.reference_low, proteins.reference_text) == (75.0, 63.0, "63 – 83")
    alpha1 = by_loinc(rows, "2865-4")[0]
    assert (alpha1.value, alpha1.interpretation) == ("3.8", "H")
    colour = by_loinc(rows, "5778-6")[0]
    assert (colour.value, colour.value_num, colour.unit) == ("paille", None, None)  # CD → its narrative
    amoxicillin = by_loinc(rows, "20-8")
    assert [(a.value, a.unit, a.interpretation) for a in amoxicillin] == [
        ("≥ 0.512", "ug/mL", "R"),  # IVL_PQ low inclusive: a MIC "at least"
        ("< 0.012", "ug/mL", "S"),  # IVL_PQ high inclusive="false"
    ]
    assert all(a.value_num is None for a in amoxicillin)


def test_microbiology_isolates_in_nested_organizers() -> None:
    rows = results("BIO-CR-BIO_2024.01_Microbiologie_V1.xml")
    counts = by_loinc(rows, "51480-2")
    assert [(c.value_num, c.unit) for c in counts] == [(100000.0, "/mL"), (200000.0, "/mL")]
    assert counts[0].observed_at == datetime(2024, 1, 4, 15, 50, tzinfo=PLUS_1)
    assert [g.interpretation for g in by_loinc(rows, "18928-2")] == ["S", "S"]


def test_local_code_only_keeps_the_result_without_a_loinc() -> None:
    (crp,) = results("BIO-CR-BIO_2024.01_CRP_non_LOINC.xml")
    assert crp.loinc == ""
    # The lab's own code, from the translation of an uncoded LOINC code, with its code system.
    assert crp.local_code == ("1234", "1.2.250.1.2.3.4") and crp.value_code is None
    assert crp.label == "C Réactive protéine [Masse/Volume] Sérum/Plasma ; Numérique"
    assert (crp.value, crp.value_num, crp.unit) == ("≤ 1.0", None, "mg/L")
    assert (crp.reference_low, crp.reference_high, crp.reference_text) == (None, 5.0, "≤ 5.0")


def test_real_value_and_date_only_time() -> None:
    (inr,) = results("BIO-CR-BIO_2024.01_CR-2nde-intention-PDF.xml")
    assert (inr.loinc, inr.value, inr.value_num, inr.unit, inr.interpretation) == (
        "6301-6",
        "2.0",
        2.0,
        None,
        "N",
    )
    assert inr.observed_at == datetime(2024, 1, 4, tzinfo=PARIS)


def test_self_presenting_document_inside_its_stylesheet() -> None:
    rows = results("BIO-CR-BIO_2021.01_Auto-Presentable.xml")
    # xsi:type="c:PQ": HL7 v3 bound to a prefix; the secondary unit (translation) is not a second result.
    trig = by_loinc(rows, "2571-8")[0]
    assert (trig.value_num, trig.unit, trig.reference_text) == (0.62, "g/L", "0.50 – 1.50")
    crp = by_loinc(rows, "1988-5")[0]
    assert (crp.value, crp.value_num) == ("<1.0 mg/L", None)  # ED value: its text
    assert by_loinc(rows, "2324-2")[0].interpretation == "H"


def test_coded_value_contradicting_the_narrative_shows_both() -> None:
    # In this ANS example the SNOMED codes of influenza A and B are swapped against the validated narrative.
    rows = results("BIO-TROD_2024.01_COVID-19_Grippe-A_Grippe-B.xml")
    assert by_loinc(rows, "94558-4")[0].value == "négatif"
    assert by_loinc(rows, "80382-5")[0].value == "positif (compte rendu : « négatif »)"
    assert by_loinc(rows, "80383-3")[0].value == "négatif (compte rendu : « positif »)"


def test_reference_range_is_reported_as_written() -> None:
    # The ANS example gives 3.89–3.89 mmol/L (its g/L twin says 0.70–1.08): read as is, not repaired.
    mmol, gl = results("BIO-CR-BIO_2024.01_Glycémie deux unités principales_mole_masse.xml")
    assert (mmol.unit, mmol.reference_low, mmol.reference_high) == ("mmol/L", 3.89, 3.89)
    assert (gl.unit, gl.reference_low, gl.reference_high) == ("g/L", 0.7, 1.08)


@pytest.mark.parametrize(
    "name", ["IMG_CR_IMG_2024.01.xml", "DOC_NON_STRUCTURE_CDA-R2-N1.xml", "LDL-SES_2022.01.xml"]
)
def test_a_cda_without_lab_entries_has_no_results(name: str) -> None:
    assert results(name) == []


# ---- hostile and malformed input ------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol3;</title></ClinicalDocument>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (BILLION_LAUGHS, "XML_UNSAFE"),
        (EXTERNAL_ENTITY, "XML_UNSAFE"),
        (
            EXTERNAL_ENTITY.decode().replace('"1.0"?>', '"1.0" encoding="UTF-16"?>', 1).encode("utf-16"),
            "XML_UNSAFE",
        ),
        (b"<ClinicalDocument xmlns='urn:hl7-org:v3'><component>", "XML_NOT_WELL_FORMED"),
        (b"", "XML_NOT_WELL_FORMED"),
        (b"<html><body>pas un CDA</body></html>", "CDA_ROOT"),
    ],
    ids=["billion-laughs", "external-entity", "utf16-doctype", "truncated", "empty", "not-cda"],
)
def test_unsafe_or_malformed_documents_are_refused_with_a_clear_error(raw: bytes, code: str) -> None:
    with pytest.raises(CdaError) as err:
        extract_results(raw)
    assert err.value.code == code and err.value.message_fr


def test_oversized_document_is_refused_before_parsing() -> None:
    raw = (ANS_EXAMPLES / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes()
    with pytest.raises(CdaError) as err:
        extract_results(raw, max_bytes=len(raw) - 1)
    assert err.value.code == "CDA_TOO_LARGE"


def _document(observations: str) -> bytes:
    return f"""<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<component><structuredBody><component><section>
<text><content ID="r1">Recherche de toxines</content></text>
<entry><templateId root="1.3.6.1.4.1.19376.1.3.1"/><act classCode="ACT" moodCode="EVN">
<effectiveTime value="20250301"/>{observations}</act></entry>
</section></component></structuredBody></component></ClinicalDocument>""".encode()


def _obs(code: str, value: str, status: str = "completed", extra: str = "") -> str:
    return f"""<entryRelationship typeCode="COMP"><observation classCode="OBS" moodCode="EVN">
<templateId root="1.3.6.1.4.1.19376.1.3.1.6"/>
<code code="{code}" codeSystem="2.16.840.1.113883.6.1"><originalText><reference value="#r1"/></originalText></code>
<statusCode code="{status}"/>{value}{extra}</observation></entryRelationship>"""


def test_odd_values_stay_readable_and_withdrawn_results_are_left_out() -> None:
    raw = _document(
        _obs("1-1", '<value xsi:type="PQ" value="NaN" unit="g/L"/>')
        + _obs("2-2", '<value xsi:type="PQ" nullFlavor="NI"/>')
        + _obs("3-3", '<value xsi:type="BL" value="true"/>')
        + _obs("4-4", '<value xsi:type="RTO_INT_INT"><numerator value="1"/><denominator value="64"/></value>')
        + _obs("5-5", f'<value xsi:type="ST">{"x" * 500}</value>')
        + _obs("6-6", '<value xsi:type="PQ" value="1" unit="g/L"/>', status="nullified")
        + _obs("7-7", '<value xsi:type="PQ" value="12" unit="1"/>', extra='<effectiveTime value="20251399"/>')
    )
    rows = {r.loinc: r for r in extract_results(raw)}
    assert sorted(rows) == ["1-1", "2-2", "3-3", "4-4", "5-5", "7-7"]
    assert (rows["1-1"].value, rows["1-1"].value_num) == ("NaN", None)
    assert rows["2-2"].value is None
    assert rows["3-3"].value == "Oui"
    assert rows["4-4"].value == "1/64"
    five = rows["5-5"].value
    assert five is not None and len(five) == 100 and five.endswith("…")
    assert rows["5-5"].label == "Recherche de toxines"  # no display name: the narrative it points to
    assert rows["7-7"].unit is None  # UCUM "1" is the unity, nothing to show
    # No time on the observation: the act's; a malformed time on the observation falls back the same way.
    assert rows["1-1"].observed_at == rows["7-7"].observed_at == datetime(2025, 3, 1, tzinfo=PARIS)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("20240104155000+0100", datetime(2024, 1, 4, 14, 50, tzinfo=UTC)),
        ("202401041050-0500", datetime(2024, 1, 4, 15, 50, tzinfo=UTC)),
        ("20240104", datetime(2024, 1, 4, tzinfo=PARIS)),
        ("20240104120000.123+0000", datetime(2024, 1, 4, 12, tzinfo=UTC)),
        ("20241304", None),
        ("hier", None),
        ("", None),
    ],
)
def test_hl7_timestamps(raw: str, expected: datetime | None) -> None:
    assert parse_ts(raw) == expected


def test_coded_results_keep_their_code_for_the_dpi() -> None:
    hpv, cyto = results("BIO-CR-BIO_2024.01_DEP-CCU-tout-structuré.xml")
    assert hpv.loinc == "77379-6" and hpv.local_code is None
    assert hpv.value_code == ("1269497006", "ADN d'HPV-HR détecté", "2.16.840.1.113883.6.96")
    assert cyto.value_code is not None and cyto.value_code[0] == "MED-1194"
