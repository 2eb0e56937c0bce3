from datetime import datetime, timedelta, timezone
from pathlib import Path

import hl7
import pytest

from opensegur.transactions.hl7v2 import (
    Hl7Error,
    MessageHeader,
    ack_code_for,
    build_ack,
    build_nak_for_unparseable,
    charset_to_codec,
    decode,
    parse,
)

ADMISSION = Path("/work/shared/hl7v2-examples/SGL/admission.er7")
NOW = datetime(2024, 3, 6, 11, 12, 0, tzinfo=timezone(timedelta(hours=1)))


def msh(
    *,
    version: str = "2.5^FRA^2.11",
    charset: str = "UNICODE UTF-8",
    msg_type: str = "ADT^A01^ADT_A01",
    control_id: str = "MSG1",
    processing: str = "P",
) -> str:
    return (
        f"MSH|^~\\&|GAM|CHU-X|DPI|CHU-X|20240306111154||{msg_type}|{control_id}|{processing}|{version}"
        f"|||||FRA|{charset}|FR||2.11^IHE_FRANCE-2.11-PAM"
    )


def message(*segments: str, **kwargs: str) -> bytes:
    return "\r".join([msh(**kwargs), *segments]).encode("utf-8")


def parse_ack(ack: bytes, encoding: str = "utf-8") -> hl7.Message:
    text = ack.decode(encoding)
    assert text.endswith("\r")
    return hl7.parse(text)


def err_fields(ack: hl7.Message) -> list[tuple[str, str, str, str, str]]:
    return [
        (
            str(seg(2)),
            str(seg.extract_field(1, 3, 1, 1)),
            str(seg.extract_field(1, 3, 1, 3)),
            str(seg(4)),
            seg.extract_field(1, 8),
        )
        for seg in ack.segments("ERR")
    ]


# ------------------------------------------------------------------------------------------- decode


def test_decode_normalises_line_endings_and_whitespace() -> None:
    raw = b"\n  MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\r\nPID|1\n\nPV1|1\n\n\n"
    assert decode(raw) == "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1\rPV1|1"


def test_decode_utf8_declared() -> None:
    raw = message("PID|1||1^^^X^PI||HÉLÈNE^ZOÉ")
    assert "HÉLÈNE^ZOÉ" in decode(raw)


def test_decode_latin1_declared() -> None:
    raw = (msh(charset="8859/1") + "\rPID|1||1^^^X^PI||HÉLÈNE").encode("latin-1")
    assert decode(raw).endswith("HÉLÈNE")


def test_decode_8859_15_declared() -> None:
    raw = (msh(charset="8859/15") + "\rNTE|1||5 €").encode("iso-8859-15")
    assert decode(raw).endswith("5 €")


def test_decode_absent_charset_tries_utf8_then_latin1() -> None:
    base = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||||CÉLINE"
    assert decode(base.encode("utf-8")).endswith("CÉLINE")
    assert decode(base.encode("latin-1")).endswith("CÉLINE")


def test_decode_latin1_bytes_declared_utf8_is_rejected() -> None:
    raw = (msh() + "\rPID|1||1^^^X^PI||HÉLÈNE").encode("latin-1")
    with pytest.raises(Hl7Error) as info:
        decode(raw)
    assert (info.value.code, info.value.location, info.value.reject) == ("102", "MSH^1^18", True)


def test_decode_unknown_charset_is_rejected() -> None:
    with pytest.raises(Hl7Error) as info:
        decode(message(charset="EBCDIC"))
    assert (info.value.code, info.value.location, info.value.reject) == ("103", "MSH^1^18", True)


def test_decode_strips_utf8_bom() -> None:
    assert decode(b"\xef\xbb\xbf" + message()).startswith("MSH|")


@pytest.mark.parametrize(
    ("charset", "codec"),
    [
        ("UNICODE UTF-8", "utf-8"),
        ("8859/1", "iso-8859-1"),
        ("8859/15", "iso-8859-15"),
        ("ASCII", "ascii"),
        ("UNICODE", None),
        ("8859/99", None),
        ("", None),
    ],
)
def test_charset_to_codec(charset: str, codec: str | None) -> None:
    assert charset_to_codec(charset) == codec


# ------------------------------------------------------------------------------------------- parse


def test_parse_example_header() -> None:
    message_, header = parse(ADMISSION.read_bytes())
    assert header.sending_application == "GAM"
    assert header.sending_facility == "CHU-X"
    assert header.receiving_application == "DPI"
    assert header.receiving_facility == "CHU-X"
    assert header.datetime == "20240306111154"
    assert (header.message_type, header.trigger, header.structure) == ("ADT", "A01", "ADT_A01")
    assert header.control_id == "3975"
    assert header.processing_id == "D"
    assert header.version == "2.5"
    assert header.version_raw == "2.5^FRA^2.11"
    assert header.charset == "UNICODE UTF-8"
    assert header.country == "FRA"
    assert header.language == "FR"
    assert header.profile == "2.11^IHE_FRANCE-2.11-PAM"
    assert (header.field_separator, header.encoding_characters) == ("|", "^~\\&")
    assert [seg.id for seg in message_] == ["MSH", "EVN", "PID", "PV1", "ZBE", "ZFA"]


@pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"])
def test_parse_supported_versions(version: str) -> None:
    assert parse(message(version=version))[1].version == version


@pytest.mark.parametrize(
    ("raw", "code", "location"),
    [
        (b"", "100", "MSH^1"),
        (b"PID|1||000003^^^X^PI\rMSH|^~\\&|A", "100", "MSH^1"),
        (b"garbage", "100", "MSH^1"),
        (b"MSH|^~|A|B|C|D|||ADT^A01|1|P|2.5", "102", "MSH^1^2"),
        (b"MSH|^^\\&|A|B|C|D|||ADT^A01|1|P|2.5", "102", "MSH^1^2"),
        (b"MSHA^~\\&A", "102", "MSH^1^2"),
        (b"MSH", "102", "MSH^1^2"),
        (message(msg_type=""), "101", "MSH^1^9"),
        (message(msg_type="ADT"), "101", "MSH^1^9"),
        (message(control_id=""), "101", "MSH^1^10"),
        (message(processing=""), "101", "MSH^1^11"),
        (message(processing="X"), "202", "MSH^1^11"),
        (message(version=""), "101", "MSH^1^12"),
        (message(version="9.9"), "203", "MSH^1^12"),
        (message(version="2.3"), "203", "MSH^1^12"),
        (b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P", "101", "MSH^1^12"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_parse_rejects_bad_envelopes(raw: bytes, code: str, location: str) -> None:
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    assert info.value.code == code
    assert info.value.location == location
    assert info.value.reject is True
    assert info.value.severity == "E"
    assert info.value.message  # French user text for ERR-8


def test_parse_non_standard_delimiters() -> None:
    raw = b"MSH#$*!@#GAM#CHU-X#DPI#CHU-X#20240306##ADT$A31$ADT_A05#42#P#2.5\rPID#1##000003$$$CHU-X@1@N$PI"
    message_, header = parse(raw)
    assert (header.trigger, header.control_id) == ("A31", "42")
    assert (header.field_separator, header.encoding_characters) == ("#", "$*!@")
    ack = build_ack(header, "AA", now=NOW, control_id="A1").decode()
    assert ack.startswith("MSH#$*!@#OPENSEGUR#OPENSEGUR#GAM#CHU-X#")
    assert "#ACK$A31$ACK#A1#" in ack
    assert hl7.parse(ack).segment("MSA")(2) == ["42"]


# ------------------------------------------------------------------------------------------- ACK


def test_build_ack_aa_round_trip() -> None:
    _, header = parse(ADMISSION.read_bytes())
    ack = parse_ack(build_ack(header, "AA", now=NOW, control_id="ACK1"))
    m = ack.segment("MSH")
    assert str(m(3)) == "OPENSEGUR" and str(m(4)) == "OPENSEGUR"
    assert str(m(5)) == "GAM" and str(m(6)) == "CHU-X"
    assert str(m(7)) == "20240306111200+0100"
    assert str(m(9)) == "ACK^A01^ACK"
    assert str(m(10)) == "ACK1"
    assert str(m(11)) == "D"
    assert str(m(12)) == "2.5^FRA^2.11"
    assert str(m(17)) == "FRA"
    assert str(m(18)) == "UNICODE UTF-8"
    assert str(m(19)) == "FR"
    assert str(m(21)) == "2.11^IHE_FRANCE-2.11-PAM"
    msa = ack.segment("MSA")
    assert (str(msa(1)), str(msa(2))) == ("AA", "3975")
    assert len(ack) == 2  # no ERR
    # The ACK is itself a valid message for our own parser.
    _, ack_header = parse(build_ack(header, "AA", now=NOW))
    assert (ack_header.message_type, ack_header.trigger, ack_header.structure) == ("ACK", "A01", "ACK")


def test_build_ack_custom_identity_and_unique_control_ids() -> None:
    _, header = parse(ADMISSION.read_bytes())
    acks = [parse_ack(build_ack(header, "AA", app="DPI-X", facility="CHU^X")) for _ in range(20)]
    assert str(acks[0].segment("MSH")(3)) == "DPI-X"
    assert acks[0].segment("MSH").extract_field(1, 4) == "CHU^X"  # escaped, not split into components
    ids = {str(a.segment("MSH")(10)) for a in acks}
    assert len(ids) == 20 and all(len(i) <= 20 for i in ids)


def test_build_ack_with_errors() -> None:
    _, header = parse(ADMISSION.read_bytes())
    errors = [
        Hl7Error("102", "Date de naissance invalide : 19790230", location="PID^1^7"),
        Hl7Error("207", "Identifiant patient inconnu", severity="W", application_code="902"),
    ]
    raw_ack = build_ack(header, "AE", errors, now=NOW)
    assert b"Date de naissance invalide" in raw_ack  # UTF-8 as MSH-18 says
    ack = parse_ack(raw_ack)
    assert str(ack.segment("MSA")(1)) == "AE"
    assert str(ack.segment("MSA")(2)) == "3975"
    assert err_fields(ack) == [
        ("PID^1^7", "102", "HL70357", "E", "Date de naissance invalide : 19790230"),
        ("", "207", "HL70357", "W", "Identifiant patient inconnu"),
    ]
    assert ack.segments("ERR")[0].extract_field(1, 3, 1, 2) == "Data type error"
    assert str(ack.segments("ERR")[1](5)) == "902"


def test_build_ack_escapes_user_text() -> None:
    _, header = parse(ADMISSION.read_bytes())
    text = "valeur a|b^c&d~e\\f"
    ack = parse_ack(build_ack(header, "AE", [Hl7Error("102", text, location="PID^1^5")], now=NOW))
    assert len(ack.segments("ERR")[0]) == 9
    assert ack.segments("ERR")[0].extract_field(1, 8) == text


def test_build_ack_encodes_in_latin1_when_declared() -> None:
    raw = (msh(charset="8859/1") + "\rPID|1").encode("latin-1")
    _, header = parse(raw)
    ack = build_ack(header, "AE", [Hl7Error("101", "Référence absente", location="PID^1^3")], now=NOW)
    assert "Référence".encode("latin-1") in ack
    assert str(parse_ack(ack, "latin-1").segment("MSH")(18)) == "8859/1"


def test_build_ack_ascii_charset_drops_accents() -> None:
    raw = (msh(charset="ASCII") + "\rPID|1").encode("ascii")
    _, header = parse(raw)
    ack = build_ack(header, "AE", [Hl7Error("101", "Référence", location="PID^1^3")], now=NOW)
    assert b"Reference" in ack
    ack.decode("ascii")


def test_build_ack_rejects_unknown_code() -> None:
    _, header = parse(ADMISSION.read_bytes())
    with pytest.raises(ValueError):
        build_ack(header, "CA")


def test_ack_code_for() -> None:
    assert ack_code_for([]) == "AA"
    assert ack_code_for([Hl7Error("207", "x", severity="W")]) == "AA"
    assert ack_code_for([Hl7Error("102", "x")]) == "AE"
    assert ack_code_for([Hl7Error("102", "x"), Hl7Error("203", "y", reject=True)]) == "AR"


# ------------------------------------------------------------------------------------------- NAK


def test_nak_for_unsupported_version_keeps_control_id() -> None:
    raw = message(version="9.9", control_id="CTRL-9")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    ack = parse_ack(build_nak_for_unparseable(raw, info.value, now=NOW))
    m = ack.segment("MSH")
    assert (str(m(5)), str(m(6)), str(m(9)), str(m(12))) == ("GAM", "CHU-X", "ACK^A01^ACK", "2.5")
    assert (str(ack.segment("MSA")(1)), str(ack.segment("MSA")(2))) == ("AR", "CTRL-9")
    assert err_fields(ack) == [("MSH^1^12", "203", "HL70357", "E", "Version HL7 non supportée : 9.9")]


def test_nak_for_garbage_has_empty_msa2() -> None:
    raw = b"\x00\xff not hl7 at all"
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    nak = build_nak_for_unparseable(raw, info.value, now=NOW)
    ack = parse_ack(nak)
    assert str(ack.segment("MSH")(9)) == "ACK"
    assert str(ack.segment("MSA")(1)) == "AR"
    assert str(ack.segment("MSA")(2)) == ""
    assert err_fields(ack)[0][:2] == ("MSH^1", "100")


def test_nak_for_wrong_charset_keeps_control_id() -> None:
    raw = (msh(control_id="77") + "\rPID|1||1^^^X^PI||HÉLÈNE").encode("latin-1")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    ack = parse_ack(build_nak_for_unparseable(raw, info.value, now=NOW))
    assert str(ack.segment("MSA")(2)) == "77"
    assert err_fields(ack)[0][:2] == ("MSH^1^18", "102")


def test_nak_for_unknown_charset_does_not_echo_it() -> None:
    raw = message(charset="EBCDIC", control_id="78")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    ack = parse_ack(build_nak_for_unparseable(raw, info.value, now=NOW))
    assert str(ack.segment("MSA")(2)) == "78"
    assert "EBCDIC" not in str(ack.segment("MSH"))


def test_header_component_separator() -> None:
    header = MessageHeader("a", "b", "c", "d", "", "ADT", "A01", "", "1", "P", "2.5", "")
    assert header.component_separator == "^"
