from datetime import datetime
from pathlib import Path

import hl7
import pytest

from opensegur.transactions.cda_hl7v2 import DocumentMessage, parse_document_message
from opensegur.transactions.hl7v2 import Hl7Error, parse
from opensegur.transactions.zam import (
    APPLICATION_ERROR_CODES,
    SMTP_ERROR_CODES,
    ZamError,
    ZamStatus,
    build_zam,
    parse_zam,
)

INIT = Path("/work/shared/hl7v2-examples/Volets/TRANS_DOC_CDA_HL7V2/V2.1/ORU/Transmission initiale ORU")
EVENT_TIME = datetime(2021, 10, 5, 15, 29, 8)


def original() -> DocumentMessage:
    message, header = parse((INIT / "message_ORU_CR_Bio_INIT_N1_N3.hl7").read_bytes())
    return parse_document_message(message, header)


def fields(raw: bytes) -> list[list[str]]:
    return [str(seg).split("|") for seg in hl7.parse(raw.decode("utf-8").replace("\n", "\r").strip())]


def compare(built: bytes, example: Path) -> list[tuple[int, int, str, str]]:
    """(segment, field, built, expected) for every differing field."""
    ours, theirs = fields(built), fields(example.read_bytes())
    assert [s[0] for s in ours] == [s[0] for s in theirs]
    diffs = []
    for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for i in range(max(len(a), len(b))):
            x, y = (a[i] if i < len(a) else ""), (b[i] if i < len(b) else "")
            if x != y:
                diffs.append((n, i, x, y))
    return diffs


def test_z01_matches_ans_example() -> None:
    status = ZamStatus(
        kind="reception_dmp",
        success=False,
        timestamp=EVENT_TIME,
        errors=[ZamError("DMPClosed", "DMP fermé")],
    )
    raw = build_zam(original(), status, control_id="017", now=datetime(2021, 6, 6, 9, 33), app="PFI-X",
                    facility="Organisation-X")  # fmt: skip
    diffs = compare(raw, INIT / "Message metier reception DMP")
    # MSH-7: the example has no seconds. ERR-5.3: the profile says DMP_ERROR_CODE, the example DMPERRORCODE.
    assert diffs == [
        (0, 6, "20210606093300", "202106060933"),
        (3, 5, "DMPClosed^DMP fermé^DMP_ERROR_CODE", "DMPClosed^DMP fermé^DMPERRORCODE"),
    ]


def test_z02_matches_ans_example() -> None:
    status = ZamStatus(
        kind="reception_mss",
        success=True,
        timestamp=EVENT_TIME,
        recipient_address="adam.hoda@test-ci-sis.mssante.fr",
        recipient_id="801234567897",
    )
    raw = build_zam(original().header, status, control_id="018", now=datetime(2021, 6, 6, 9, 34), app="PFI-X",
                    facility="Organisation-X")  # fmt: skip
    assert compare(raw, INIT / "Message metier reception MSS") == [(0, 6, "20210606093400", "202106060934")]


def test_z03_matches_ans_example() -> None:
    status = ZamStatus(
        kind="lecture_mss",
        success=True,
        timestamp=EVENT_TIME,
        recipient_address="adam.hoda@test-ci-sis.mssante.fr",
        recipient_id="801234567897",
    )
    raw = build_zam(original(), status, control_id="019", now=datetime(2021, 6, 7, 9, 33), app="PFI-X",
                    facility="Organisation-X")  # fmt: skip
    assert compare(raw, INIT / "Message metier lecture MSS") == [(0, 6, "20210607093300", "202106070933")]


@pytest.mark.parametrize(
    ("name", "trigger"),
    [("Message metier reception DMP", "Z01"), ("Message metier reception MSS", "Z02"),
     ("Message metier lecture MSS", "Z03")],
)  # fmt: skip
def test_parse_ans_examples(name: str, trigger: str) -> None:
    zam = parse_zam((INIT / name).read_bytes())
    assert zam.header.trigger == trigger and zam.header.structure == "ZAM_Z01"
    assert zam.status.original_control_id == "015"
    assert zam.status.timestamp == EVENT_TIME
    if trigger == "Z01":
        assert zam.status.success is False
        assert zam.status.errors == [ZamError("DMPClosed", "DMP fermé", "DMPERRORCODE", "E")]
    else:
        assert zam.status.success is True and zam.status.errors == []
        assert zam.status.recipient_address == "adam.hoda@test-ci-sis.mssante.fr"
        assert zam.status.recipient_id == "801234567897"


def test_round_trip_with_volet_error_labels() -> None:
    doc = original()
    for kind, code, table, system in (
        ("lecture_mss", "903", APPLICATION_ERROR_CODES, "applicationErrorCondition"),
        ("reception_mss", "550", SMTP_ERROR_CODES, "SMTPERRORCODE"),
    ):
        status = ZamStatus(
            kind=kind,  # type: ignore[arg-type]
            success=False,
            timestamp=EVENT_TIME,
            recipient_address="a|b^c@x.mssante.fr",  # delimiters must survive escaping
            errors=[ZamError(code)],
        )
        raw = build_zam(doc, status, control_id="C9", now=EVENT_TIME)
        back = parse_zam(raw).status
        assert back.kind == kind and back.success is False
        assert back.original_control_id == "015"
        assert back.recipient_address == "a|b^c@x.mssante.fr"
        assert back.errors == [ZamError(code, table[code], system, "E")]
        text = raw.decode()
        assert "|2.6|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\r" in text
        assert text.startswith("MSH|^~\\&|OPENSEGUR|OPENSEGUR|SIL-Y|labo|20211005152908||ZAM^")
        assert "ERR|||207^Application internal error^messageErrorCondition|E|" in text


def test_charset_8859_15_is_kept() -> None:
    header = original().header
    header.charset = "8859/15"
    status = ZamStatus(kind="reception_dmp", success=True, timestamp=EVENT_TIME)
    raw = build_zam(header, status, control_id="C1", now=EVENT_TIME)
    assert "Accusé de réception DMP".encode("iso-8859-15") in raw
    assert parse_zam(raw).status.success is True


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (ZamStatus(kind="reception_dmp", success=False, timestamp=EVENT_TIME), "ERR is required"),
        (ZamStatus(kind="lecture_mss", success=True, timestamp=EVENT_TIME), "address"),
        (
            ZamStatus(kind="reception_dmp", success=False, timestamp=EVENT_TIME,
                      errors=[ZamError("A"), ZamError("B")]),
            "one ERR",
        ),
    ],
)  # fmt: skip
def test_invalid_status(status: ZamStatus, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_zam(original(), status, control_id="C1", now=EVENT_TIME)


def test_parse_rejects_other_messages() -> None:
    with pytest.raises(Hl7Error) as info:
        parse_zam((INIT / "ack.hl7").read_bytes())
    assert info.value.code == "200"
    wrong = (INIT / "Message metier lecture MSS").read_bytes().replace(b"LECTEUR_MSS", b"DESTINATAIRE_MSS")
    with pytest.raises(Hl7Error) as info:
        parse_zam(wrong)
    assert (info.value.code, info.value.location) == ("100", "OBX^2")
