from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from opensegur.content.cda import parse_cda
from opensegur.content.xds_metadata import (
    MetadataError,
    document_metadata,
    hl7_ts_to_utc,
    submission_set_metadata,
)
from opensegur.documents.metadata import Coded
from tests.content.conftest import ANS_EXAMPLES, CR_RADIO_V1, hl7_example_cdas


def _meta(path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    _, header = parse_cda(path.read_bytes())
    args: dict[str, object] = {"ipp": "IPP1", "ipp_authority_oid": "1.2.250.1.999.1"}
    args.update(kwargs)
    return document_metadata(header, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", hl7_example_cdas(), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_hl7_example_yields_complete_metadata(path: Path) -> None:
    m = _meta(path)
    for value in (
        m.unique_id,
        m.patient_id,
        m.class_code.code,
        m.type_code.code,
        m.format_code.code,
        m.healthcare_facility_type_code.code,
        m.practice_setting_code.code,
        m.creation_time,
        m.legal_authenticator,
        m.service_start_time,
        m.source_patient_id,
        m.title,
    ):
        assert value
    assert m.authors and m.authors[0].person and m.authors[0].institutions
    assert len(m.creation_time) == 14 and m.creation_time.isdigit()


def test_cr_radio_v1_concrete_values() -> None:
    m = _meta(
        CR_RADIO_V1,
        confidentiality_flags={"MASQUE_PS", "INVISIBLE_PATIENT"},
        size=1234,
        hash_sha1="ab" * 20,
        stay_number="SEJ42",
    )
    assert m.unique_id == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert m.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert m.type_code == Coded("18748-4", "2.16.840.1.113883.6.1", "CR d'imagerie médicale")
    assert m.class_code == Coded("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")
    assert m.format_code.code == "urn:ihe:iti:xds-sd:pdf:2008"
    assert m.format_code.scheme == "1.3.6.1.4.1.19376.1.2.3"
    assert (m.healthcare_facility_type_code.code, m.healthcare_facility_type_code.scheme) == (
        "SA07",
        "1.2.250.1.71.4.2.4",
    )
    assert m.practice_setting_code.code == "ETABLISSEMENT"
    assert [c.code for c in m.confidentiality_codes] == ["N", "INVISIBLE_PATIENT", "MASQUE_PS"]
    assert m.confidentiality_codes[1].scheme == "1.2.250.1.213.1.1.4.13"
    # 2005-04-11 10:33:28 without offset = Paris summer time (UTC+2).
    assert m.creation_time == "20050411083328"
    assert m.service_start_time == "20230227082827"
    assert m.authors[0].person == "801234564895^Eric^Thomas^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    assert m.authors[0].institutions == ("Organisation-Y^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1120456789",)
    assert m.legal_authenticator == "801234564895^Eric^Thomas^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    assert m.source_patient_id == "IPP1^^^&1.2.250.1.999.1&ISO^PI"
    assert m.source_patient_info == ["PID-5|PAT-TROIS^DOMINIQUE^^^^^L", "PID-7|19790328", "PID-8|F"]
    assert m.reference_ids == ["SEJ42^^^&1.2.250.1.999.1&ISO^urn:ihe:iti:xds:2015:encounterId"]
    assert (m.size, m.hash_sha1, m.mime_type, m.language_code) == (1234, "ab" * 20, "text/xml", "fr-FR")


def test_specialty_is_rendered_from_the_jdv() -> None:
    m = _meta(ANS_EXAMPLES / "LDL-SES_2022.01.xml")
    assert m.format_code.code == "urn:asip:ci-sis:ldl-ses:2017"
    assert m.authors[0].specialties == ("G15_10/SM27^Médecin - Médecine interne (SM)^1.2.250.1.213.1.1.4.5",)


def test_type_code_outside_j07_is_refused() -> None:
    raw = CR_RADIO_V1.read_bytes().replace(b'code="18748-4"', b'code="99999-9"')
    _, header = parse_cda(raw)
    with pytest.raises(MetadataError) as err:
        document_metadata(header, ipp=None, ipp_authority_oid=None)
    assert (err.value.code, err.value.field) == ("TYPECODE_UNKNOWN", "typeCode")


def test_missing_ins_is_refused() -> None:
    raw = CR_RADIO_V1.read_bytes().replace(b'root="1.2.250.1.213.1.4.10"', b'root="1.2.250.1.999.77"')
    _, header = parse_cda(raw)
    with pytest.raises(MetadataError) as err:
        document_metadata(header, ipp=None, ipp_authority_oid=None)
    assert err.value.code == "PATIENT_INS_MISSING"


def test_unknown_type_class_pair_is_explicit_and_overridable() -> None:
    _, header = parse_cda((ANS_EXAMPLES / "LDL-EES_2022.01.xml").read_bytes())
    with pytest.raises(MetadataError) as err:
        document_metadata(header, ipp=None, ipp_authority_oid=None)
    assert err.value.code == "CLASS_CODE_UNKNOWN"
    cls = Coded("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")
    assert document_metadata(header, ipp=None, ipp_authority_oid=None, class_code=cls).class_code == cls


def test_unknown_visibility_flag_is_refused() -> None:
    with pytest.raises(MetadataError) as err:
        _meta(CR_RADIO_V1, confidentiality_flags={"INVISIBLE_REP_LEGAUX"})  # the HL7v2 spelling, not XDS
    assert err.value.code == "CONFIDENTIALITY_FLAG_UNKNOWN"


@pytest.mark.parametrize(
    ("ts", "utc"),
    [
        ("20210104160527+0100", "20210104150527"),
        ("20230227102827+0200", "20230227082827"),
        ("20240105120000", "20240105110000"),  # winter, Paris = UTC+1
        ("202101040735+0100", "202101040635"),
        ("19790328", "19790328"),
        ("20210409094914.827+0100", "20210409084914"),
    ],
)
def test_hl7_timestamps_to_utc(ts: str, utc: str) -> None:
    assert hl7_ts_to_utc(ts) == utc


def test_submission_set_from_document() -> None:
    doc = _meta(CR_RADIO_V1)
    ss = submission_set_metadata(
        doc,
        unique_id="1.2.250.1.999.9.1",
        source_id="1.2.250.1.999.9",
        patient_class="I",
        submission_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert ss.patient_id == doc.patient_id
    assert ss.content_type_code == Coded("03", "1.2.250.1.213.2.2")
    assert ss.submission_time == "20240102030405"
    assert ss.authors == doc.authors[:1]
    with pytest.raises(MetadataError):
        submission_set_metadata(doc, unique_id="1", source_id="2", patient_class="Z")


@pytest.mark.requirement("HL7-CX-ISO")
def test_iso_is_given_only_to_oid_assigning_authorities() -> None:
    """HL7 table 0301 keeps ISO for OIDs: a stay numbered by a named authority (the ANS examples' 000897406, a
    namespace) carries it in HD.1, never as '&000897406&ISO'."""
    m = _meta(CR_RADIO_V1, stay_number="SEJ42", stay_authority_oid="000897406")
    assert m.reference_ids == ["SEJ42^^^000897406^urn:ihe:iti:xds:2015:encounterId"]
    m = _meta(CR_RADIO_V1, stay_number="SEJ42", stay_authority_oid="1.2.250.1.999.7")
    assert m.reference_ids == ["SEJ42^^^&1.2.250.1.999.7&ISO^urn:ihe:iti:xds:2015:encounterId"]
