"""The ANS's signed list of DRIMboxes: read only when its signature, by the « Liste Blanche DRIM-M » certificate of
the IGC-Santé, covers it all — the ANS's own test list first, then lists signed by a test PKI and attacked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from opensegur.security.drimbox_directory import (
    ANS_SIGNER_CN,
    DirectoryError,
    DirectoryTrust,
    TrustedDrimbox,
    file_loader,
    read_directory,
    sign_directory,
)
from opensegur.security.pki import TestPki, common_name_of, ensure_test_pki, load_certificate

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "ans-drim-m"
ANS_LIST = (SAMPLES / "LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml").read_bytes()
ANS_TRUST = DirectoryTrust((SAMPLES / "igc-sante-test-racine.pem").read_bytes())
# Inside the validity of the list's signing certificate (2026-09-14 to 2029-09-14), whatever day the tests run.
ANS_DAY = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

ENTRIES = [
    TrustedDrimbox("DB-001", "https://db1.chu-y.fr/dicom-web", "CHU-Y", "CN=db1.chu-y.fr,O=editeur,C=FR"),
    TrustedDrimbox("DB-002", "db2.ch-z.fr:8443", "CH-Z", viewer="vi2.ch-z.fr"),
]


def _trust(pki: TestPki) -> DirectoryTrust:
    return DirectoryTrust(
        pki.ca_cert.read_bytes(), common_name_of(load_certificate(pki.signing_cert.read_bytes()))
    )


@pytest.fixture(scope="module")
def ans(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(tmp_path_factory.mktemp("ans"))


def _signed(pki: TestPki) -> bytes:
    return sign_directory(ENTRIES, pki.signing_key.read_bytes(), [pki.signing_cert.read_bytes()])


def test_the_ans_signed_test_list_is_read() -> None:
    directory = read_directory(ANS_LIST, ANS_TRUST, at=ANS_DAY)
    assert directory.generated == "2026-06-19T18:06:52Z"
    assert len(directory.entries) == 17
    first = directory.trusted("https://db3.test.mesimagesmedicales.fr/dicom-web/studies/1.2/series/1.2.3")
    assert first is not None
    assert (first.identifier, first.viewer, first.denomination) == (
        "3",
        "vi3.test.mesimagesmedicales.fr",
        "ANS",
    )
    assert first.certificate_dn.startswith("CN=db3.test.mesimagesmedicales.fr,OU=318751275100020")
    assert directory.trusted("https://db3.test.mesimagesmedicales.fr:8443/") is None


def test_the_ans_unsigned_list_is_refused() -> None:
    with pytest.raises(DirectoryError, match="non signé"):
        read_directory(
            (SAMPLES / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml").read_bytes(), ANS_TRUST, at=ANS_DAY
        )


@pytest.mark.parametrize(
    ("trust", "at", "reason"),
    [
        (DirectoryTrust(ANS_TRUST.ca_pem, "db3.test.mesimagesmedicales.fr"), ANS_DAY, "Signataire inattendu"),
        (ANS_TRUST, dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "non reconnu"),
        (ANS_TRUST, dt.datetime(2026, 9, 1, tzinfo=dt.UTC), "non reconnu"),
    ],
    ids=["another signer name", "signer certificate expired", "signer certificate not yet valid"],
)
def test_the_ans_list_needs_its_signer_in_its_validity(
    trust: DirectoryTrust, at: dt.datetime, reason: str
) -> None:
    with pytest.raises(DirectoryError, match=reason):
        read_directory(ANS_LIST, trust, at=at)


def test_the_ans_list_is_refused_under_another_authority(ans: TestPki) -> None:
    with pytest.raises(DirectoryError, match="non reconnu"):
        read_directory(ANS_LIST, DirectoryTrust(ans.ca_cert.read_bytes()), at=ANS_DAY)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda x: x.replace(b"<db>db3.test", b"<db>db9.test"), "modifié"),
        (lambda x: x.replace(b"<Identifiant>3</Identifiant>", b"<Identifiant>3</Identifiant><!-- -->"), None),
        (
            lambda x: x.replace(
                b"</ListeDomaines>",
                b"<Domaine><Identifiant>X</Identifiant><db>evil.test</db></Domaine></ListeDomaines>",
            ),
            "modifié",
        ),
        (lambda x: x.replace(b'Filter="subtract"', b'Filter="intersect"'), "Référence"),
        (lambda x: x.replace(b"/descendant::ds:Signature<", b"/descendant::ds:Domaine<"), "Référence"),
        (lambda x: x.replace(b"xml-exc-c14n#", b"xml-c14n11", 1), "Canonicalisation"),
        (
            lambda x: x.replace(
                b"<ListeBlancheDRIM-M ", b'<ListeBlancheDRIM-M versionFormat="2.0" ', 1
            ).replace(b'versionFormat="1.0.0"', b""),
            "format",
        ),
    ],
    ids=[
        "domain altered",
        "comment added",
        "domain added",
        "filter intersect",
        "filter on other nodes",
        "c14n 1.1",
        "format 2",
    ],
)
def test_an_altered_ans_list_is_refused_whole(change: Callable[[bytes], bytes], reason: str | None) -> None:
    if reason is None:  # comments are outside the canonical form: the list still reads, the comment unread
        assert len(read_directory(change(ANS_LIST), ANS_TRUST, at=ANS_DAY).entries) == 17
        return
    with pytest.raises(DirectoryError, match=reason):
        read_directory(change(ANS_LIST), ANS_TRUST, at=ANS_DAY)


def test_a_list_signed_here_is_read_in_the_ans_shape(ans: TestPki) -> None:
    signed = _signed(ans)
    assert b"xmldsig-filter2" in signed and b"SigningCertificateV2" in signed
    directory = read_directory(signed, _trust(ans))
    assert directory.entries == tuple(ENTRIES)
    assert directory.trusted("https://db1.chu-y.fr/dicom-web/studies/1.2/series/1.2.3") == ENTRIES[0]
    assert directory.trusted("https://db2.ch-z.fr:8443/wado/studies/1") == ENTRIES[1]
    assert directory.trusted("https://db1.chu-y.fr:8443/dicom-web") is None  # another port
    assert directory.trusted("https://db1.chu-y.fr.evil.test/dicom-web") is None


def test_a_list_signed_by_another_key_is_refused(ans: TestPki, tmp_path: Path) -> None:
    other = ensure_test_pki(tmp_path / "other")
    with pytest.raises(DirectoryError, match="non reconnu"):
        read_directory(_signed(other), _trust(ans))


def _moved_signature(signed: bytes) -> bytes:
    """The signature wrapped into the first domain: a second place, as in signature-wrapping attacks."""
    head, sig = signed.split(b"<ds:Signature", 1)
    sig = b"<ds:Signature" + sig.removesuffix(b"</ListeBlancheDRIM-M>")
    return head.replace(b"</Domaine>", sig + b"</Domaine>", 1) + b"</ListeBlancheDRIM-M>"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda x: x.replace(b"db1.chu-y.fr/dicom-web", b"db1.evil.test/dicom-web"), "modifié"),
        (lambda x: x.split(b"<ds:Signature")[0] + b"</ListeBlancheDRIM-M>", "non signé"),
        (_moved_signature, "racine"),
        (lambda x: x.replace(b'URI="#xades-', b'URI="#autre-'), "propriétés signées"),
        (
            lambda x: b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]>' + x.split(b"?>", 1)[1],
            "DOCTYPE",
        ),
        (lambda x: x[:200], "illisible"),
        (lambda x: x.replace(b"ListeBlancheDRIM-M", b"ListeBlanche"), "n'est pas une liste blanche"),
    ],
    ids=[
        "altered",
        "unsigned",
        "signature moved",
        "properties elsewhere",
        "entities",
        "truncated",
        "other root",
    ],
)
def test_an_altered_or_unsigned_list_is_refused_whole(
    ans: TestPki, change: Callable[[bytes], bytes], reason: str
) -> None:
    with pytest.raises(DirectoryError, match=reason):
        read_directory(change(_signed(ans)), _trust(ans))


def test_the_default_signer_is_the_ans_list_certificate() -> None:
    assert ANS_SIGNER_CN == "Liste Blanche DRIM-M" == DirectoryTrust(b"").signer_cn


def test_the_list_is_read_again_from_its_file(ans: TestPki, tmp_path: Path) -> None:
    path = tmp_path / "liste-blanche.xml"
    trust = _trust(ans)
    load = file_loader(path, ans.ca_cert, trust.signer_cn)
    with pytest.raises(DirectoryError, match="illisible"):
        load()
    path.write_bytes(_signed(ans))
    assert len(load().entries) == 2
    with pytest.raises(DirectoryError, match="configurée"):
        file_loader(None, None)()


def test_a_caller_is_known_by_its_operator_certificate() -> None:
    directory = read_directory(ANS_LIST, ANS_TRUST, at=ANS_DAY)
    # A certificate's subject as RFC 4514 writes it, attributes in another order and case.
    subject = "C=FR,ST=Paris (75),O=Agence du numerique en sante,OU=318751275100020,CN=DB3.test.mesimagesmedicales.fr"
    found = directory.operated_by(subject)
    assert found is not None and found.identifier == "3"
    assert directory.operated_by(subject.replace("OU=318751275100020", "OU=300000001831981")) is None
    assert directory.operated_by(subject + ",L=Paris") is None  # one attribute more is another subject
    assert directory.operated_by("") is None
    assert not TrustedDrimbox("X", "x.test").operates("")  # a domain without DN is nobody's
