"""A throw-away PKI shaped like IGC-Santé, for the sandbox and the tests.

The DMP authenticates the establishment with an IGC-Santé "organisation" certificate (mutual TLS) and checks the
VIHF and XAdES signatures made with the structure's signing certificate ("cachet"). Reproducing that shape locally
(idNat_Struct in the subject OU, a dedicated signing certificate, a separate TLS client certificate) lets the
sandbox apply the same checks as the real service without any real key material in the repository.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opensegur.errors import OpenSegurError

__all__ = [
    "CA_NAME",
    "DEFAULT_STRUCTURE_ID",
    "DEFAULT_STRUCTURE_NAME",
    "PkiError",
    "TestPki",
    "certificate_chain_pem",
    "common_name_of",
    "client_ssl_context",
    "ensure_test_pki",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "server_ssl_context",
    "structure_id_of",
    "verify_certificate_chain",
]

CA_NAME = "OpenSégur Sandbox CA"
DEFAULT_STRUCTURE_ID = "1010000000009"  # "1" + FINESS, the idNat_Struct form IGC-Santé puts in the subject OU
DEFAULT_STRUCTURE_NAME = "CH OPENSEGUR SANDBOX"
_MANIFEST = "pki.json"
_MANIFEST_VERSION = 1
# Regenerate well before expiry so a long-lived sandbox directory never serves an expired certificate.
_RENEW_MARGIN = dt.timedelta(days=30)


class PkiError(OpenSegurError):
    """A certificate or key is unusable, or a certificate chain does not verify."""


@dataclass(frozen=True)
class TestPki:
    """PEM file paths of the test PKI (keys are unencrypted: test material only)."""

    __test__ = False  # not a pytest test class despite its name

    directory: Path
    ca_cert: Path
    ca_key: Path
    signing_cert: Path
    signing_key: Path
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path
    structure_id: str
    structure_name: str

    def read(self, path: Path) -> bytes:
        return path.read_bytes()


def _name(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _issue(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer_cert: x509.Certificate | None,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    now: dt.datetime,
    days: int,
    ca: bool = False,
    key_usage: x509.KeyUsage,
    eku: Sequence[x509.ObjectIdentifier] = (),
    san: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    issuer_name = issuer_cert.subject if issuer_cert is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a day: a test tool (or a test run that fixed its "now" minutes before the PKI was made) signs
        # with a clock that need not agree with this one to the minute.
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    issuer_public = issuer_cert.public_key() if issuer_cert is not None else key.public_key()
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
        critical=False,
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _ku(
    *, sign: bool = False, encipher: bool = False, ca: bool = False, nonrep: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=nonrep,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if private:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _paths(directory: Path, structure_id: str, structure_name: str) -> TestPki:
    return TestPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        signing_cert=directory / "signing.pem",
        signing_key=directory / "signing.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        structure_id=structure_id,
        structure_name=structure_name,
    )


def _usable(pki: TestPki, now: dt.datetime) -> bool:
    manifest = pki.directory / _MANIFEST
    try:
        meta = json.loads(manifest.read_text("utf-8"))
        if meta.get("version") != _MANIFEST_VERSION or meta.get("structure_id") != pki.structure_id:
            return False
        for cert_path, key_path in (
            (pki.ca_cert, pki.ca_key),
            (pki.signing_cert, pki.signing_key),
            (pki.client_cert, pki.client_key),
            (pki.server_cert, pki.server_key),
        ):
            cert = load_certificate(cert_path.read_bytes())
            key = load_private_key(key_path.read_bytes())
            if cert.not_valid_after_utc - _RENEW_MARGIN < now:
                return False
            if cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) != key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ):
                return False
    except (OSError, ValueError, PkiError):
        return False
    return True


def ensure_test_pki(
    directory: Path,
    *,
    structure_id: str = DEFAULT_STRUCTURE_ID,
    structure_name: str = DEFAULT_STRUCTURE_NAME,
) -> TestPki:
    """Return the test PKI in ``directory``, generating it on first use (or when unusable or near expiry).

    Files are written atomically and the manifest last, so a crash mid-generation leads to a regeneration rather
    than to a half-written PKI being reused.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pki = _paths(directory, structure_id, structure_name)
    now = dt.datetime.now(dt.UTC)
    if _usable(pki, now):
        return pki

    ca_key = _new_key()
    ca_cert = _issue(
        _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "OpenSégur"),
            (NameOID.COMMON_NAME, CA_NAME),
        ),
        ca_key,
        None,
        ca_key,
        now=now,
        days=3650,
        ca=True,
        key_usage=_ku(ca=True),
    )
    # IGC-Santé organisation certificates carry the idNat_Struct in OU and the structure's name in O.
    org = ((NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, structure_name))
    ou = (NameOID.ORGANIZATIONAL_UNIT_NAME, structure_id)
    signing_key = _new_key()
    signing_cert = _issue(
        _name(*org, ou, (NameOID.COMMON_NAME, f"{structure_name} CACHET")),
        signing_key,
        ca_cert,
        ca_key,
        now=now,
        days=730,
        key_usage=_ku(sign=True, nonrep=True),
    )
    client_key = _new_key()
    client_cert = _issue(
        _name(*org, ou, (NameOID.COMMON_NAME, f"{structure_name} AUTH_CLI")),
        client_key,
        ca_cert,
        ca_key,
        now=now,
        days=730,
        key_usage=_ku(sign=True, encipher=True),
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    server_key = _new_key()
    server_cert = _issue(
        _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, "OpenSégur"),
            (NameOID.COMMON_NAME, "localhost"),
        ),
        server_key,
        ca_cert,
        ca_key,
        now=now,
        days=730,
        key_usage=_ku(sign=True, encipher=True),
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    (directory / _MANIFEST).unlink(missing_ok=True)
    for path, data, private in (
        (pki.ca_cert, _cert_pem(ca_cert), False),
        (pki.ca_key, _key_pem(ca_key), True),
        (pki.signing_cert, _cert_pem(signing_cert), False),
        (pki.signing_key, _key_pem(signing_key), True),
        (pki.client_cert, _cert_pem(client_cert), False),
        (pki.client_key, _key_pem(client_key), True),
        (pki.server_cert, _cert_pem(server_cert), False),
        (pki.server_key, _key_pem(server_key), True),
    ):
        _write_atomic(path, data, private=private)
    manifest = {"version": _MANIFEST_VERSION, "structure_id": structure_id, "created": now.isoformat()}
    _write_atomic(directory / _MANIFEST, json.dumps(manifest).encode())
    return pki


