"""Repeated schematron checks compiled once (named templates) change the memory of the rules, not their reports."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from opensegur.content import validation
from opensegur.content.validation import STRUCTURATION_MINIMALE, CdaValidator
from tests.content.conftest import assert_same_reports, compile_structuration_minimale

XSL = "http://www.w3.org/1999/XSL/Transform"
SVRL = "http://purl.oclc.org/dsdl/svrl"


def _stylesheet(*templates: str) -> etree._Element:
    return etree.fromstring(
        f'<xsl:stylesheet xmlns:xsl="{XSL}" xmlns:svrl="{SVRL}" xmlns:hl7="urn:hl7-org:v3" version="1.0">'
        + "".join(templates)
        + "</xsl:stylesheet>"
    )


def _assert(test: str) -> str:
    return (
        f'<xsl:choose><xsl:when test="{test}"/><xsl:otherwise>'
        f'<svrl:failed-assert test="{test}"><svrl:text>{test}</svrl:text></svrl:failed-assert>'
        "</xsl:otherwise></xsl:choose>"
    )


def _calls(template: etree._Element) -> list[str]:
    return [c.get("name", "") for c in template.iterfind(f"{{{XSL}}}call-template")]


def test_a_check_written_in_several_rules_becomes_one_named_template_called_by_each() -> None:
    shared, once = _assert("@nullFlavor or hl7:id"), _assert("hl7:code")
    root = _stylesheet(
        f'<xsl:template match="hl7:a" mode="M1">{shared}{once}</xsl:template>',
        f'<xsl:template match="hl7:b" mode="M1">{shared}</xsl:template>',
    )
    validation._share_repeated_checks(root)
    rule_a, rule_b, named = root.iterfind(f"{{{XSL}}}template")
    assert named.get("name") and named.get("match") is None
    assert _calls(rule_a) == _calls(rule_b) == [named.get("name")]
    assert named[0].tag == f"{{{XSL}}}choose" and named[0][0].get("test") == "@nullFlavor or hl7:id"
    # Written once: left where it is.
    assert len(rule_a.findall(f"{{{XSL}}}choose")) == 1 and rule_b.find(f"{{{XSL}}}choose") is None


def test_a_check_reading_a_variable_of_its_rule_stays_inline() -> None:
    uses_let = _assert("$code = 'X'")
    root = _stylesheet(
        f'<xsl:template match="hl7:a"><xsl:variable name="code" select="hl7:code/@code"/>{uses_let}</xsl:template>',
        f'<xsl:template match="hl7:b"><xsl:variable name="code" select="@code"/>{uses_let}</xsl:template>',
    )
    validation._share_repeated_checks(root)
    assert not root.findall(f".//{{{XSL}}}call-template")
    assert len(root.findall(f".//{{{XSL}}}choose")) == 2


def _inlined_executable(cache_dir: Path | None) -> Any:
    """Structuration minimale compiled with every shared check written back into each rule that calls it."""
    text, _ = validation._schematron_to_cache(STRUCTURATION_MINIMALE, cache_dir)
    root = etree.fromstring(text.encode("utf-8"), etree.XMLParser(huge_tree=True))
    named = {t.get("name"): t for t in root.iterfind(f"{{{XSL}}}template[@name]")}
    assert len(named) > 100
    for call in list(root.iter(f"{{{XSL}}}call-template")):
        body = copy.deepcopy(named[call.get("name")][0])
        body.tail = call.tail
        parent = call.getparent()
        assert parent is not None
        parent.replace(call, body)
    for template in named.values():
        root.remove(template)
    return compile_structuration_minimale(etree.tostring(root, encoding="unicode"))


@pytest.mark.slow
def test_structuration_minimale_reports_the_same_with_the_checks_shared_or_inline(
    validator: CdaValidator,
) -> None:
    shared = validation._compiled_schematron(STRUCTURATION_MINIMALE, validator.cache_dir).executable()
    inlined = _inlined_executable(validator.cache_dir)
    assert_same_reports(shared, inlined)
