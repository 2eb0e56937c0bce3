import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensegur.identity import (
    INS_OIDS,
    OID_NIA,
    OID_NIA_TEST,
    OID_NIR,
    OID_NIR_TEST,
    TEST_OIDS,
    IdentityError,
    Ins,
    is_ins_oid,
    nir_key,
)

# Official INSi / CNDA / CI-SIS test data (standards digest §3.1, §3.5; /work/shared/insi fixtures).
OFFICIAL_KEYS = [
    ("2751263220749", 74),  # ADRUN ZOE
    ("180032B020401", 23),  # CORSE ANTHONY (CNDA TEST_2.08 cas 1)
    ("2090763220834", 39),  # ECETINSI history
    ("1090763220834", 89),  # ECETINSI active (TEST_2.04 cas 2)
    ("2090663220123", 55),  # ECETINSI history
    ("2790351215189", 89),  # PAT-TROIS DOMINIQUE (CI-SIS examples)
    ("1090763220888", 35),  # PROVISOIRE MATRICULE, NIA (TEST_2.05)
]


@pytest.mark.parametrize(("number", "key"), OFFICIAL_KEYS)
def test_nir_key_matches_official_data(number: str, key: int) -> None:
    assert nir_key(number) == key


def test_nir_key_accepts_lowercase_and_spaces() -> None:
    assert nir_key("1 80 03 2b 020 401") == 23


@pytest.mark.parametrize(
    "bad", ["27512632207", "2751263220749X", "27512632A0749", "2A51263220749", "", "5751263220749"]
)
def test_nir_key_rejects_malformed(bad: str) -> None:
    with pytest.raises(IdentityError) as exc:
        nir_key(bad)
    assert exc.value.code == "INS_FORMAT"
    assert exc.value.field == "matricule"


def test_oid_constants() -> None:
    assert OID_NIR == "1.2.250.1.213.1.4.8"
    assert OID_NIA == "1.2.250.1.213.1.4.9"
    assert OID_NIR_TEST == "1.2.250.1.213.1.4.10"
    assert OID_NIA_TEST == "1.2.250.1.213.1.4.11"
    assert INS_OIDS == {
        OID_NIR: "NIR",
        OID_NIA: "NIA",
        OID_NIR_TEST: "NIR de test",
        OID_NIA_TEST: "NIA de test",
    }
    assert frozenset({OID_NIR_TEST, OID_NIA_TEST}) == TEST_OIDS
    assert is_ins_oid(OID_NIR) and is_ins_oid(" 1.2.250.1.213.1.4.11 ")
    assert not is_ins_oid("1.2.250.1.213.1.4.2")
    assert not is_ins_oid("1.2.250.1.71.4.2.1")


def test_parse_pat_trois_test_nir() -> None:
    ins = Ins.parse("279035121518989", OID_NIR_TEST)
    assert ins.matricule == "279035121518989"
    assert ins.number == "2790351215189"
    assert ins.key == "89"
    assert ins.kind == "NIR"
    assert ins.is_test is True
    assert str(ins) == "279035121518989"


def test_parse_normalises_spaces_and_case() -> None:
    ins = Ins.parse(" 1 80 03 2b 020 401 23 ", f" {OID_NIR} ")
    assert ins.matricule == "180032B02040123"
    assert ins.oid == OID_NIR
    assert ins.is_test is False


def test_nia_kind_comes_from_oid() -> None:
    assert Ins.parse("109076322088835", OID_NIA).kind == "NIA"
    assert Ins.parse("109076322088835", OID_NIA_TEST).kind == "NIA"
    assert Ins.parse("109076322088835", OID_NIA_TEST).is_test


def test_from_parts_as_returned_by_insi() -> None:
    ins = Ins.from_parts("180032B020401", "23", OID_NIR)
    assert ins == Ins.parse("180032B02040123", OID_NIR)
    assert ins.number == "180032B020401" and ins.key == "23"


def test_key_error_states_expected_key() -> None:
    with pytest.raises(IdentityError) as exc:
        Ins.parse("279035121518934", OID_NIR)
    assert exc.value.code == "INS_KEY"
    assert exc.value.field == "matricule"
    assert str(exc.value) == "Clé NIR invalide : 89 attendue, 34 reçue"


def test_key_error_pads_expected_key() -> None:
    # 97 - N mod 97 can be a single digit: it is written with 2 digits in a matricule.
    number = next(f"{n:013d}" for n in range(1000000000000, 1000000001000) if nir_key(f"{n:013d}") < 10)
    good = f"{nir_key(number):02d}"
    bad = "99" if good != "99" else "98"
    with pytest.raises(IdentityError, match=f"{good} attendue, {bad} reçue"):
        Ins.parse(number + bad, OID_NIR)


@pytest.mark.parametrize(
    "matricule",
    [
        "27903512151898",  # 14
        "2790351215189890",  # 16
        "27903512151X989",  # letter in the number
        "2A9035121518989",  # Corsica letters outside positions 6-7
        "279035121518 9A",  # key not numeric after space removal -> length 14
        "27903512151898A",  # key not numeric
        "579035121518989",  # first digit 5 not admitted
        "",
    ],
)
def test_parse_rejects_malformed(matricule: str) -> None:
    with pytest.raises(IdentityError) as exc:
        Ins.parse(matricule, OID_NIR)
    assert exc.value.code == "INS_FORMAT"


def test_parse_rejects_unknown_oid() -> None:
    with pytest.raises(IdentityError) as exc:
        Ins.parse("279035121518989", "1.2.250.1.213.1.4.2")
    assert exc.value.code == "INS_OID"
    assert exc.value.field == "oid"


def test_direct_construction_validates() -> None:
    with pytest.raises(IdentityError):
        Ins("279035121518988", OID_NIR)


def test_mock_hermann_keys_are_rejected() -> None:
    # padoa mock data (HERMANN GATIEN) does not satisfy the formula: documented as mock, must not pass.
    with pytest.raises(IdentityError) as exc:
        Ins.from_parts("1810363220456", "60", OID_NIR)
    assert exc.value.code == "INS_KEY"


def test_from_parts_rejects_bad_lengths() -> None:
    with pytest.raises(IdentityError, match="13"):
        Ins.from_parts("18003202040", "23", OID_NIR)
    with pytest.raises(IdentityError) as exc:
        Ins.from_parts("180032B020401", "3", OID_NIR)
    assert exc.value.code == "INS_FORMAT"


numbers13 = st.builds(
    lambda sex, body, dept, tail: f"{sex}{body}{dept}{tail}",
    st.sampled_from("123478"),
    st.from_regex(r"[0-9]{4}", fullmatch=True),
    st.one_of(st.from_regex(r"[0-9]{2}", fullmatch=True), st.sampled_from(["2A", "2B"])),
    st.from_regex(r"[0-9]{6}", fullmatch=True),
)


@given(numbers13)
def test_property_key_in_range_and_roundtrip(number: str) -> None:
    key = nir_key(number)
    assert 1 <= key <= 97
    ins = Ins.from_parts(number, f"{key:02d}", OID_NIR)
    assert Ins.parse(str(ins), OID_NIR) == ins
    dept = {"2A": "19", "2B": "18"}.get(number[5:7], number[5:7])
    numeric = int(number[:5] + dept + number[7:])
    # The defining property of the key: number + key is a multiple of 97.
    assert (numeric + key) % 97 == 0


@given(numbers13, st.integers(min_value=0, max_value=99))
def test_property_only_the_right_key_is_accepted(number: str, key: int) -> None:
    if key == nir_key(number):
        assert Ins.from_parts(number, f"{key:02d}", OID_NIR).key == f"{key:02d}"
    else:
        with pytest.raises(IdentityError) as exc:
            Ins.from_parts(number, f"{key:02d}", OID_NIR)
        assert exc.value.code == "INS_KEY"


@given(numbers13, st.integers(min_value=0, max_value=12), st.sampled_from("0123456789"))
def test_property_single_digit_typo_is_detected(number: str, pos: int, digit: str) -> None:
    if (
        number[pos] == digit
        or (pos == 0 and digit not in "123478")
        or (5 <= pos <= 6 and not number[5:7].isdigit())
    ):
        return
    typo = number[:pos] + digit + number[pos + 1 :]
    assert nir_key(typo) != nir_key(number)
