"""The MDM of the volet "Transmission au LPS d'un document CDA provenant d'un courriel MSSanté", compared with
the ANS example messages field by field (modulo ids, timestamps and the deviations the module documents)."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from opensegur.content.cda import parse_cda
from opensegur.transactions.hl7v2 import Hl7Error, parse
from opensegur.transactions.hl7v2_message import Hl7Message, get_field, raw_field, segments
from opensegur.transactions.lps_mdm import (
    LpsDocument,
    LpsMail,
    LpsMdmRequest,
    LpsParticipant,
    LpsPatient,
    MessageRoute,
    MetaDmpMss,
    build_lps_mdm,
    document_number,
    parse_lps_ack,
)
from tests.conftest import EXAMPLES

VOLET = EXAMPLES / "Vague 2" / "Trans_LPS_CDA_MSSanté" / "TRANSMISSION_LPS_DOC_CDA_COURRIEL_FROM_MSSANTE_V1.1"
CASES = {
    "initial": (VOLET / "Transmission initiale MDM", "message_MDM__LPS_MSS_CR_Radio_INIT_N1_Base64.er7"),
    "replacement": (VOLET / "Remplacement MDM", "message_MDM__LPS_MSS_CR_Radio_RPLC_N1.er7"),
    "deletion": (VOLET / "Suppression MDM", "message_MDM__LPS_MSS_CR_Radio_DEL_N1.er7"),
}
NOW = datetime(2021, 6, 6, 9, 31)


def _example(kind: str) -> tuple[Hl7Message, bytes]:
    folder, name = CASES[kind]
    cda = next(folder.glob("CR_Radio_CDAN1_v*.XML")).read_bytes()
    message, _ = parse((folder / name).read_bytes())
    return message, cda


def _request(kind: str, cda: bytes, example: Hl7Message) -> LpsMdmRequest:
    header = parse_cda(cda)[1]
    subject = get_field(segments(example, "OBX")[1], 3, 1, 2)
    invisible = get_field(segments(example, "OBX")[3], 5) == "Y"
    return LpsMdmRequest(
        kind=kind,  # type: ignore[arg-type]
        patient=LpsPatient(
            birth_name="PAT-TROIS",
            first_names="DOMINIQUE",
            birth_date="19790328",
            sex="F",
            ins_matricule="279035121518989",
            ins_oid="1.2.250.1.213.1.4.10",
            ipp="405660",
            ipp_namespace="CHU-X",
            ipp_authority="1.2.250.1.999.1",
            identity_status="QUAL",
        ),
        document=LpsDocument(
            cda=cda,
            type_code="18748-4",
            type_label="CR d'imagerie médicale",
            type_system="LN",
            id_root=header.id.root,
            id_extension=header.id.extension,
            parent_root="1.2.250.1.71.4.2.2.120456789.71024000081" if kind != "initial" else None,
            activity_time="202212160932",
        ),
        mail=LpsMail(
            message_id="<1@medecin.mssante.fr>",
            subject=subject,
            body="Corps du courriel",
            sender=LpsParticipant(
                "thomas.eric@medecin.mssante.fr", person_id="801234564895", family="Eric", given="Thomas"
            ),
            recipients=[
                LpsParticipant(
                    "dpi@hopitalA.mssante.fr",
                    organization_name="Service d'urologie",
                    organization_id="3435",
                    organization_authority="120456789",
                    organization_id_type="UF",
                )
            ],
            reply_to=["adam.hoda@test-ci-sis.mssante.fr"],
        ),
        meta=MetaDmpMss(
            invisible_patient=invisible, invisible_rep_legaux=invisible, modif_conf_code=kind == "replacement"
        ),
        route=MessageRoute(
            sending_application="PFI-Y",
            sending_facility="Organisation-Y",
            receiving_application="RIS-Y",
            receiving_facility="Organisation-Y",
        ),
    )


# (segment, occurrence, field, component or None for the whole field): equal to the ANS example.
SAME = [
    ("MSH", 0, 3, None), ("MSH", 0, 4, None), ("MSH", 0, 5, None), ("MSH", 0, 9, None), ("MSH", 0, 11, None),
    ("MSH", 0, 12, None), ("MSH", 0, 17, None), ("MSH", 0, 18, None), ("MSH", 0, 21, None),
    ("PID", 0, 5, 1), ("PID", 0, 5, 2), ("PID", 0, 7, None), ("PID", 0, 8, None),
    ("PV1", 0, 2, None), ("ORC", 0, 1, None), ("OBR", 0, 1, None), ("OBR", 0, 4, 1), ("OBR", 0, 4, 3),
    ("TXA", 0, 1, None), ("TXA", 0, 2, None), ("TXA", 0, 3, None), ("TXA", 0, 4, None), ("TXA", 0, 17, None),
    ("OBX", 0, 1, None), ("OBX", 0, 2, None), ("OBX", 0, 3, 1), ("OBX", 0, 3, 3), ("OBX", 0, 5, 2),
    ("OBX", 0, 5, 3), ("OBX", 0, 5, 4), ("OBX", 0, 11, None),
    ("PRT", 0, 2, None), ("PRT", 0, 4, None), ("PRT", 0, 5, 1), ("PRT", 0, 5, 2), ("PRT", 0, 5, 3),
    ("PRT", 0, 5, 13), ("PRT", 0, 15, None),
    ("PRT", 1, 4, None), ("PRT", 1, 8, 6), ("PRT", 1, 8, 7), ("PRT", 1, 8, 10), ("PRT", 1, 15, None),
    ("PRT", 2, 4, None), ("PRT", 2, 15, None),
    ("OBX", 1, 1, None), ("OBX", 1, 2, None), ("OBX", 1, 3, 2), ("OBX", 1, 5, 2), ("OBX", 1, 5, 4),
    ("OBX", 1, 5, 5), ("OBX", 1, 11, None),
]  # fmt: skip
SAME += [
    ("OBX", n, f, c)
    for n in range(2, 6)
    for f, c in ((1, None), (2, None), (3, 1), (3, 3), (5, 1), (5, 3), (11, None))
]


@pytest.mark.parametrize("kind", list(CASES))
def test_matches_the_ans_example_field_by_field(kind: str) -> None:
    example, cda = _example(kind)
    raw = build_lps_mdm(_request(kind, cda, example), control_id="015", now=NOW)
    ours, header = parse(raw)
    assert header.control_id == "015" and header.version == "2.6"
    assert [s.id for s in ours] == [s.id for s in example]
    for seg, occurrence, field_no, comp in SAME:
        mine, theirs = segments(ours, seg)[occurrence], segments(example, seg)[occurrence]
        if comp is None:
            assert raw_field(mine, field_no) == raw_field(theirs, field_no), (seg, occurrence, field_no)
        else:
            assert get_field(mine, field_no, 1, comp) == get_field(theirs, field_no, 1, comp), (
                seg,
                field_no,
                comp,
            )
    # The INS repetition of PID-3 is the example's (the IPP follows it, see the module docstring).
    assert get_field(segments(ours, "PID")[0], 3, 1, 1) == "279035121518989"
    assert get_field(segments(ours, "PID")[0], 3, 1, 4, 2) == "1.2.250.1.213.1.4.10"
    assert get_field(segments(ours, "PID")[0], 3, 1, 5) == "INS"
    assert get_field(segments(ours, "PID")[0], 3, 2, 5) == "PI"
    # The CDA travels byte for byte.
    assert base64.b64decode(get_field(segments(ours, "OBX")[0], 5, 1, 5)) == cda
    # Documented deviations: TXA-12/13 per the volet's rule, OBX-2's OBX-3.1 is the Message-ID.
    txa = segments(ours, "TXA")[0]
    assert get_field(txa, 12, 1, 1) == parse_cda(cda)[1].id.root
    if kind != "initial":
        assert get_field(txa, 13, 1, 1) == "1.2.250.1.71.4.2.2.120456789.71024000081"
    assert get_field(segments(ours, "OBX")[1], 3, 1, 1) == "<1@medecin.mssante.fr>"


def test_document_number_rule_of_the_volet() -> None:
    assert document_number("1.2.250.2345.3245.13", "58132") == "58132^^1.2.250.2345.3245.13^ISO"
    assert document_number("1.2.250.2345.3245.13.58132", None) == "1.2.250.2345.3245.13.58132"


def test_replacement_requires_the_parent() -> None:
    example, cda = _example("initial")
    request = _request("initial", cda, example)
    bad = LpsMdmRequest(**{**request.__dict__, "kind": "replacement"})
    with pytest.raises(ValueError, match="parent"):
        build_lps_mdm(bad, control_id="1", now=NOW)


def test_delimiters_in_mail_fields_are_escaped() -> None:
    example, cda = _example("initial")
    request = _request("initial", cda, example)
    mail = LpsMail("<a|b@x>", "CR ^ & ~ | \\ fin", "corps", LpsParticipant("a@x.fr"))
    raw = build_lps_mdm(LpsMdmRequest(**{**request.__dict__, "mail": mail}), control_id="1", now=NOW)
    message, _ = parse(raw)
    obx = segments(message, "OBX")[1]
    assert get_field(obx, 3, 1, 1) == "<a|b@x>"
    assert get_field(obx, 3, 1, 2) == "CR ^ & ~ | \\ fin"
    assert len(segments(message, "OBX")) == 6


def test_latin9_charset_is_honoured() -> None:
    example, cda = _example("initial")
    base = _request("initial", cda, example)
    request = replace(base, route=replace(base.route, charset="8859/15"))
    raw = build_lps_mdm(request, control_id="1", now=NOW)
    assert "Masqué".encode("iso-8859-15") in raw
    _, header = parse(raw)
    assert header.charset == "8859/15"


@pytest.mark.parametrize("kind", list(CASES))
def test_example_acks_are_acceptances(kind: str) -> None:
    ack = parse_lps_ack((CASES[kind][0] / "ack.er7").read_bytes())
    assert ack.accepted and ack.control_id == "015" and ack.volet_code is None


def test_application_error_gives_the_volet_code() -> None:
    raw = (
        b"MSH|^~\\&|DPI|CHU_X|PFI|CHU_X|202310030831||ACK^T02^ACK|12347|P|2.6|||AL|AL|FRA|8859/15\r"
        b"MSA|AE|12345\r"
        b"ERR||PID^1^3|207^Application error^messageErrorCondition| E|902^Identifiant de patient inconnu"
        b"^applicationErrorCode\r"
    )
    ack = parse_lps_ack(raw)
    assert (ack.code, ack.control_id, ack.volet_code) == ("AE", "12345", "902")
    assert ack.errors[0].severity == "E" and ack.errors[0].hl7_code == "207"
    assert "902" in ack.reason_fr


def test_technical_error_maps_to_other() -> None:
    raw = (
        b"MSH|^~\\&|DPI|CHU_X|PFI|CHU_X|202310030831||ACK^T02^ACK|12347|P|2.6|||AL|AL|FRA|8859/15\r"
        b"MSA|AE|12345\rERR||MSH^1^12|203^Unsupported version id^messageErrorCondition|E\r"
    )
    assert parse_lps_ack(raw).volet_code == "906"


def test_a_message_that_is_not_an_ack_is_refused() -> None:
    with pytest.raises(Hl7Error) as exc:
        parse_lps_ack(Path(CASES["initial"][0] / CASES["initial"][1]).read_bytes())
    assert exc.value.code == "200"
