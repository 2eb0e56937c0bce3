"""What the sandbox's cheaper ITI-41 path remembers or skips never lets a changed or forged input through.

The certificate-chain cache, the single duplicate query of the registry and the metadata JSON written without
``dataclasses.asdict`` are each checked against what they replaced; forged SigningCertificate blocks and forged
requests after a success are still refused.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from opensegur.documents.metadata import metadata_to_json
from opensegur.security.pki import (
    PkiError,
    TestPki,
    certificate_chain_pem,
    load_certificate,
    load_private_key,
    verify_certificate_chain,
)
from opensegur.transactions import xds
from opensegur.transactions.xades import (
    NS_DS,
    NS_XADES,
    SignedDocument,
    XadesError,
    document_digest,
    sign_submission_set,
    verify_submission_set_signature,
)
from tests.sandbox_dmp.helpers import (
    PAT_TROIS,
    cda,
    iti41,
    metadata,
    new_oid,
    post,
    read,
    registry_result,
    soap,
    soap_fault,
    submission_set,
)

DS = f"{{{NS_DS}}}"
XA = f"{{{NS_XADES}}}"
SS_UID = "1.2.250.1.999.77.1"
_CDA = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><!-- c --><id root="1.2.3"/></ClinicalDocument>'


def _certs(pki: TestPki) -> tuple[x509.Certificate, x509.Certificate]:
    return load_certificate(pki.signing_cert.read_bytes()), load_certificate(pki.ca_cert.read_bytes())


# ------------------------------------------------------------------------------- entity declaration pre-check


def test_documents_declaring_entities_are_still_refused() -> None:
    with pytest.raises(XadesError, match="DTD/entity"):
        document_digest(_CDA.replace(b"<!-- c -->", b"<!-- <!ENTITY x 'y'> -->"), "text/xml")
    many_bangs = _CDA.replace(b"<!-- c -->", b"<!-- ! -->" * 100 + b"<!-- <!ENTITY -->")
    with pytest.raises(XadesError, match="DTD/entity"):
        document_digest(many_bangs, "text/xml")


# ------------------------------------------------------------------------------------- certificate-chain cache


def test_a_verified_chain_does_not_vouch_for_another(pki: TestPki, rogue_pki: TestPki) -> None:
    ca_pem = pki.ca_cert.read_bytes()
    leaf, ca = _certs(pki)
    assert verify_certificate_chain(leaf, ca_pem, [ca])[0] == leaf
    assert verify_certificate_chain(leaf, ca_pem, [ca])[0] == leaf  # served from the cache

    # Same subject and issuer names, another CA key: only the bytes differ.
    rogue_leaf, rogue_ca = _certs(rogue_pki)
    assert (rogue_leaf.subject, rogue_leaf.issuer) == (leaf.subject, leaf.issuer)
    with pytest.raises(PkiError):
        verify_certificate_chain(rogue_leaf, ca_pem, [ca])
    with pytest.raises(PkiError):
        verify_certificate_chain(rogue_leaf, ca_pem, [rogue_ca])

    # The trusted leaf with one byte of its signature changed.
    der = bytearray(leaf.public_bytes(Encoding.DER))
    der[-1] ^= 0x01
    with pytest.raises(PkiError):
        verify_certificate_chain(x509.load_der_x509_certificate(bytes(der)), ca_pem, [ca])

    # The cached chain against another trust store.
    with pytest.raises(PkiError):
        verify_certificate_chain(leaf, rogue_pki.ca_cert.read_bytes(), [ca])
    assert verify_certificate_chain(leaf, ca_pem, [ca])[0] == leaf


def test_a_cached_chain_is_checked_again_outside_its_validity(pki: TestPki) -> None:
    ca_pem = pki.ca_cert.read_bytes()
    leaf, ca = _certs(pki)
    verify_certificate_chain(leaf, ca_pem, [ca])
    for at in (
        leaf.not_valid_after_utc + dt.timedelta(seconds=1),
        leaf.not_valid_before_utc - dt.timedelta(1),
    ):
        with pytest.raises(PkiError, match="does not verify"):
            verify_certificate_chain(leaf, ca_pem, [ca], at=at)
    naive_now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert verify_certificate_chain(leaf, ca_pem, [ca], at=naive_now)[0] == leaf


# ------------------------------------------------------------------------- XAdES SigningCertificate binding


def _docs() -> list[SignedDocument]:
    return [SignedDocument("1.2.250.1.999.77.2", _CDA)]


def _resigned(pki: TestPki, mutate: Callable[[etree._Element], None]) -> bytes:
    """The submission-set signature with ``mutate`` applied, then validly signed again by the trusted key.

    Core XML-DSig validation passes on the result, so only the XAdES SigningCertificate check can refuse it.
    """
    signature = sign_submission_set(
        SS_UID, _docs(), pki.signing_key.read_bytes(), certificate_chain_pem(pki), signature_id="1.2.250.1.9"
    )
    root = etree.fromstring(signature)
    mutate(root)
    signed_info = root.find(f"{DS}SignedInfo")
    assert signed_info is not None
    for ref in signed_info.iterfind(f"{DS}Reference"):
        (target,) = root.xpath("//*[@Id=$id]", id=(ref.get("URI") or "")[1:])
        c14n = etree.tostring(target, method="c14n", exclusive=True, with_comments=False)
        value = ref.find(f"{DS}DigestValue")
        assert value is not None
        value.text = base64.b64encode(hashlib.sha256(c14n).digest()).decode()
    key = load_private_key(pki.signing_key.read_bytes())
    assert isinstance(key, rsa.RSAPrivateKey)
    data = etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False)
    sig_value = root.find(f"{DS}SignatureValue")
    assert sig_value is not None
    sig_value.text = base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()
    return etree.tostring(root)


def _signing_certificate(root: etree._Element) -> etree._Element:
    found = root.find(f".//{XA}SignedSignatureProperties/{XA}SigningCertificate")
    assert found is not None
    return found


def _swap_certs(root: etree._Element) -> None:
    block = _signing_certificate(root)
    first, second = block.findall(f"{XA}Cert")
    block.remove(first)
    block.insert(1, first)
    assert block.index(second) == 0


def _drop_signing_certificate(root: etree._Element) -> None:
    block = _signing_certificate(root)
    parent = block.getparent()
    assert parent is not None
    parent.remove(block)


def _foreign_second_digest(root: etree._Element) -> None:
    value = _signing_certificate(root).findall(f"{XA}Cert/{XA}CertDigest/{DS}DigestValue")[1]
    value.text = base64.b64encode(hashlib.sha256(b"another certificate").digest()).decode()


def _add_v2_block(root: etree._Element) -> None:
    block = _signing_certificate(root)
    parent = block.getparent()
    assert parent is not None
    v2 = etree.fromstring(etree.tostring(block))
    v2.tag = f"{XA}SigningCertificateV2"
    parent.insert(parent.index(block) + 1, v2)


def _unknown_digest_method(root: etree._Element) -> None:
    method = _signing_certificate(root).find(f"{XA}Cert/{XA}CertDigest/{DS}DigestMethod")
    assert method is not None
    method.set("Algorithm", "urn:example:no-such-digest")


def test_re_signing_helper_keeps_a_valid_signature(pki: TestPki) -> None:
    result = verify_submission_set_signature(
        _resigned(pki, lambda _root: None), SS_UID, _docs(), pki.ca_cert.read_bytes()
    )
    assert result.signer == _certs(pki)[0]


@pytest.mark.parametrize(
    "mutate",
    [_swap_certs, _drop_signing_certificate, _add_v2_block, _foreign_second_digest, _unknown_digest_method],
)
def test_signing_certificate_binding_is_enforced(
    pki: TestPki, mutate: Callable[[etree._Element], None]
) -> None:
    ca_pem = pki.ca_cert.read_bytes()
    verify_submission_set_signature(_resigned(pki, lambda _root: None), SS_UID, _docs(), ca_pem)
    with pytest.raises(XadesError):
        verify_submission_set_signature(_resigned(pki, mutate), SS_UID, _docs(), ca_pem)


# -------------------------------------------------------------------------------- through the sandbox app


async def test_after_a_success_forged_requests_are_still_refused(
    client: httpx.AsyncClient, pki: TestPki, rogue_pki: TestPki
) -> None:
    assert registry_result(await post(client, "/dmp/iti41", iti41(pki).request)).ok

    vihf_by_rogue = iti41(pki, vihf_pki=rogue_pki)
    assert soap_fault(await post(client, "/dmp/iti41", vihf_by_rogue.request)).subcode == "VIHF_CERTIFICAT"

    signed_by_rogue = registry_result(await post(client, "/dmp/iti41", iti41(pki, signer=rogue_pki).request))
    assert signed_by_rogue.errors[0].code == "XDSRegistryMetadataError"
    assert "untrusted" in signed_by_rogue.errors[0].context

    uid = new_oid()
    altered = iti41(
        pki, docs=[(metadata(uid), cda(uid))], signed_contents=[cda(uid).replace(b"Lettre", b"Lettrf")]
    )
    result = registry_result(await post(client, "/dmp/iti41", altered.request))
    assert (
        result.errors[0].code == "XDSRegistryMetadataError" and "digest mismatch" in result.errors[0].context
    )

    # Nothing of the refused submissions reached the registry.
    query = soap(xds.ACTION_ITI18, xds.build_get_documents(unique_ids=[uid]), pki, patient=PAT_TROIS)
    found = xds.parse_query_response(read(await post(client, "/dmp/iti18", query))[0])
    assert found.status == "Success" and found.documents == []


# ----------------------------------------------------------------------------- registry writes


async def test_duplicates_in_a_multi_document_submission(client: httpx.AsyncClient, pki: TestPki) -> None:
    first = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", first.request)).ok
    taken_uid = first.documents[0].unique_id

    fresh_uid = new_oid()
    docs = [(metadata(fresh_uid), cda(fresh_uid)), (metadata(taken_uid), cda(taken_uid))]
    result = registry_result(await post(client, "/dmp/iti41", iti41(pki, docs=docs).request))
    assert [e.code for e in result.errors] == ["XDSDuplicateUniqueIdInRegistry"]
    assert taken_uid in result.errors[0].context

    reused_uuid = first.documents[0].entry_uuid
    other_uid = new_oid()
    reusing = metadata(other_uid, entry_uuid=reused_uuid)
    result = registry_result(
        await post(client, "/dmp/iti41", iti41(pki, docs=[(reusing, cda(other_uid))]).request)
    )
    assert [e.code for e in result.errors] == ["XDSRegistryError"]
    assert "entryUUID" in result.errors[0].context

    # The refused submissions left nothing behind: the fresh document can still be submitted alone.
    again = iti41(pki, docs=[(metadata(fresh_uid, entry_uuid=f"urn:uuid:{uuid.uuid4()}"), cda(fresh_uid))])
    assert registry_result(await post(client, "/dmp/iti41", again.request)).ok


def test_metadata_json_is_that_of_dataclasses_asdict() -> None:
    m = metadata(new_oid(), comments="« accentué »", event_codes=[], reference_ids=["1^^^&1.2&ISO"])
    assert metadata_to_json(m) == json.dumps(dataclasses.asdict(m), ensure_ascii=False)
    ss = submission_set()
    assert metadata_to_json(ss) == json.dumps(dataclasses.asdict(ss), ensure_ascii=False)
