"""The directory of trusted DRIMboxes — the ANS « liste blanche » — as the consumer checks it before asking any
other DRIMbox for images: a signed XML file, one ``Domaine`` per DRIMbox.

The format is the ANS's test list (DRIM-M_DATA, « Liste blanche TEST »): ``ListeBlancheDRIM-M`` in the namespace
``https://github.com/ansforge/DRIM-M_DATA``, ``versionFormat`` 1.x, ``DateDeGeneration``, then per ``Domaine``:
``Identifiant``, ``db`` (the DRIMbox's host), ``vi`` (its viewer's host), ``Denomination``,
``DNCertificatOperateur``, ``SupportContact``, ``DateMAJ``. It is signed in XAdES-BASELINE-B, enveloped
(``security.enveloped_signature``), by a certificate named « Liste Blanche DRIM-M » of the IGC-Santé. A list that
is unsigned, signed by anyone else, altered after signing, or that declares a DOCTYPE is refused whole: a
consumer then asks no DRIMbox at all rather than any.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

from opensegur.errors import OpenSegurError
from opensegur.security.enveloped_signature import EnvelopedSignatureError, sign_enveloped, verify_enveloped

__all__ = [
    "ANS_SIGNER_CN",
    "DirectoryError",
    "DirectoryTrust",
    "DrimboxDirectory",
    "TrustedDrimbox",
    "file_loader",
    "read_directory",
    "same_name",
    "sign_directory",
]

NS_LIST = "https://github.com/ansforge/DRIM-M_DATA"
ANS_SIGNER_CN = "Liste Blanche DRIM-M"
MAX_BYTES = 5 * 1024 * 1024  # the national list is a few hundred entries


class DirectoryError(OpenSegurError):
    """The list cannot be trusted: the French reason."""


@dataclass(frozen=True)
class TrustedDrimbox:
    identifier: str
    address: str  # ``db``: the DRIMbox's address, a URL or host[:port]
    denomination: str = ""
    certificate_dn: str = ""
    support_contact: str = ""
    updated: str = ""  # DateMAJ, as written
    viewer: str = ""  # ``vi``: the host of the DRIMbox's viewer

    @property
    def host_port(self) -> tuple[str, int]:
        return _host_port(self.address if "//" in self.address else f"https://{self.address}")

    def operates(self, certificate_name: str) -> bool:
        """Whether a certificate whose subject is ``certificate_name`` (RFC 4514) is this DRIMbox's operator
        certificate, as the list names it (``DNCertificatOperateur``)."""
        return bool(self.certificate_dn) and same_name(self.certificate_dn, certificate_name)


def same_name(a: str, b: str) -> bool:
    """Whether two distinguished names, written as the list writes them or as RFC 4514, name the same subject."""
    return _dn(a) == _dn(b)


def _dn(text: str) -> frozenset[tuple[str, str]]:
    """A distinguished name as a set of (attribute, value): the list writes it CN first, a certificate's subject
    may come in any order, and values compare without case or surrounding spaces."""
    pairs = []
    for rdn in re.split(r"(?<!\\)[,+]", text):
        name, sep, value = rdn.partition("=")
        if sep:
            pairs.append((name.strip().upper(), re.sub(r"\\(.)", r"\1", value).strip().casefold()))
    return frozenset(pairs)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (80 if parts.scheme == "http" else 443)


@dataclass(frozen=True)
class DrimboxDirectory:
    entries: tuple[TrustedDrimbox, ...]
    generated: str = ""  # DateDeGeneration, as written

    def trusted(self, url: str) -> TrustedDrimbox | None:
        """The listed DRIMbox at ``url``'s host and port, else None."""
        wanted = _host_port(url)
        return next((e for e in self.entries if e.host_port == wanted), None)

    def operated_by(self, certificate_name: str) -> TrustedDrimbox | None:
        """The listed DRIMbox whose operator certificate has the subject ``certificate_name``, else None."""
        return next((e for e in self.entries if e.operates(certificate_name)), None)


_FIELDS = {
    "Identifiant": "identifier",
    "db": "address",
    "vi": "viewer",
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


@dataclass(frozen=True)
class DirectoryTrust:
    """Who may sign the list: a certificate named ``signer_cn`` chaining to one of ``ca_pem``'s (the IGC-Santé)."""

    ca_pem: bytes
    signer_cn: str = ANS_SIGNER_CN


def read_directory(data: bytes, trust: DirectoryTrust, *, at: dt.datetime | None = None) -> DrimboxDirectory:
    """The DRIMboxes of the signed list ``data``, once its signature is checked. Raises DirectoryError."""
    root = _parse(data)
    if root.tag != f"{{{NS_LIST}}}ListeBlancheDRIM-M":
        raise DirectoryError(
            f"Ce fichier n'est pas une liste blanche DRIM-M de l'ANS (racine {etree.QName(root).localname})"
        )
    if not root.get("versionFormat", "").startswith("1."):
        raise DirectoryError(f"Liste blanche au format {root.get('versionFormat')!r} : format 1.x attendu")
    try:
        signed = verify_enveloped(root, trust.ca_pem, trust.signer_cn, at=at).root
    except EnvelopedSignatureError as exc:
        raise DirectoryError(f"Liste blanche refusée : {exc}") from exc
    entries = []
    for domain in signed.iterfind(f"{{{NS_LIST}}}ListeDomaines/{{{NS_LIST}}}Domaine"):
        values = {
            attr: (domain.findtext(f"{{{NS_LIST}}}{tag}") or "").strip() for tag, attr in _FIELDS.items()
        }
        if not values["identifier"] or not values["address"]:
            raise DirectoryError("Liste blanche : un domaine sans Identifiant ou sans adresse (db)")
        entries.append(TrustedDrimbox(**values))
    return DrimboxDirectory(tuple(entries), (signed.findtext(f"{{{NS_LIST}}}DateDeGeneration") or "").strip())


def file_loader(
    file: Path | None, ca_file: Path | None, signer_cn: str = ANS_SIGNER_CN
) -> Callable[[], DrimboxDirectory]:
    """Reads the list from ``file`` each time it is called, so that the ANS's updates apply without a restart."""

    def load() -> DrimboxDirectory:
        if file is None or ca_file is None:
            raise DirectoryError(
                "Aucune liste blanche des DRIMbox n'est configurée (drimbox_directory_file, drimbox_directory_ca)"
            )
        try:
            return read_directory(file.read_bytes(), DirectoryTrust(ca_file.read_bytes(), signer_cn))
        except OSError as exc:
            raise DirectoryError(f"Liste blanche des DRIMbox illisible : {exc}") from exc

    return load


def sign_directory(entries: Sequence[TrustedDrimbox], key_pem: bytes, cert_pems: Sequence[bytes]) -> bytes:
    """A list of ``entries`` in the ANS's format and signature, as the sandbox publishes its own (and the tests
    theirs). ``cert_pems``: the signer's certificate, then its chain."""
    root = etree.Element(f"{{{NS_LIST}}}ListeBlancheDRIM-M", nsmap={None: NS_LIST}, versionFormat="1.0.0")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    etree.SubElement(root, f"{{{NS_LIST}}}DateDeGeneration").text = now
    domains = etree.SubElement(root, f"{{{NS_LIST}}}ListeDomaines")
    for entry in entries:
        domain = etree.SubElement(domains, f"{{{NS_LIST}}}Domaine")
        for tag, attr in _FIELDS.items():
            etree.SubElement(domain, f"{{{NS_LIST}}}{tag}").text = getattr(entry, attr)
    sign_enveloped(root, key_pem, cert_pems, signature_id=f"id-{uuid.uuid4().hex}")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
