"""The parent guard added to the schematron XSLT changes the speed of the CI-SIS rules, not their reports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from opensegur.content import validation
from opensegur.content.validation import STRUCTURATION_MINIMALE, CdaValidator
from tests.content.conftest import ANS_EXAMPLES, CR_BIO_2023, CR_RADIO_V1, compile_structuration_minimale


@pytest.mark.parametrize(
    ("pattern", "guarded"),
    [
        (
            "//hl7:ClinicalDocument[hl7:typeId]/hl7:recordTarget[not(@nullFlavor)]/*[not(self::hl7:patientRole)]",
            "//hl7:ClinicalDocument[hl7:typeId]/hl7:recordTarget[not(@nullFlavor)]"
            "/*[parent::hl7:recordTarget][not(self::hl7:patientRole)]",
        ),
        # A "/" inside a predicate or a string is not a step.
        (
            "hl7:a[@v = 'x/y'][b/c]/*[not(self::hl7:d[@e = ']/'])]",
            "hl7:a[@v = 'x/y'][b/c]/*[parent::hl7:a][not(self::hl7:d[@e = ']/'])]",
        ),
    ],
)
def test_wildcard_last_step_gets_its_parent_name_first(pattern: str, guarded: str) -> None:
    assert validation._parent_guarded(pattern) == guarded


@pytest.mark.parametrize(
    "pattern",
    [
        "hl7:a/hl7:b",  # named last step: Saxon already indexes it by name
        "hl7:a//*[x]",  # descendant step: the parent is not known
        "@*|node()",
        "hl7:a/*[x] | hl7:b/*[y]",  # union: left alone
        "*[x]",
        "hl7:a/@*[x]",
        "hl7:a[1]/*",  # no predicate to put the guard before
    ],
)
def test_other_patterns_are_left_as_they_are(pattern: str) -> None:
    assert validation._parent_guarded(pattern) == pattern


def _plain_executable(cache_dir: Path | None) -> Any:
    """Structuration minimale compiled without the guard: the guarded XSLT with every guard taken out again."""
    guarded, _ = validation._schematron_to_cache(STRUCTURATION_MINIMALE, cache_dir)
    plain = re.sub(r"\*\[parent::hl7:[\w.-]+\]", "*", guarded)
    assert guarded.count("*[parent::hl7:") > 100 and "[parent::hl7:" not in plain
    return compile_structuration_minimale(plain)


@pytest.mark.slow
def test_structuration_minimale_reports_the_same_with_and_without_the_guard(validator: CdaValidator) -> None:
    guarded = validation._compiled_schematron(STRUCTURATION_MINIMALE, validator.cache_dir).executable()
    plain = _plain_executable(validator.cache_dir)
    for path in (CR_RADIO_V1, CR_BIO_2023, ANS_EXAMPLES / "LDL-SES_2022.01.xml"):
        text = validation._serialise_for_rules(etree.fromstring(path.read_bytes()))
        node = validation._processor().parse_xml(xml_text=text, encoding="utf-8")
        reports = [str(exe.transform_to_string(xdm_node=node)) for exe in (guarded, plain)]
        assert reports[0] == reports[1], path.name
        assert "fired-rule" in reports[0]
