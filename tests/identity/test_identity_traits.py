import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opensegur.identity import (
    OID_NIA,
    OID_NIR,
    OID_NIR_TEST,
    IdentityError,
    Ins,
    Sex,
    StrictTraits,
    consistent_with_ins,
    nir_key,
    normalise_name,
)

TODAY = datetime.date(2025, 6, 1)


def build(**overrides: object) -> StrictTraits:
    values: dict[str, object] = {
        "birth_name": "PAT-TROIS",
        "first_names": "DOMINIQUE MARIE-LOUISE",
        "birth_date": "1979-03-28",
        "sex": "F",
        "birth_place": "51215",
    }
    values.update(overrides)
    return StrictTraits.build(**values, today=TODAY)  # type: ignore[arg-type]


def _ins(number: str) -> Ins:
    return Ins.from_parts(number, f"{nir_key(number):02d}", OID_NIR)


PAT_TROIS_INS = Ins.parse("279035121518989", OID_NIR_TEST)
CORSE_INS = Ins.from_parts("180032B020401", "23", OID_NIR)


def test_build_valid_traits() -> None:
    t = build()
    assert t.birth_name == "PAT-TROIS"
    assert t.first_names == "DOMINIQUE MARIE-LOUISE"
    assert t.first_name == "DOMINIQUE"
    assert t.birth_date == datetime.date(1979, 3, 28)
    assert t.sex is Sex.F
    assert t.birth_place == "51215"


def test_build_accepts_both_date_formats_and_date_objects() -> None:
    assert build(birth_date="19790328").birth_date == datetime.date(1979, 3, 28)
    assert build(birth_date=datetime.date(1979, 3, 28)).birth_date == datetime.date(1979, 3, 28)
    assert build(birth_date=datetime.datetime(1979, 3, 28, 10, 0)).birth_date == datetime.date(1979, 3, 28)


def test_build_normalises_whitespace_and_codes() -> None:
    t = build(birth_name="  de  la   Tour ", first_names=" Jean   Pierre ", sex=" m ", birth_place=" 2b020 ")
    assert t.birth_name == "de la Tour"
    assert t.first_names == "Jean Pierre"
    assert t.sex is Sex.M
    assert t.birth_place == "2B020"


def test_birth_place_optional() -> None:
    assert build(birth_place=None).birth_place is None
    assert build(birth_place="  ").birth_place is None


@pytest.mark.parametrize("field", ["birth_name", "first_names", "birth_date", "sex"])
@pytest.mark.parametrize("empty", [None, "", "   "])
def test_missing_trait_names_the_field(field: str, empty: object) -> None:
    with pytest.raises(IdentityError) as exc:
        build(**{field: empty})
    assert exc.value.code == "TRAIT_MISSING"
    assert exc.value.field == field
    assert exc.value.message.startswith("Trait strict manquant")


@pytest.mark.parametrize(
    "bad",
    [
        "20230230",
        "2023-02-30",
        "19790229",
        "1979-13-01",
        "1979-00-10",
        "79-03-28",
        "1979/03/28",
        "1979-0328",
        "x",
    ],
)
def test_impossible_or_unreadable_dates(bad: str) -> None:
    with pytest.raises(IdentityError) as exc:
        build(birth_date=bad)
    assert exc.value.code == "TRAIT_DATE"
    assert exc.value.field == "birth_date"


def test_leap_day_is_accepted() -> None:
    assert build(birth_date="20000229").birth_date == datetime.date(2000, 2, 29)


def test_future_date_and_too_old_date() -> None:
    with pytest.raises(IdentityError, match="futur") as exc:
        build(birth_date="2025-06-02")
    assert exc.value.code == "TRAIT_DATE"
    assert build(birth_date="2025-06-01").birth_date == TODAY
    with pytest.raises(IdentityError, match="1880") as exc:
        build(birth_date="1879-12-31")
    assert exc.value.code == "TRAIT_DATE"
    assert build(birth_date="1880-01-01").birth_date.year == 1880


def test_sex_codes() -> None:
    assert build(sex="F").sex is Sex.F
    for code in ("I", "U", "O", "u"):
        assert build(sex=code).sex is Sex.I
    with pytest.raises(IdentityError) as exc:
        build(sex="X")
    assert exc.value.code == "TRAIT_SEX"
    assert exc.value.field == "sex"


