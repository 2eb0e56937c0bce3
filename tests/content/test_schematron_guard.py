"""The parent guard added to the schematron XSLT changes the speed of the CI-SIS rules, not their reports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from opensegur.content import validation
from opensegur.content.validation import STRUCTURATION_MINIMALE, CdaValidator
from tests.content.conftest import assert_same_reports, compile_structuration_minimale


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
    assert_same_reports(guarded, plain)
