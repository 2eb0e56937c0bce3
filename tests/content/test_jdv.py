from __future__ import annotations

import pytest

from opensegur.content.jdv import (
    JDV_CONFIDENTIALITY,
    JDV_HEALTHCARE_FACILITY,
    JDV_TYPE_CODE,
    ValueSets,
    class_code_for_type,
    content_type_code_for_patient_class,
    format_code_for_media_type,
    format_code_for_templates,
    load_value_set,
)


def test_type_code_jdv_by_name_and_oid_is_the_same_cached_object() -> None:
    by_name = load_value_set(JDV_TYPE_CODE)
    assert by_name.oid == "1.2.250.1.213.1.1.5.471"
    assert load_value_set("1.2.250.1.213.1.1.5.471") is by_name
    cr = by_name.codes["18748-4"]
    assert (cr.scheme, cr.display) == ("2.16.840.1.113883.6.1", "CR d'imagerie médicale")
    assert by_name.get("18748-4", "1.2.250.1.213.1.1.4.12") is None  # code system must match too


def test_confidentiality_jdv_carries_the_dmp_visibility_flags() -> None:
    codes = load_value_set(JDV_CONFIDENTIALITY).codes
    assert codes["N"].scheme == "2.16.840.1.113883.5.25"
    assert codes["MASQUE_PS"].scheme == "1.2.250.1.213.1.1.4.13"
    assert "INVISIBLE_REPRESENTANTS_LEGAUX" in codes


def test_facility_jdv_contains_public_hospital_sector() -> None:
    assert load_value_set(JDV_HEALTHCARE_FACILITY).codes["SA01"].scheme == "1.2.250.1.71.4.2.4"


def test_unknown_value_set_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        load_value_set("JDV_J999_Nope")


def test_registry_lists_every_vendored_jdv() -> None:
    names = ValueSets().names
    assert len(names) > 400
    assert JDV_TYPE_CODE in names


def test_xds_derivations() -> None:
    assert class_code_for_type("18748-4") is not None
    assert class_code_for_type("18748-4").code == "10"  # type: ignore[union-attr]
    assert class_code_for_type("NOT-A-TYPE") is None
    assert format_code_for_media_type("application/pdf").code == "urn:ihe:iti:xds-sd:pdf:2008"  # type: ignore[union-attr]
    assert format_code_for_templates(["1.2.250.1.213.1.1.1.1", "1.2.250.1.213.1.1.1.29"]).code == (  # type: ignore[union-attr]
        "urn:asip:ci-sis:ldl-ses:2017"
    )
    # A VAC document carries both the IHE immunization template and the ANS VAC one: the ANS one decides.
    vac = format_code_for_templates(["1.3.6.1.4.1.19376.1.5.3.1.1.18.1.2", "1.2.250.1.213.1.1.1.37"])
    assert vac is not None and vac.code == "urn:asip:ci-sis:vac:2019"
    assert content_type_code_for_patient_class("I").code == "03"  # type: ignore[union-attr]
    assert content_type_code_for_patient_class("X") is None