def load_certificate(pem: bytes) -> x509.Certificate:
    """First certificate of a PEM (or DER) blob."""
    try:
        if b"-----BEGIN" in pem:
            return x509.load_pem_x509_certificate(pem)
        return x509.load_der_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"unreadable certificate: {exc}") from exc


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise PkiError(f"unreadable certificate bundle: {exc}") from exc
    return certs


@functools.lru_cache(maxsize=16)
def load_private_key(pem: bytes, password: bytes | None = None) -> PrivateKeyTypes:
    # Cached: loading checks the RSA key (tens of ms), and every VIHF and XAdES signature needs it.
    try:
        return serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"unreadable private key: {exc}") from exc


def certificate_chain_pem(pki: TestPki) -> bytes:
    """Signing certificate followed by its issuer: what a signature's KeyInfo/SigningCertificate should carry."""
    return pki.signing_cert.read_bytes() + pki.ca_cert.read_bytes()


def common_name_of(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def structure_id_of(cert: x509.Certificate) -> str | None:
    """idNat_Struct of an IGC-Santé-shaped organisation certificate (subject OU), if any."""
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(values[0].value) if values else None


@dataclass(frozen=True)
class _VerifiedChain:
    chain: tuple[x509.Certificate, ...]
    valid_from: dt.datetime  # latest notBefore of the chain
    valid_until: dt.datetime  # earliest notAfter of the chain


# Chains that verified, keyed by the trust store PEM and the exact DER of the leaf and intermediates: a client signs
# every message with the same chain. Sound because only the validity periods depend on the time (cryptography's
# verifier checks no CRL or OCSP), so a hit outside the chain's common validity window is verified again; failures
# are never cached.
_CHAIN_CACHE_SIZE = 64
_chain_cache: OrderedDict[tuple[bytes, bytes, tuple[bytes, ...]], _VerifiedChain] = OrderedDict()
_chain_cache_lock = threading.Lock()


def verify_certificate_chain(
    leaf: x509.Certificate,
    trusted_ca_pem: bytes,
    intermediates: Sequence[x509.Certificate] = (),
    *,
    at: dt.datetime | None = None,
) -> list[x509.Certificate]:
    """Verify that ``leaf`` chains to one of the trusted roots and may sign (digitalSignature); return the chain.

    The end-entity policy only demands a digitalSignature key usage: the VIHF/XAdES signing certificate has no
    TLS extended key usage, so the stock client/server policies of ``cryptography`` would reject it.
    """
    at = at or dt.datetime.now(dt.UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    key = (
        trusted_ca_pem,
        leaf.public_bytes(serialization.Encoding.DER),
        tuple(c.public_bytes(serialization.Encoding.DER) for c in intermediates),
    )
    with _chain_cache_lock:
        known = _chain_cache.get(key)
        if known is not None:
            _chain_cache.move_to_end(key)
    if known is not None and known.valid_from <= at <= known.valid_until:
        return list(known.chain)
    chain = _build_chain(leaf, trusted_ca_pem, intermediates, at)
    verified = _VerifiedChain(
        tuple(chain),
        max(c.not_valid_before_utc for c in chain),
        min(c.not_valid_after_utc for c in chain),
    )
    with _chain_cache_lock:
        _chain_cache[key] = verified
        while len(_chain_cache) > _CHAIN_CACHE_SIZE:
            _chain_cache.popitem(last=False)
    return chain


def _build_chain(
    leaf: x509.Certificate,
    trusted_ca_pem: bytes,
    intermediates: Sequence[x509.Certificate],
    at: dt.datetime,
) -> list[x509.Certificate]:
    def require_signature(_policy: object, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
        if ku is None or not ku.digital_signature:
            raise ValueError("certificate KeyUsage does not allow digitalSignature")

    roots = load_certificates(trusted_ca_pem)
    if not roots:
        raise PkiError("no trusted CA certificate given")
    ee_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.KeyUsage, verification.Criticality.AGNOSTIC, require_signature
    )
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(at)
        .extension_policies(ee_policy=ee_policy, ca_policy=verification.ExtensionPolicy.webpki_defaults_ca())
    )
    try:
        result = builder.build_client_verifier().verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        raise PkiError(f"certificate chain does not verify: {exc}") from exc
    return list(result.chain)


def client_ssl_context(pki: TestPki) -> ssl.SSLContext:
    """mTLS client context (establishment AUTH_CLI certificate, trusting the sandbox CA)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def server_ssl_context(pki: TestPki, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """Server context for the sandbox on localhost/127.0.0.1, requiring a client certificate from the CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx
