from __future__ import annotations

import base64
import hashlib

import pytest

from opensegur.content.builder import N1Input, build_n1, check_pdf
from opensegur.content.cda import CdaError, Identifier, parse_cda
from opensegur.content.validation import CdaValidator
from opensegur.content.xds_metadata import document_metadata


def test_non_pdf_is_refused(n1_input: N1Input) -> None:
    for payload in (b"hello", b"%PDF-1.4\nnot really a pdf", b""):
        with pytest.raises(CdaError) as err:
            build_n1(n1_input, payload)
        assert err.value.code == "PDF_INVALID"


def test_pdf_info(pdf: bytes) -> None:
    info = check_pdf(pdf)
    assert info.pages == 1
    assert info.pdfa_part is None  # pypdf's blank page claims no PDF/A conformance


def test_type_code_must_be_in_j07(n1_input: N1Input, pdf: bytes) -> None:
    n1_input.type_code = "99999-9"
    with pytest.raises(CdaError) as err:
        build_n1(n1_input, pdf)
    assert err.value.code == "CODE_UNKNOWN"


def test_built_n1_round_trips_through_the_reader(n1_input: N1Input, pdf: bytes) -> None:
    n1_input.replaces = Identifier("1.2.250.1.999.1.2.3", "DOC0")
    raw = build_n1(n1_input, pdf)
    root, h = parse_cda(raw)
    assert h.level == 1 and h.media_type == "application/pdf"
    text = root.find("{urn:hl7-org:v3}component/{urn:hl7-org:v3}nonXMLBody/{urn:hl7-org:v3}text")
    assert text is not None and base64.b64decode(text.text or "") == pdf
    assert h.patient.ins_matricule == "279035121518989"
    assert h.patient.given_names == ["DOMINIQUE MARIE-LOUISE"] and h.patient.first_given == "DOMINIQUE"
    assert h.replaced_document == Identifier("1.2.250.1.999.1.2.3", "DOC0")
    m = document_metadata(
        h,
        ipp="IPP42",
        ipp_authority_oid="1.2.250.1.999.1",
        size=len(raw),
        hash_sha1=hashlib.sha1(raw).hexdigest(),
    )
    assert m.type_code.code == "34874-8" and m.class_code.code == "10"
    assert m.creation_time == "20240305133000"
    assert m.healthcare_facility_type_code.code == "SA01"


@pytest.mark.slow
def test_built_n1_has_no_finding_at_all(validator: CdaValidator, n1_input: N1Input, pdf: bytes) -> None:
    raw = build_n1(n1_input, pdf)
    assert validator.validate(raw, strict=True) == []
    n1_input.replaces = Identifier("1.2.250.1.999.1.2.3", "DOC0")
    n1_input.version = 2
    assert validator.validate(build_n1(n1_input, pdf), strict=True) == []