def test_indeterminate_sex_cannot_be_qualified() -> None:
    build(sex="F").check_qualifiable()
    with pytest.raises(IdentityError) as exc:
        build(sex="U").check_qualifiable()
    assert exc.value.code == "TRAIT_SEX"
    assert "qualifiée" in exc.value.message


@pytest.mark.parametrize("bad", ["6322", "632200", "ABCDE", "2C020", "2A02", "63 220", "6322A"])
def test_invalid_cog(bad: str) -> None:
    with pytest.raises(IdentityError) as exc:
        build(birth_place=bad)
    assert exc.value.code == "TRAIT_COG"
    assert exc.value.field == "birth_place"


@pytest.mark.parametrize("good", ["63220", "2A004", "2b020", "99134", "97105"])
def test_valid_cog(good: str) -> None:
    assert build(birth_place=good).birth_place == good.upper()


@pytest.mark.parametrize("name", ["DUPONT2", "O'NEIL!", "MARTIN_DURAND", "Иванов", "DUPONT.", "JEAN/PAUL"])
def test_names_with_forbidden_characters(name: str) -> None:
    with pytest.raises(IdentityError) as exc:
        build(birth_name=name)
    assert exc.value.code == "TRAIT_NAME"
    assert exc.value.field == "birth_name"
    with pytest.raises(IdentityError) as exc:
        build(first_names=name)
    assert exc.value.field == "first_names"


def test_name_made_only_of_separators_is_refused() -> None:
    with pytest.raises(IdentityError) as exc:
        build(birth_name="- '")
    assert exc.value.code == "TRAIT_NAME"


