"""The XML-DSig and XAdES vocabulary shared by the platform's three signatures — the VIHF assertion, the DMP
submission set (XAdES, detached manifest) and the ANS's enveloped files (the DRIM-M list) — and the steps each of
them takes by hand: exclusive canonicalisation, a reference's digest elements, the certificates of a KeyInfo."""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from lxml import etree

from opensegur.security.pki import PkiError, load_certificate

__all__ = [
    "C14N_EXC",
    "DS",
    "NS_DS",
    "NS_XADES",
    "RSA_SHA256",
    "SHA256",
    "TYPE_SIGNED_PROPERTIES",
    "XADES",
    "append_digest",
    "exclusive_c14n",
    "keyinfo_certificates",
]

NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_XADES = "http://uri.etsi.org/01903/v1.3.2#"
C14N_EXC = "http://www.w3.org/2001/10/xml-exc-c14n#"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
TYPE_SIGNED_PROPERTIES = "http://uri.etsi.org/01903#SignedProperties"
DS = f"{{{NS_DS}}}"
XADES = f"{{{NS_XADES}}}"


def exclusive_c14n(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n", exclusive=True, with_comments=False)


def append_digest(parent: etree._Element, digest: bytes) -> None:
    """The ``DigestMethod`` (SHA-256) and ``DigestValue`` children of a reference or certificate digest."""
    etree.SubElement(parent, f"{DS}DigestMethod", Algorithm=SHA256)
    etree.SubElement(parent, f"{DS}DigestValue").text = base64.b64encode(digest).decode("ascii")


def keyinfo_certificates(signature: etree._Element) -> list[x509.Certificate]:
    """The certificates of a ``ds:Signature``'s KeyInfo in document order (the signer first), empty when it holds
    none; `PkiError` when one is not base64 DER."""
    certificates = []
    for el in signature.iterfind(f"{DS}KeyInfo/{DS}X509Data/{DS}X509Certificate"):
        try:
            der = base64.b64decode("".join("".join(el.itertext()).split()), validate=True)
        except binascii.Error as exc:
            raise PkiError(f"unreadable certificate: {exc}") from exc
        certificates.append(load_certificate(der))
    return certificates
