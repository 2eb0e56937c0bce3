from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opensegur.security.pki import (
    CA_NAME,
    DEFAULT_STRUCTURE_ID,
    PkiError,
    client_ssl_context,
    ensure_test_pki,
    load_certificate,
    load_private_key,
    server_ssl_context,
    structure_id_of,
    verify_certificate_chain,
)


def test_pki_is_created_once_and_reused(tmp_path: Path) -> None:
    pki = ensure_test_pki(tmp_path / "pki")
    first = pki.signing_cert.read_bytes()
    again = ensure_test_pki(tmp_path / "pki")
    assert again.signing_cert.read_bytes() == first
    assert (pki.signing_key.stat().st_mode & 0o777) == 0o600


def test_pki_regenerates_when_a_file_is_corrupted(tmp_path: Path) -> None:
    pki = ensure_test_pki(tmp_path)
    first = pki.ca_cert.read_bytes()
    pki.client_key.write_bytes(b"garbage")
    again = ensure_test_pki(tmp_path)
    assert again.ca_cert.read_bytes() != first
    load_private_key(again.client_key.read_bytes())


def test_certificates_have_the_igc_sante_shape(tmp_path: Path) -> None:
    pki = ensure_test_pki(tmp_path)
    ca = load_certificate(pki.ca_cert.read_bytes())
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CA_NAME
    signing = load_certificate(pki.signing_cert.read_bytes())
    assert structure_id_of(signing) == DEFAULT_STRUCTURE_ID
    assert signing.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    client = load_certificate(pki.client_cert.read_bytes())
    assert structure_id_of(client) == DEFAULT_STRUCTURE_ID
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    server = load_certificate(pki.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_chain_verification(tmp_path: Path) -> None:
    pki = ensure_test_pki(tmp_path / "a")
    other = ensure_test_pki(tmp_path / "b")
    signing = load_certificate(pki.signing_cert.read_bytes())
    chain = verify_certificate_chain(signing, pki.ca_cert.read_bytes())
    assert chain[0] == signing and len(chain) == 2
    with pytest.raises(PkiError):
        verify_certificate_chain(signing, other.ca_cert.read_bytes())
    with pytest.raises(PkiError):
        verify_certificate_chain(
            signing, pki.ca_cert.read_bytes(), at=dt.datetime.now(dt.UTC) + dt.timedelta(days=800)
        )


def test_ssl_contexts_load(tmp_path: Path) -> None:
    pki = ensure_test_pki(tmp_path)
    assert client_ssl_context(pki).verify_mode == ssl.CERT_REQUIRED
    assert server_ssl_context(pki).verify_mode == ssl.CERT_REQUIRED
