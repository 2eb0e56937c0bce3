import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensegur.identity import (
    IdentityError,
    finess_key_ok,
    idnat_ps_from_rpps,
    idnat_struct_from_finess,
    idnat_struct_from_siret,
    luhn_valid,
    parse_idnat_ps,
    rpps_key_ok,
    validate_adeli,
    validate_finess,
    validate_rpps,
    validate_siret,
)


def luhn_complete(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def test_luhn_basics() -> None:
    assert luhn_valid("79927398713")  # textbook example
    assert not luhn_valid("79927398710")
    assert not luhn_valid("")
    assert not luhn_valid("12a4")
    assert not luhn_valid("١٢٣")  # non-ASCII digits


@given(st.from_regex(r"[0-9]{1,20}", fullmatch=True))
def test_property_luhn_single_check_digit(body: str) -> None:
    valid = [d for d in "0123456789" if luhn_valid(body + d)]
    assert len(valid) == 1


@given(st.from_regex(r"[0-9]{10}", fullmatch=True), st.integers(0, 10), st.sampled_from("0123456789"))
def test_property_luhn_detects_single_digit_errors(body: str, pos: int, digit: str) -> None:
    good = luhn_complete(body)
    if good[pos] != digit:
        assert not luhn_valid(good[:pos] + digit + good[pos + 1 :])


# --- RPPS ----------------------------------------------------------------------------------------


def test_rpps_ans_examples_with_valid_key() -> None:
    # CI-SIS example author idNat_PS "801234567897" and HL7 example "10000023084" both pass Luhn.
    assert validate_rpps("01234567897") == "01234567897"
    assert validate_rpps("10000023084") == "10000023084"
    assert idnat_ps_from_rpps("01234567897") == "801234567897"
    assert rpps_key_ok("10000023084")


@pytest.mark.parametrize("rpps", ["01234567866", "01234567898", "07505123456", "01234534765"])
def test_rpps_ans_examples_with_wrong_key(rpps: str) -> None:
    # Well-formed but Luhn-invalid identifiers from the ANS CI-SIS example CDAs.
    assert not rpps_key_ok(rpps)
    with pytest.raises(IdentityError) as exc:
        validate_rpps(rpps)
    assert exc.value.code == "RPPS" and exc.value.field == "rpps"
    assert "clé" in exc.value.message
    assert validate_rpps(rpps, check_key=False) == rpps
    assert idnat_ps_from_rpps(rpps, check_key=False) == "8" + rpps


@pytest.mark.parametrize("rpps", ["1000002308", "100000230840", "1000002308A", "", "8 0123456789 7"])
def test_rpps_format(rpps: str) -> None:
    with pytest.raises(IdentityError) as exc:
        validate_rpps(rpps, check_key=False)
    assert exc.value.code == "RPPS"


def test_rpps_spaces_removed() -> None:
    assert validate_rpps(" 100 000 230 84 ") == "10000023084"


# --- idNat_PS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("801234567897", ("RPPS", "01234567897")),
        ("801234567866", ("RPPS", "01234567866")),  # bad key accepted at parse time
        ("0123456789", ("ADELI", "123456789")),
        ("00B1057294", ("ADELI", "0B1057294")),  # CPS test-card ADELI in ANS BIO examples
        ("1123456789", ("CABINET_ADELI", "123456789")),
        ("3750803447/12", None),
        ("3750803447", ("FINESS", "750803447")),
        ("4123456789", ("SIREN", "123456789")),
        ("512345678900012", ("SIRET", "12345678900012")),
        ("6123", ("CABINET_RPPS", "123")),
    ],
)
def test_parse_idnat_ps(value: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(IdentityError):
            parse_idnat_ps(value)
    else:
        assert parse_idnat_ps(value) == expected


@pytest.mark.parametrize(
    "value", ["", "8", "2123456789", "7123", "91234", "80123456789", "8012345678977", "012345678"]
)
def test_parse_idnat_ps_rejects(value: str) -> None:
    with pytest.raises(IdentityError) as exc:
        parse_idnat_ps(value)
    assert exc.value.code == "IDNAT_PS"
    assert exc.value.field == "idnat_ps"


@given(st.from_regex(r"[0-9]{10}", fullmatch=True))
def test_property_idnat_ps_roundtrip(body: str) -> None:
    rpps = luhn_complete(body)
    assert parse_idnat_ps(idnat_ps_from_rpps(rpps)) == ("RPPS", rpps)


# --- ADELI ---------------------------------------------------------------------------------------


def test_adeli() -> None:
    assert validate_adeli("751234567") == "751234567"
    assert validate_adeli("2a1234567") == "2A1234567"
    for bad in ("75123456", "7512345678", "75123456-", ""):
        with pytest.raises(IdentityError) as exc:
            validate_adeli(bad)
        assert exc.value.code == "ADELI"


# --- FINESS / SIRET ------------------------------------------------------------------------------


@pytest.mark.parametrize("finess", ["750803447", "750017212", "490000049", "920008059", "060021920"])
def test_finess_ans_examples_with_valid_key(finess: str) -> None:
    assert validate_finess(finess) == finess
    assert finess_key_ok(finess) is True
    assert idnat_struct_from_finess(finess) == "1" + finess


@pytest.mark.parametrize("finess", ["120456789", "120459876", "490012345"])
def test_finess_ans_examples_with_wrong_key(finess: str) -> None:
    assert finess_key_ok(finess) is False
    with pytest.raises(IdentityError) as exc:
        validate_finess(finess)
    assert exc.value.code == "FINESS" and exc.value.field == "finess"
    assert idnat_struct_from_finess(finess, check_key=False) == "1" + finess


def test_finess_corsica_key_not_checked() -> None:
    assert finess_key_ok("2A0000013") is None
    assert validate_finess("2b0000013") == "2B0000013"


@pytest.mark.parametrize("finess", ["75080344", "7508034471", "2C0000013", "75O803447", ""])
def test_finess_format(finess: str) -> None:
    with pytest.raises(IdentityError) as exc:
        validate_finess(finess, check_key=False)
    assert exc.value.code == "FINESS"


def test_siret() -> None:
    # SIRETs found in the ANS CI-SIS examples (idNat_Struct "3"+SIRET), Luhn-valid.
    assert validate_siret("18003502400041") == "18003502400041"
    assert idnat_struct_from_siret("78435954900010") == "378435954900010"
    for bad in ("18003502400042", "1800350240004", "1800350240004A"):
        with pytest.raises(IdentityError) as exc:
            validate_siret(bad)
        assert exc.value.code == "SIRET" and exc.value.field == "siret"


def test_siret_la_poste_rule() -> None:
    assert validate_siret("35600000000048") == "35600000000048"  # head office keeps a Luhn key
    assert validate_siret("35600000000010")  # establishment: digit sum 15, multiple of 5, not Luhn
    assert not luhn_valid("35600000000010")
    with pytest.raises(IdentityError):
        validate_siret("35600000000011")
