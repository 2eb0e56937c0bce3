"""The ANS's signed list of DRIMboxes: read only when its signature, by the configured signer, covers it all."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensegur.security.drimbox_directory import (
    DirectoryError,
    TrustedDrimbox,
    file_loader,
    read_directory,
    sign_directory,
)
from opensegur.security.pki import TestPki, ensure_test_pki

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")

ENTRIES = [
    TrustedDrimbox("DB-001", "https://db1.chu-y.fr/dicom-web", "CHU-Y", "CN=db1.chu-y.fr,O=editeur,C=FR"),
    TrustedDrimbox("DB-002", "db2.ch-z.fr:8443", "CH-Z"),
]


@pytest.fixture(scope="module")
def ans(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(tmp_path_factory.mktemp("ans"))


def _signed(pki: TestPki) -> bytes:
    return sign_directory(ENTRIES, pki.signing_key.read_bytes(), pki.signing_cert.read_bytes())


def test_a_listed_drimbox_is_found_by_its_host_and_port(ans: TestPki) -> None:
    directory = read_directory(_signed(ans), ans.signing_cert.read_bytes())
    assert [e.identifier for e in directory.entries] == ["DB-001", "DB-002"]
    assert directory.trusted("https://db1.chu-y.fr/dicom-web/studies/1.2/series/1.2.3") == ENTRIES[0]
    assert directory.trusted("https://db2.ch-z.fr:8443/wado/studies/1") == ENTRIES[1]
    assert directory.trusted("https://db1.chu-y.fr:8443/dicom-web") is None  # another port
    assert directory.trusted("https://db1.chu-y.fr.evil.test/dicom-web") is None


def test_a_list_signed_by_another_key_is_refused(ans: TestPki, tmp_path: Path) -> None:
    other = ensure_test_pki(tmp_path / "other")
    with pytest.raises(DirectoryError, match="Signature"):
        read_directory(_signed(other), ans.signing_cert.read_bytes())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda x: x.replace(b"db1.chu-y.fr/dicom-web", b"db1.evil.test/dicom-web"), "Signature"),
        (
            lambda x: x.replace(
                b"</ListeBlanche>",
                b"<Domaine><Identifiant>X</Identifiant><db>evil.test</db></Domaine></ListeBlanche>",
            ),
            "Signature",
        ),
        (lambda x: x.split(b"<ds:Signature")[0] + b"</ListeBlanche>", "non signée"),
        (
            lambda x: b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa">]>' + x.split(b"?>", 1)[1],
            "DOCTYPE",
        ),
        (lambda x: x[:200], "illisible"),
    ],
    ids=["altered", "domain added", "unsigned", "entities", "truncated"],
)
def test_an_altered_or_unsigned_list_is_refused_whole(ans: TestPki, change: object, reason: str) -> None:
    with pytest.raises(DirectoryError, match=reason):
        read_directory(change(_signed(ans)), ans.signing_cert.read_bytes())  # type: ignore[operator]


def test_the_list_is_read_again_from_its_file(ans: TestPki, tmp_path: Path) -> None:
    path = tmp_path / "liste-blanche.xml"
    load = file_loader(path, ans.signing_cert)
    with pytest.raises(DirectoryError, match="illisible"):
        load()
    path.write_bytes(_signed(ans))
    assert len(load().entries) == 2
    with pytest.raises(DirectoryError, match="configurée"):
        file_loader(None, None)()
