from __future__ import annotations

from pathlib import Path

import pytest

from opensegur.content.cda import CdaError, parse_cda
from tests.content.conftest import ANS_EXAMPLES, CR_RADIO_V1, hl7_example_cdas


def test_hl7_examples_are_found() -> None:
    assert len(hl7_example_cdas()) == 9


@pytest.mark.parametrize("path", hl7_example_cdas(), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_hl7_example_header_is_read(path: Path) -> None:
    _, h = parse_cda(path.read_bytes())
    assert h.id.root
    assert h.patient.ins_matricule == "279035121518989"
    assert h.patient.ins_oid == "1.2.250.1.213.1.4.10"
    assert h.code is not None and h.code.code in {"18748-4", "11502-2"}
    assert h.authors and h.authors[0].ids[0].root == "1.2.250.1.71.4.2.1"
    assert h.legal_authenticator is not None
    assert h.encounter is not None and h.encounter.facility_type is not None
    assert h.service_event is not None and h.service_event.practice_setting is not None
    assert h.level == (3 if h.code.code == "11502-2" else 1)


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in ANS_EXAMPLES.glob("*.xml"))[::6],
)
def test_sample_of_ans_examples(name: str) -> None:
    raw = (ANS_EXAMPLES / name).read_bytes()
    if b"<xsl:stylesheet" in raw[:3000]:
        # Self-presenting CDAs wrap the document in a stylesheet: not a ClinicalDocument root.
        with pytest.raises(CdaError) as err:
            parse_cda(raw)
        assert err.value.code == "CDA_ROOT"
        return
    _, h = parse_cda(raw)
    assert h.id.root and h.code is not None and h.effective_time
    assert h.body_kind in {"structuredBody", "nonXMLBody"}


def test_cr_radio_v1_header_values() -> None:
    _, h = parse_cda(CR_RADIO_V1.read_bytes())
    assert h.set_id is None
    assert h.version_number == 1
    assert h.title == "Radio de hanche"
    assert h.effective_time == "20050411103328"
    assert h.confidentiality is not None and h.confidentiality.code == "N"
    assert h.template_roots == [
        "2.16.840.1.113883.2.8.2.1",
        "1.2.250.1.213.1.1.1.1",
        "1.3.6.1.4.1.19376.1.2.20",
    ]
    assert (h.body_kind, h.media_type, h.representation, h.level) == (
        "nonXMLBody",
        "application/pdf",
        "B64",
        1,
    )
    p = h.patient
    assert (p.birth_family, p.given_names, p.birth_time, p.gender) == (
        "PAT-TROIS",
        ["DOMINIQUE"],
        "19790328",
        "F",
    )
    assert p.birthplace_county == "63220"
    assert h.authors[0].ids[0].extension == "801234564895"
    assert h.authors[0].organization is not None and h.authors[0].organization.name == "Organisation-Y"
    assert h.custodian is not None and h.custodian.ids[0].extension == "1120456789"
    assert h.service_event is not None and h.service_event.practice_setting is not None
    assert h.service_event.practice_setting.code == "ETABLISSEMENT"
    assert h.encounter is not None and h.encounter.facility_type is not None
    assert h.encounter.facility_type.code == "SA07"
    assert h.replaced_document is None


def test_replacement_document_points_to_its_parent() -> None:
    v2 = CR_RADIO_V1.parents[1] / "Remplacement MDM" / "CR_Radio_CDAN1_v2.XML"
    _, h = parse_cda(v2.read_bytes())
    assert h.version_number == 2
    assert h.replaced_document is not None
    assert h.replaced_document.root == "1.2.250.1.71.4.2.2.120456789.71024000081"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id", "XML_NOT_WELL_FORMED"),
        (b"", "XML_NOT_WELL_FORMED"),
        (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", "XML_UNSAFE"),
        (b"<ClinicalDocument><id root='1.2'/></ClinicalDocument>", "CDA_ROOT"),
        (b"<ClinicalDocument xmlns='urn:hl7-org:v3'><code code='x'/></ClinicalDocument>", "CDA_ID_MISSING"),
    ],
)
def test_unusable_payloads_are_refused_with_a_code(raw: bytes, code: str) -> None:
    with pytest.raises(CdaError) as err:
        parse_cda(raw)
    assert err.value.code == code
    assert err.value.message_fr


def test_oversized_payload_is_refused() -> None:
    with pytest.raises(CdaError) as err:
        parse_cda(CR_RADIO_V1.read_bytes(), max_bytes=1000)
    assert err.value.code == "CDA_TOO_LARGE"
