"""The directory of trusted DRIMboxes — the ANS « liste blanche » — as the consumer checks it before asking any
other DRIMbox for images: a signed XML file, one ``Domaine`` per DRIMbox.

The elements are those the ANS describes for its test list (DRIM-M_DATA, « Liste blanche TEST »): ``Identifiant``,
``db`` (the DRIMbox's address), ``Denomination``, ``DNCertificatOperateur``, ``SupportContact``, ``DateMAJ``.
⚠ The signature's exact form is not published beside it: this reads an enveloped XML-DSig (RSA-SHA256 or -SHA512,
the usual form of a signed ANS XML file) and checks it against the signer's certificate the hospital configures
— the ANS's. A list that is unsigned, signed by another key, altered after signing, or that declares a DOCTYPE
is refused whole: a consumer then asks no DRIMbox at all rather than any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from lxml import etree
from signxml import SignatureConfiguration, XMLSigner, XMLVerifier
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidInput, InvalidSignature

from opensegur.security.pki import PkiError, load_certificate, load_private_key

__all__ = [
    "DirectoryError",
    "DrimboxDirectory",
    "TrustedDrimbox",
    "file_loader",
    "read_directory",
    "sign_directory",
]

NS_DS = "http://www.w3.org/2000/09/xmldsig#"
MAX_BYTES = 5 * 1024 * 1024  # the national list is a few hundred entries


class DirectoryError(Exception):
    """The list cannot be trusted: the French reason."""


@dataclass(frozen=True)
class TrustedDrimbox:
    identifier: str
    address: str  # ``db``: the DRIMbox's address, a URL or host[:port]
    denomination: str = ""
    certificate_dn: str = ""
    support_contact: str = ""
    updated: str = ""  # DateMAJ, as written

    @property
    def host_port(self) -> tuple[str, int]:
        return _host_port(self.address if "//" in self.address else f"https://{self.address}")


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (80 if parts.scheme == "http" else 443)


@dataclass(frozen=True)
class DrimboxDirectory:
    entries: tuple[TrustedDrimbox, ...]

    def trusted(self, url: str) -> TrustedDrimbox | None:
        """The listed DRIMbox at ``url``'s host and port, else None."""
        wanted = _host_port(url)
        return next((e for e in self.entries if e.host_port == wanted), None)


_FIELDS = {
    "Identifiant": "identifier",
    "db": "address",
    "Denomination": "denomination",
    "DNCertificatOperateur": "certificate_dn",
    "SupportContact": "support_contact",
    "DateMAJ": "updated",
}


def _parse(data: bytes) -> etree._Element:
    if len(data) > MAX_BYTES:
        raise DirectoryError(f"Liste blanche de plus de {MAX_BYTES // (1024 * 1024)} Mo refusée")
    if b"<!DOCTYPE" in data[:4096].upper():
        raise DirectoryError("Liste blanche refusée : elle déclare un DOCTYPE (entités interdites)")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise DirectoryError(f"Liste blanche illisible : {exc}") from exc


def read_directory(data: bytes, signer_cert_pem: bytes) -> DrimboxDirectory:
    """The DRIMboxes of the signed list ``data``, once its signature is checked against ``signer_cert_pem``.
    Raises DirectoryError."""
    root = _parse(data)
    if root.find(f"{{{NS_DS}}}Signature") is None:
        raise DirectoryError("Liste blanche non signée : refusée")
    try:
        signer = load_certificate(signer_cert_pem)
    except PkiError as exc:
        raise DirectoryError(f"Certificat du signataire de la liste blanche illisible : {exc}") from exc
    config = SignatureConfiguration(
        signature_methods=frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA512}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA512}),
    )
    try:
        result = XMLVerifier().verify(root, x509_cert=signer, expect_config=config, validate_schema=False)
    except (InvalidSignature, InvalidInput) as exc:
        raise DirectoryError(f"Signature de la liste blanche invalide : {exc}") from exc
    assert not isinstance(result, list)
    signed = result.signed_xml  # only what the signature covers is read
    if signed is None:
        raise DirectoryError("La signature ne couvre pas la liste blanche")
    entries = []
    for domain in signed.iter("{*}Domaine"):
        values = {attr: (domain.findtext(f"{{*}}{tag}") or "").strip() for tag, attr in _FIELDS.items()}
        if not values["identifier"] or not values["address"]:
            raise DirectoryError("Liste blanche : un domaine sans Identifiant ou sans adresse (db)")
        entries.append(TrustedDrimbox(**values))
    return DrimboxDirectory(tuple(entries))


def file_loader(file: Path | None, signer: Path | None) -> Callable[[], DrimboxDirectory]:
    """Reads the list from ``file`` each time it is called, so that the ANS's updates apply without a restart."""

    def load() -> DrimboxDirectory:
        if file is None or signer is None:
            raise DirectoryError(
                "Aucune liste blanche des DRIMbox n'est configurée (drimbox_directory_file, drimbox_directory_signer)"
            )
        try:
            return read_directory(file.read_bytes(), signer.read_bytes())
        except OSError as exc:
            raise DirectoryError(f"Liste blanche des DRIMbox illisible : {exc}") from exc

    return load


def sign_directory(entries: list[TrustedDrimbox], key_pem: bytes, cert_pem: bytes) -> bytes:
    """A signed list of ``entries``, as the sandbox publishes its own (and the tests theirs)."""
    root = etree.Element("ListeBlanche", {"DateGeneration": date.today().isoformat()})
    for entry in entries:
        domain = etree.SubElement(root, "Domaine")
        for tag, attr in _FIELDS.items():
            etree.SubElement(domain, tag).text = getattr(entry, attr)
    key = load_private_key(key_pem)
    assert isinstance(key, RSAPrivateKey)
    signed = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256, digest_algorithm=DigestAlgorithm.SHA256
    ).sign(root, key=key, cert=[cert_pem.decode()])
    return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")
