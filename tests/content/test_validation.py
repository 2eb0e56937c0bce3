from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from lxml import etree

from opensegur.content.cda import parse_cda
from opensegur.content.validation import STRUCTURATION_MINIMALE, CdaValidator, Finding, schematron_index
from tests.content.conftest import ANS_EXAMPLES, ANS_SAMPLE, CR_BIO_2023, CR_RADIO_V1, hl7_example_cdas

pytestmark = pytest.mark.slow


def _blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "blocking"]


def test_cr_radio_v1_gives_exactly_the_known_structuration_minimale_warnings(validator: CdaValidator) -> None:
    findings = validator.validate(CR_RADIO_V1.read_bytes())
    assert _blocking(findings) == []
    assert all(f.source == "schematron" and f.code.startswith("ASIP-STRUCT-MIN-StrucMin:") for f in findings)
    messages = sorted(f.message for f in findings)
    assert len(messages) == 2
    assert "setId" in messages[1] and "mandatory" in messages[1]
    assert "qualifiers" in messages[0] and "BR" in messages[0]


def test_strict_mode_turns_schematron_errors_into_blocking(validator: CdaValidator) -> None:
    findings = validator.validate(CR_RADIO_V1.read_bytes(), strict=True)
    assert len(_blocking(findings)) == 2


@pytest.mark.parametrize("path", hl7_example_cdas(), ids=lambda p: p.parent.name + "/" + p.name)
def test_hl7_examples_have_no_blocking_finding(validator: CdaValidator, path: Path) -> None:
    assert _blocking(validator.validate(path.read_bytes())) == []


@pytest.mark.parametrize("name", ANS_SAMPLE)
def test_ans_volet_examples_pass_their_volet_schematron(validator: CdaValidator, name: str) -> None:
    root, header = parse_cda((ANS_EXAMPLES / name).read_bytes())
    findings = validator.validate(root)
    assert findings == []


def test_volet_selection_by_template() -> None:
    index = schematron_index()
    names = lambda roots: [p.name for p in index.select(roots)]  # noqa: E731
    assert names(["1.2.250.1.213.1.1.1.1", "1.3.6.1.4.1.19376.1.2.20"]) == []
    assert names(["1.2.250.1.213.1.1.1.29"]) == ["CI-SIS_LDL-SES_2022.01.sch"]
    assert names(["1.3.6.1.4.1.19376.1.3.3", "1.2.250.1.213.1.1.1.55"]) == ["CI-SIS_BIO-CR-BIO_2024.01.sch"]
    vac = ["1.3.6.1.4.1.19376.1.5.3.1.1.18.1.2", "1.2.250.1.213.1.1.1.37"]
    assert names(vac) == ["CI-SIS_VAC_2023.01.sch"]
    assert "1.2.250.1.213.1.1.1.45" in index.by_template()


def test_bio_2023_document_is_checked_with_the_2024_volet(validator: CdaValidator) -> None:
    root, header = parse_cda(CR_BIO_2023.read_bytes())
    assert [p.name for p in validator.schematrons_for(header.template_roots)] == [
        STRUCTURATION_MINIMALE.name,
        "CI-SIS_BIO-CR-BIO_2024.01.sch",
    ]
    assert _blocking(validator.validate(root)) == []


def test_volet_rule_fires_when_a_mandatory_section_is_removed(validator: CdaValidator) -> None:
    root, _ = parse_cda((ANS_EXAMPLES / "LDL-SES_2022.01.xml").read_bytes())
    ns = {"cda": "urn:hl7-org:v3"}
    for section in root.xpath(
        "//cda:section[cda:templateId/@root='1.2.250.1.213.1.1.2.35.1']", namespaces=ns
    ):
        section.getparent().getparent().remove(section.getparent())
    findings = validator.validate(root)
    assert any(f.code.startswith("CI-SIS_LDL-SES_2022.01:") for f in findings)


def test_xsd_invalid_cda_is_blocking(validator: CdaValidator) -> None:
    root, _ = parse_cda(CR_RADIO_V1.read_bytes())
    etree.SubElement(root, "{urn:hl7-org:v3}notACdaElement")
    title = root.find("{urn:hl7-org:v3}title")
    assert title is not None
    root.remove(title)
    root.insert(0, title)  # wrong position
    findings = validator.validate(root)
    xsd = [f for f in findings if f.source == "xsd"]
    assert xsd and all(f.severity == "blocking" for f in xsd)


def test_not_well_formed_is_blocking_without_running_schematrons(validator: CdaValidator) -> None:
    findings = validator.validate(b"<ClinicalDocument xmlns='urn:hl7-org:v3'>")
    assert [(f.severity, f.source, f.code) for f in findings] == [("blocking", "xml", "XML_NOT_WELL_FORMED")]


def test_bad_ins_key_is_a_blocking_identity_finding(validator: CdaValidator) -> None:
    raw = CR_RADIO_V1.read_bytes().replace(b'extension="279035121518989"', b'extension="279035121518988"')
    findings = validator.validate(raw)
    assert ("blocking", "identity", "INS_KEY") in [(f.severity, f.source, f.code) for f in findings]


def test_validator_is_usable_from_several_threads(validator: CdaValidator) -> None:
    raw = CR_RADIO_V1.read_bytes()
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(len(validator.validate(raw)))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [2, 2, 2, 2]


def test_generated_xslt_is_cached_on_disk(validator: CdaValidator) -> None:
    validator.validate(CR_RADIO_V1.read_bytes())
    assert validator.cache_dir is not None
    cached = list(validator.cache_dir.glob("ASIP-STRUCT-MIN-StrucMin-*.xsl"))
    assert len(cached) == 1 and cached[0].stat().st_size > 1_000_000


def test_validating_one_document_is_fast_once_compiled(validator: CdaValidator) -> None:
    raw = CR_RADIO_V1.read_bytes()
    validator.validate(raw)
    started = time.perf_counter()
    validator.validate(raw)
    assert time.perf_counter() - started < 2.0


@pytest.mark.requirement("CDA-VALIDATION-BOUNDS")
def test_no_schematron_runs_after_a_blocking_xsd_failure(validator: CdaValidator) -> None:
    """The review's case: a document of 100,000 empty elements failed the XSD, then held the schematrons for
    minutes. It is now refused before any element is walked twice, and a lighter XSD failure stops there too."""
    raw = CR_RADIO_V1.read_bytes()
    flat = raw.replace(b"<component>", b"<component>" + b"<x/>" * 100_000, 1)
    [finding] = validator.validate(flat)
    assert (finding.severity, finding.code) == ("blocking", "CDA_TOO_MANY_ELEMENTS")
    broken = raw.replace(b"<component>", b"<component><x/>", 1)
    findings = validator.validate(broken)
    assert any(f.source == "xsd" for f in findings)
    assert not any(f.source == "schematron" for f in findings)
