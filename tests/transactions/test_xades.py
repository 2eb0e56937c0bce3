from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from lxml import etree
from signxml.xades import XAdESSignatureConfiguration, XAdESVerifier

from opensegur.security.pki import TestPki, certificate_chain_pem, ensure_test_pki, load_certificate
from opensegur.transactions.xades import (
    MANIFEST_ID,
    NS_DS,
    NS_XADES,
    SignedDocument,
    XadesError,
    document_digest,
    sign_submission_set,
    verify_submission_set_signature,
)

CDA = (
    b'<?xml version="1.0"?>\n<?xml-stylesheet href="cda.xsl"?>\n'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><!-- c --><id root="1.2.3"/></ClinicalDocument>'
)
PDF = b"%PDF-1.4 binary \x00\x01"
SS_UID = "1.2.250.1.999.1.1.20260101"
DS = f"{{{NS_DS}}}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(Path(tmp_path_factory.mktemp("pki")))


def _docs() -> list[SignedDocument]:
    return [
        SignedDocument("1.2.250.1.999.2.1", CDA),
        SignedDocument("1.2.250.1.999.2.2", PDF, "application/pdf"),
    ]


def _sign(pki: TestPki, docs: list[SignedDocument] | None = None) -> bytes:
    return sign_submission_set(
        SS_UID,
        docs or _docs(),
        pki.signing_key.read_bytes(),
        certificate_chain_pem(pki),
        signature_id="1.2.250.1.999.3.1",
        signing_time=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )


def test_structure(pki: TestPki) -> None:
    sig = etree.fromstring(_sign(pki))
    assert sig.get("Id") == "1.2.250.1.999.3.1"
    refs = sig.findall(f"{DS}SignedInfo/{DS}Reference")
    assert [r.get("URI") for r in refs][0] == f"#{MANIFEST_ID}"
    assert refs[0].get("Type") == "http://www.w3.org/2000/09/xmldsig#Manifest"
    assert refs[2].get("Type") == "http://uri.etsi.org/01903#SignedProperties"
    manifest = sig.find(f"{DS}Object/{DS}Manifest")
    assert manifest is not None
    assert [r.get("URI") for r in manifest] == [
        "urn:oid:1.2.250.1.999.2.1",
        "urn:oid:1.2.250.1.999.2.2",
        f"urn:oid:{SS_UID}",
    ]
    # XML documents are canonicalised with comments, binary ones digested raw.
    assert manifest[0].find(f"{DS}Transforms/{DS}Transform").get("Algorithm").endswith("#WithComments")
    assert manifest[1].find(f"{DS}Transforms") is None
    x = f"{{{NS_XADES}}}"
    ssp = sig.find(f".//{x}SignedSignatureProperties")
    assert ssp is not None
    assert ssp.findtext(f"{x}SigningTime") == "2026-01-02T03:04:05Z"
    assert len(ssp.findall(f"{x}SigningCertificate/{x}Cert")) == 2  # whole chain
    assert ssp.find(f"{x}SignaturePolicyIdentifier/{x}SignaturePolicyImplied") is not None
    assert sig.findtext(f".//{DS}SignatureProperty[@Id='purposeOfSignature']") == "1.2.840.10065.1.12.1.14"


def test_verifies_with_signxml_directly(pki: TestPki) -> None:
    results = XAdESVerifier().verify(
        _sign(pki),
        x509_cert=load_certificate(pki.signing_cert.read_bytes()),
        expect_config=XAdESSignatureConfiguration(location="./", expect_references=3),
        validate_schema=False,
    )
    assert {r.signed_xml.tag for r in results if r.signed_xml is not None} >= {f"{DS}Manifest"}


def test_round_trip(pki: TestPki) -> None:
    result = verify_submission_set_signature(_sign(pki), SS_UID, _docs(), pki.ca_cert.read_bytes())
    assert result.signature_id == "1.2.250.1.999.3.1"
    assert result.signing_time == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert result.references[-1] == f"urn:oid:{SS_UID}"


def test_digest_ignores_serialisation_but_not_content() -> None:
    reformatted = CDA.replace(b'<id root="1.2.3"/>', b"<id root='1.2.3'></id>")
    assert document_digest(reformatted, "text/xml") == document_digest(CDA, "text/xml")
    assert document_digest(CDA.replace(b"<!-- c -->", b"<!-- d -->"), "text/xml") != document_digest(
        CDA, "text/xml"
    )


@pytest.mark.parametrize("index", [0, 1])
def test_a_changed_document_byte_fails(pki: TestPki, index: int) -> None:
    docs = _docs()
    content = bytearray(docs[index].content)
    content[-5] ^= 0x01
    docs[index] = SignedDocument(docs[index].unique_id, bytes(content), docs[index].mime_type)
    with pytest.raises(XadesError, match="mismatch|well-formed"):
        verify_submission_set_signature(_sign(pki), SS_UID, docs, pki.ca_cert.read_bytes())


def test_wrong_submission_set_missing_or_extra_document(pki: TestPki) -> None:
    sig = _sign(pki)
    ca = pki.ca_cert.read_bytes()
    with pytest.raises(XadesError, match="unexpected"):
        verify_submission_set_signature(sig, "1.2.3.other", _docs(), ca)
    with pytest.raises(XadesError, match="unexpected"):
        verify_submission_set_signature(sig, SS_UID, _docs()[:1], ca)
    with pytest.raises(XadesError, match="does not reference"):
        verify_submission_set_signature(
            sig, SS_UID, [*_docs(), SignedDocument("9.9", b"x", "text/plain")], ca
        )


def test_tampered_manifest_or_properties_fail_core_validation(pki: TestPki) -> None:
    ca = pki.ca_cert.read_bytes()
    sig = _sign(pki)
    tampered = sig.replace(b"2026-01-02T03:04:05Z", b"2026-01-02T03:04:06Z")
    with pytest.raises(XadesError, match="verification failed"):
        verify_submission_set_signature(tampered, SS_UID, _docs(), ca)
    root = etree.fromstring(sig)
    dv = root.find(f"{DS}Object/{DS}Manifest/{DS}Reference/{DS}DigestValue")
    assert dv is not None
    dv.text = "AAAA" + (dv.text or "")[4:]
    with pytest.raises(XadesError, match="verification failed"):
        verify_submission_set_signature(etree.tostring(root), SS_UID, _docs(), ca)


def test_untrusted_ca_and_dtd(pki: TestPki, tmp_path: Path) -> None:
    other = ensure_test_pki(tmp_path)
    with pytest.raises(XadesError, match="untrusted"):
        verify_submission_set_signature(_sign(pki), SS_UID, _docs(), other.ca_cert.read_bytes())
    with pytest.raises(XadesError, match="DTD"):
        verify_submission_set_signature(b"<!DOCTYPE x []><x/>", SS_UID, _docs(), pki.ca_cert.read_bytes())
