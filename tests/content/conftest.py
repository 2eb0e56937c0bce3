"""Fixtures of the CI-SIS content tests: ANS example documents and one validator shared by the session."""

from __future__ import annotations

import io
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pypdf import PdfWriter

from opensegur.content import validation
from opensegur.content.builder import N1Encounter, N1Input, N1Organization, N1Patient, N1Professional
from opensegur.content.cda import Identifier
from opensegur.content.validation import STRUCTURATION_MINIMALE, CdaValidator
from opensegur.identity.ins import Ins

SHARED = Path(os.environ.get("OPENSEGUR_SHARED", Path(__file__).resolve().parents[3] / "shared"))
HL7_EXAMPLES = SHARED / "hl7v2-examples" / "Vague 2"
TRANS_DOC = HL7_EXAMPLES / "Trans_Doc-CDA-HL7V2" / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
CR_RADIO_V1 = TRANS_DOC / "MDM" / "Transmission initiale MDM" / "CR_Radio_CDAN1_v1.XML"
CR_BIO_2023 = TRANS_DOC / "ORU" / "Transmission initiale ORU" / "SEGUR_CR-BIO_2023.01_Electrophorese.xml"
ANS_EXAMPLES = SHARED / "cisis" / "ExemplesCDA"
# The ANS volet examples of the documents a hospital sends to the DMP (plus the generic N1).
ANS_SAMPLE = [
    "LDL-SES_2022.01.xml",
    "IMG_CR_IMG_2024.01.xml",
    "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml",
    "BIO-CR-BIO_2024.01_TSH_1.xml",
    "VAC-NOTE_2023.01.xml",
    "DOC_NON_STRUCTURE_CDA-R2-N1.xml",
]


def hl7_example_cdas() -> list[Path]:
    """Every CDA of the HL7 v2 example folders (Trans_Doc-CDA-HL7V2 and RIS)."""
    folders = (HL7_EXAMPLES / "Trans_Doc-CDA-HL7V2", HL7_EXAMPLES / "RIS")
    return sorted(p for folder in folders for p in folder.rglob("*") if p.suffix.lower() == ".xml")


def compile_structuration_minimale(xslt: str) -> Any:
    """An XSLT generated from structuration minimale, rewritten by a test, compiled as the validator compiles it."""
    return (
        validation._processor()
        .new_xslt30_processor()
        .compile_stylesheet(
            stylesheet_text=validation._with_base(xslt, STRUCTURATION_MINIMALE), encoding="utf-8"
        )
    )


def assert_same_reports(first: Any, second: Any) -> None:
    """Two compilations of structuration minimale give the same SVRL, byte for byte, on three ANS documents."""
    for path in (CR_RADIO_V1, CR_BIO_2023, ANS_EXAMPLES / "LDL-SES_2022.01.xml"):
        text = validation._serialise_for_rules(etree.fromstring(path.read_bytes()))
        node = validation._processor().parse_xml(xml_text=text, encoding="utf-8")
        reports = [str(exe.transform_to_string(xdm_node=node)) for exe in (first, second)]
        assert reports[0] == reports[1], path.name
        assert "fired-rule" in reports[0]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: compiles the CI-SIS schematrons (~15 s once per session)")


@pytest.fixture(scope="session")
def validator(tmp_path_factory: pytest.TempPathFactory) -> CdaValidator:
    return CdaValidator(tmp_path_factory.mktemp("cisis-xslt-cache"))


def make_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def pdf() -> bytes:
    return make_pdf()


@pytest.fixture
def n1_input() -> N1Input:
    return N1Input(
        document_id=Identifier("1.2.250.1.999.1.2.3", "DOC1"),
        set_id=Identifier("1.2.250.1.999.1.2.4", "SET1"),
        version=1,
        type_code="34874-8",
        title="Compte rendu opératoire",
        effective_time=datetime(2024, 3, 5, 14, 30),
        patient=N1Patient(
            Ins.parse("279035121518989", "1.2.250.1.213.1.4.10"),
            "PAT-TROIS",
            ["DOMINIQUE", "MARIE-LOUISE"],
            "19790328",
            "F",
            "63220",
            ipp="IPP42",
            ipp_authority_oid="1.2.250.1.999.1",
            used_family="MARTIN",
        ),
        author=N1Professional("810001234567", "DUPONT", "Jean", "G15_10/SM26"),
        author_time=datetime(2024, 3, 5, 14, 0),
        organization=N1Organization("1750000001", "CH de Test"),
        encounter=N1Encounter(
            datetime(2024, 3, 4, 8, 0), "SA01", stay_id=Identifier("1.2.250.1.999.2", "SEJ1")
        ),
        service_start=datetime(2024, 3, 5, 9, 0),
        service_stop=datetime(2024, 3, 5, 11, 0),
        practice_setting="ETABLISSEMENT",
    )
