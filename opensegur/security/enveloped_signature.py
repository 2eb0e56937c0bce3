"""A whole XML document signed by an enveloped XAdES-BASELINE-B signature, the form the ANS signs its files with
(the DRIM-M « liste blanche »): one ``ds:Signature``, last child of the root, with a reference to the document
(``URI=""``) and one to its ``xades:SignedProperties``.

Written by hand (lxml c14n + cryptography) because signxml implements neither the XPath Filter 2.0 transform the
ANS uses to leave the signature out of the document (``Filter="subtract"``, ``/descendant::ds:Signature``) nor
XAdES ``SigningCertificateV2``. Only that shape is accepted: no other reference, no other transform, exclusive
canonicalisation, SHA-256 or SHA-512. What the caller reads is the tree that was digested, never the input.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from opensegur.errors import OpenSegurError
from opensegur.security.pki import (
    PkiError,
    common_name_of,
    load_certificate,
    load_private_key,
    verify_certificate_chain,
)
from opensegur.security.xmldsig import (
    C14N_EXC,
    DS,
    NS_DS,
    NS_XADES,
    RSA_SHA256,
    SHA256,
    TYPE_SIGNED_PROPERTIES,
    XADES,
    append_digest,
    exclusive_c14n,
    keyinfo_certificates,
)

__all__ = ["EnvelopedSignatureError", "SignedDocument", "sign_enveloped", "verify_enveloped"]

NS_FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_SUBTRACT_SIGNATURES = "/descendant::ds:Signature"
_DIGESTS: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    SHA256: ("sha256", hashes.SHA256()),
    "http://www.w3.org/2001/04/xmlenc#sha512": ("sha512", hashes.SHA512()),
}
_SIGNATURE_METHODS: dict[str, hashes.HashAlgorithm] = {
    RSA_SHA256: hashes.SHA256(),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": hashes.SHA512(),
}


class EnvelopedSignatureError(OpenSegurError):
    """The document is unsigned, not signed in the accepted shape, altered, or signed by an untrusted certificate."""


@dataclass(frozen=True)
class SignedDocument:
    root: etree._Element  # the document as signed, without its signature
    signer: x509.Certificate
    signing_time: dt.datetime | None


def _without_signature(root: etree._Element) -> etree._Element:
    """The document minus its ds:Signature — what both the enveloped transform and the ANS's subtract filter
    select when the document holds one signature."""
    copy = deepcopy(root)
    sig = copy.find(f"{DS}Signature")
    assert sig is not None
    previous = sig.getprevious()
    if sig.tail:  # lxml drops the tail with the element: the text after the signature is not part of it
        if previous is not None:
            previous.tail = (previous.tail or "") + sig.tail
        else:
            copy.text = (copy.text or "") + sig.tail
    copy.remove(sig)
    return copy


def _digest(method: etree._Element | None, data: bytes) -> bytes:
    algorithm = _DIGESTS.get(method.get("Algorithm", "") if method is not None else "")
    if algorithm is None:
        raise EnvelopedSignatureError("Algorithme d'empreinte refusé (SHA-256 ou SHA-512 attendu)")
    return hashlib.new(algorithm[0], data).digest()


def _claimed(ref: etree._Element) -> bytes:
    try:
        return base64.b64decode(ref.findtext(f"{DS}DigestValue") or "", validate=True)
    except ValueError as exc:
        raise EnvelopedSignatureError("Empreinte illisible dans la signature") from exc


def _document_transforms_ok(ref: etree._Element) -> bool:
    transforms = ref.findall(f"{DS}Transforms/{DS}Transform")
    if len(transforms) != 2 or transforms[1].get("Algorithm") != C14N_EXC:
        return False
    first = transforms[0]
    if first.get("Algorithm") == ENVELOPED:
        return len(first) == 0
    xpath = first.findall(f"{{{NS_FILTER2}}}XPath")
    return (
        first.get("Algorithm") == NS_FILTER2
        and len(first) == 1
        and len(xpath) == 1
        and xpath[0].get("Filter") == "subtract"
        and (xpath[0].text or "").strip() == _SUBTRACT_SIGNATURES
        and xpath[0].nsmap.get("ds") == NS_DS
    )


def _signed_properties(sig: etree._Element, uri: str) -> etree._Element:
    wanted = uri.removeprefix("#")
    found = [
        sp
        for sp in sig.iterfind(f"{DS}Object/{XADES}QualifyingProperties/{XADES}SignedProperties")
        if sp.get("Id") == wanted
    ]
    if len(found) != 1:
        raise EnvelopedSignatureError(
            "La référence aux propriétés signées (XAdES) ne désigne rien de la signature"
        )
    return found[0]


def _certificates(sig: etree._Element) -> list[x509.Certificate]:
    try:
        certificates = keyinfo_certificates(sig)
    except PkiError as exc:
        raise EnvelopedSignatureError(f"Certificat de la signature illisible : {exc}") from exc
    if not certificates:
        raise EnvelopedSignatureError("Signature sans certificat (KeyInfo/X509Certificate)")
    return certificates


def _check_signing_certificate(properties: etree._Element, signer: x509.Certificate) -> dt.datetime | None:
    """XAdES binds the signer's certificate into what is signed: its digest must be the certificate's."""
    ssp = properties.find(f"{XADES}SignedSignatureProperties")
    cert_digests = (
        [] if ssp is None else ssp.findall(f"{XADES}SigningCertificateV2/{XADES}Cert/{XADES}CertDigest")
    )
    cert_digests += (
        [] if ssp is None else ssp.findall(f"{XADES}SigningCertificate/{XADES}Cert/{XADES}CertDigest")
    )
    der = signer.public_bytes(Encoding.DER)
    if not any(_digest(d.find(f"{DS}DigestMethod"), der) == _claimed(d) for d in cert_digests):
        raise EnvelopedSignatureError(
            "Le certificat signataire n'est pas celui que désignent les propriétés signées"
        )
    text = ssp.findtext(f"{XADES}SigningTime") if ssp is not None else None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError as exc:
        raise EnvelopedSignatureError("Date de signature (SigningTime) illisible") from exc


def verify_enveloped(
    root: etree._Element, trusted_ca_pem: bytes, signer_cn: str, *, at: dt.datetime | None = None
) -> SignedDocument:
    """The document ``root``, once its signature is checked: shape, digests, signature value, and a signer named
    ``signer_cn`` whose certificate chains to ``trusted_ca_pem`` at ``at``. Raises EnvelopedSignatureError."""
    signatures = list(root.iter(f"{DS}Signature"))
    if not signatures:
        raise EnvelopedSignatureError("Document non signé")
    sig = signatures[0]
    if len(signatures) != 1 or sig.getparent() is not root:
        raise EnvelopedSignatureError("Une seule signature est admise, enveloppée à la racine du document")
    signed_info = sig.find(f"{DS}SignedInfo")
    if signed_info is None:
        raise EnvelopedSignatureError("Signature sans SignedInfo")
    method = signed_info.find(f"{DS}CanonicalizationMethod")
    if method is None or method.get("Algorithm") != C14N_EXC or len(method):
        raise EnvelopedSignatureError("Canonicalisation refusée (C14N exclusive attendue)")
    sig_method = signed_info.find(f"{DS}SignatureMethod")
    sig_hash = _SIGNATURE_METHODS.get(sig_method.get("Algorithm", "") if sig_method is not None else "")
    if sig_hash is None:
        raise EnvelopedSignatureError("Algorithme de signature refusé (RSA-SHA256 ou RSA-SHA512 attendu)")

    certificates = _certificates(sig)
    signer = certificates[0]
    document: etree._Element | None = None
    properties: etree._Element | None = None
    for ref in signed_info.findall(f"{DS}Reference"):
        uri = ref.get("URI")
        if uri == "" and document is None and _document_transforms_ok(ref):
            target = document = _without_signature(root)
        elif uri and uri.startswith("#") and ref.get("Type") == TYPE_SIGNED_PROPERTIES and properties is None:
            target = properties = _signed_properties(sig, uri)
            transforms = ref.findall(f"{DS}Transforms/{DS}Transform")
            if [t.get("Algorithm") for t in transforms] not in ([], [C14N_EXC]):
                raise EnvelopedSignatureError("Transformation refusée sur les propriétés signées")
        else:
            raise EnvelopedSignatureError(f"Référence de signature refusée : URI={uri!r}")
        if _digest(ref.find(f"{DS}DigestMethod"), exclusive_c14n(target)) != _claimed(ref):
            raise EnvelopedSignatureError("Document modifié après sa signature (empreinte différente)")
    if document is None:
        raise EnvelopedSignatureError("La signature ne couvre pas le document entier")
    if properties is None:
        raise EnvelopedSignatureError("Signature sans propriétés signées XAdES (SigningCertificateV2)")
    signing_time = _check_signing_certificate(properties, signer)

    public_key = signer.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise EnvelopedSignatureError("Clé du signataire non RSA")
    try:
        value = base64.b64decode("".join((sig.findtext(f"{DS}SignatureValue") or "").split()), validate=True)
        public_key.verify(value, exclusive_c14n(signed_info), padding.PKCS1v15(), sig_hash)
    except (InvalidSignature, ValueError) as exc:
        raise EnvelopedSignatureError("Valeur de signature invalide") from exc

    if common_name_of(signer) != signer_cn:
        raise EnvelopedSignatureError(
            f"Signataire inattendu : {common_name_of(signer) or '(sans CN)'} au lieu de {signer_cn}"
        )
    try:
        verify_certificate_chain(signer, trusted_ca_pem, certificates[1:], at=at)
    except PkiError as exc:
        raise EnvelopedSignatureError(f"Certificat du signataire non reconnu : {exc}") from exc
    return SignedDocument(document, signer, signing_time)


def sign_enveloped(
    root: etree._Element, key_pem: bytes, cert_pems: Sequence[bytes], *, signature_id: str
) -> etree._Element:
    """Signs ``root`` in place the way the ANS signs its list (the sandbox and the tests sign theirs so).
    ``cert_pems``: the signer's certificate first, then its chain."""
    key = load_private_key(key_pem)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("an RSA key is needed")
    certs = [load_certificate(pem) for pem in cert_pems]
    sig = etree.SubElement(root, f"{DS}Signature", nsmap={"ds": NS_DS}, Id=signature_id)
    signed_info = etree.SubElement(sig, f"{DS}SignedInfo")
    etree.SubElement(signed_info, f"{DS}CanonicalizationMethod", Algorithm=C14N_EXC)
    etree.SubElement(signed_info, f"{DS}SignatureMethod", Algorithm=RSA_SHA256)
    value = etree.SubElement(sig, f"{DS}SignatureValue")
    x509_data = etree.SubElement(etree.SubElement(sig, f"{DS}KeyInfo"), f"{DS}X509Data")
    for cert in certs:
        etree.SubElement(x509_data, f"{DS}X509Certificate").text = base64.b64encode(
            cert.public_bytes(Encoding.DER)
        ).decode()
    qualifying = etree.SubElement(
        etree.SubElement(sig, f"{DS}Object"),
        f"{XADES}QualifyingProperties",
        nsmap={"xades": NS_XADES},
        Target=f"#{signature_id}",
    )
    properties = etree.SubElement(qualifying, f"{XADES}SignedProperties", Id=f"xades-{signature_id}")
    ssp = etree.SubElement(properties, f"{XADES}SignedSignatureProperties")
    etree.SubElement(ssp, f"{XADES}SigningTime").text = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cert_digest = etree.SubElement(
        etree.SubElement(etree.SubElement(ssp, f"{XADES}SigningCertificateV2"), f"{XADES}Cert"),
        f"{XADES}CertDigest",
    )
    append_digest(cert_digest, hashlib.sha256(certs[0].public_bytes(Encoding.DER)).digest())

    document_ref = etree.SubElement(signed_info, f"{DS}Reference", URI="")
    transforms = etree.SubElement(document_ref, f"{DS}Transforms")
    subtract = etree.SubElement(transforms, f"{DS}Transform", Algorithm=NS_FILTER2)
    xpath = etree.SubElement(
        subtract, f"{{{NS_FILTER2}}}XPath", nsmap={"dsig-filter2": NS_FILTER2}, Filter="subtract"
    )
    xpath.text = _SUBTRACT_SIGNATURES
    etree.SubElement(transforms, f"{DS}Transform", Algorithm=C14N_EXC)
    append_digest(document_ref, hashlib.sha256(exclusive_c14n(_without_signature(root))).digest())
    properties_ref = etree.SubElement(
        signed_info, f"{DS}Reference", Type=TYPE_SIGNED_PROPERTIES, URI=f"#xades-{signature_id}"
    )
    etree.SubElement(
        etree.SubElement(properties_ref, f"{DS}Transforms"), f"{DS}Transform", Algorithm=C14N_EXC
    )
    append_digest(properties_ref, hashlib.sha256(exclusive_c14n(properties)).digest())
    value.text = base64.b64encode(
        key.sign(exclusive_c14n(signed_info), padding.PKCS1v15(), hashes.SHA256())
    ).decode()
    return root