@pytest.mark.parametrize("name", ["N'DIAYE", "LÉA-MARIÈ", "D’ARC", "ŒUVRARD", "Müller", "GARÇON"])
def test_names_allowed(name: str) -> None:
    assert build(birth_name=name).birth_name == name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Pat-Trois", "PAT TROIS"),
        ("  d'Arc  ", "D ARC"),
        ("D’ARC", "D ARC"),
        ("Léa--Marie   Noëlle", "LEA MARIE NOELLE"),
        ("Œuvrard", "OEUVRARD"),
        ("GARÇON", "GARCON"),
    ],
)
def test_normalise_name(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected


@given(st.text())
def test_property_normalise_name_idempotent(s: str) -> None:
    once = normalise_name(s)
    assert normalise_name(once) == once
    assert "  " not in once and "-" not in once and "'" not in once
    assert once == once.strip()


def test_differences_ignore_case_accents_and_separators() -> None:
    local = build(birth_name="Pat Trois", first_names="Dominique Marie Louise")
    insi = build(birth_name="PAT-TROIS", first_names="DOMINIQUE MARIE-LOUISE")
    assert local.differences(insi) == []


def test_differences_list_changed_fields_in_order() -> None:
    local = build()
    other = build(
        birth_name="PAT-QUATRE",
        first_names="DOMINIQUE",
        birth_date="1979-03-29",
        sex="M",
        birth_place="51216",
    )
    assert local.differences(other) == ["birth_name", "first_names", "birth_date", "sex", "birth_place"]
    assert local.differences(build(birth_place=None)) == ["birth_place"]
    assert build(birth_place=None).differences(build(birth_place=None)) == []


def test_traits_are_frozen() -> None:
    t = build()
    with pytest.raises(AttributeError):
        t.birth_name = "X"  # type: ignore[misc]


# --- consistency with the matricule -------------------------------------------------------------


def test_pat_trois_is_consistent() -> None:
    assert consistent_with_ins(build(), PAT_TROIS_INS) == []


def test_corse_anthony_is_consistent() -> None:
    t = build(
        birth_name="CORSE", first_names="ANTHONY", birth_date="1980-03-02", sex="M", birth_place="2B020"
    )
    assert consistent_with_ins(t, CORSE_INS) == []


def test_insi_fixtures_are_consistent() -> None:
    # /work/shared/insi/ins/fixtures TEST_2.04_cas2 (active NIR) and TEST_2.05 (NIA).
    ecetinsi = build(
        birth_name="ECETINSI",
        first_names="PIERRE-ALAIN MURIEL FLORIANT",
        birth_date="2009-07-14",
        sex="M",
        birth_place="63220",
    )
    assert consistent_with_ins(ecetinsi, Ins.from_parts("1090763220834", "89", OID_NIR)) == []
    provisoire = build(
        birth_name="PROVISOIRE",
        first_names="MATRICULE",
        birth_date="2009-07-01",
        sex="M",
        birth_place="63220",
    )
    assert consistent_with_ins(provisoire, Ins.from_parts("1090763220888", "35", OID_NIA)) == []


def test_sex_mismatch() -> None:
    msgs = consistent_with_ins(build(sex="M"), PAT_TROIS_INS)
    assert len(msgs) == 1 and msgs[0].startswith("Sexe incohérent")


def test_sex_not_checked_for_nia() -> None:
    t = build(birth_date="2009-07-01", sex="F", birth_place="63220")
    assert consistent_with_ins(t, Ins.from_parts("1090763220888", "35", OID_NIA)) == []


def test_sex_not_checked_for_temporary_numbers() -> None:
    ins = _ins("7790351215189")
    assert consistent_with_ins(build(sex="F"), ins) == []
    assert consistent_with_ins(build(sex="M"), ins) == []


def test_indeterminate_sex_is_flagged() -> None:
    msgs = consistent_with_ins(build(sex="U"), PAT_TROIS_INS)
    assert msgs == ["Sexe indéterminé : incompatible avec un INS (M ou F attendu)"]


def test_year_and_month_mismatch() -> None:
    msgs = consistent_with_ins(build(birth_date="1978-04-28"), PAT_TROIS_INS)
    assert len(msgs) == 2
    assert msgs[0].startswith("Année de naissance incohérente") and "1978" in msgs[0]
    assert msgs[1].startswith("Mois de naissance incohérent") and "03" in msgs[1] and "04" in msgs[1]


def test_same_two_digit_year_other_century_is_accepted() -> None:
    # The NIR only holds yy: 1879 vs 1979 cannot be told apart from the matricule.
    assert consistent_with_ins(build(birth_date="1979-03-01"), PAT_TROIS_INS) == []


@pytest.mark.parametrize("month_code", ["20", "30", "35", "42", "50", "99"])
def test_unknown_month_codes_skip_date_checks(month_code: str) -> None:
    ins = _ins(f"251{month_code}51215189")
    assert consistent_with_ins(build(), ins) == []


@pytest.mark.parametrize("month_code", ["13", "19", "21", "29", "43", "49"])
def test_other_month_codes_are_flagged(month_code: str) -> None:
    msgs = consistent_with_ins(build(), _ins(f"279{month_code}51215189"))
    assert len(msgs) == 1 and msgs[0].startswith("Mois de naissance incohérent")


def test_department_mismatch() -> None:
    msgs = consistent_with_ins(build(birth_place="63220"), PAT_TROIS_INS)
    assert len(msgs) == 1
    assert (
        msgs[0].startswith("Département de naissance incohérent") and "51" in msgs[0] and "63220" in msgs[0]
    )


def test_department_not_checked_when_born_abroad_or_unknown_place() -> None:
    assert consistent_with_ins(build(birth_place="99134"), PAT_TROIS_INS) == []
    assert consistent_with_ins(build(birth_place=None), PAT_TROIS_INS) == []
    born_abroad = _ins("2790399134189")
    assert consistent_with_ins(build(birth_place="63220"), born_abroad) == []


def test_corsica_before_1976_used_department_20() -> None:
    t = build(birth_date="1970-03-28", birth_place="2A004")
    assert consistent_with_ins(t, _ins("2700320004189")) == []
    assert len(consistent_with_ins(t, _ins("2700363004189"))) == 1


def test_seine_et_oise_before_1968() -> None:
    born_1950_in_92 = build(birth_date="1950-03-28", birth_place="92012")
    assert consistent_with_ins(born_1950_in_92, _ins("2500375004189")) == []
    born_1990_in_92 = build(birth_date="1990-03-28", birth_place="92012")
    assert len(consistent_with_ins(born_1990_in_92, _ins("2900375004189"))) == 1


def test_overseas_department_prefix() -> None:
    t = build(birth_date="1979-03-28", birth_place="97105")
    assert consistent_with_ins(t, _ins("2790397105189")) == []
