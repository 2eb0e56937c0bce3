"""Validation of a configuration directory: French messages with file and line, a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensegur.cli import main
from opensegur.hospital.loader import ConfigInvalid, load_directory, load_files
from opensegur.ops.demo import DEMO_CONFIG_DIR
from opensegur.security.matrix import Action, Assignment, Scope

from .helpers import DPIS, FILES, IDENTITY_PROVIDERS, MSSANTE, ROLES, SITES, line_of, write_config


def test_the_demo_directory_is_valid_and_declares_the_demo_ght() -> None:
    config = load_directory(DEMO_CONFIG_DIR)
    assert (config.ght.finess, config.ght.name) == ("750000010", "GHT Rives de Seine (démo)")
    breteuil, saint_vincent = config.sites
    assert (breteuil.finess, breteuil.name) == ("750000028", "CHU-X — site Breteuil (démo)")
    assert (breteuil.ipp_domain.namespace, breteuil.ipp_domain.oid) == ("CHU-X", "000897406")
    assert [u.code for u in breteuil.units] == ["6268", "4010", "2201", "3105"]
    assert breteuil.facility_aliases == [
        "Organisation-X",
        "Organisation-Y",
        "labo",
        "300017985",
        "1120459876",
    ]
    assert (saint_vincent.finess, saint_vincent.ipp_domain.namespace) == ("750000036", "HSV")
    assert saint_vincent.ipp_domain.oid == "1.2.250.1.999.1.1.2"
    assert [m.address for m in config.mailboxes] == [
        "dpi@hopitalA.mssante.fr",
        "radiologie@hopitalA.mssante.fr",
        "hdj@hopitalA.mssante.fr",
    ]
    assert set(config.roles) == {
        "medecin",
        "interne",
        "regulateur",
        "sage_femme",
        "ide",
        "manipulateur",
        "secretaire_medicale",
        "dim",
        "identitovigilant",
        "admin_technique",
    }


def test_the_matrix_comes_from_roles_toml(tmp_path: Path) -> None:
    matrix = load_directory(write_config(tmp_path)).matrix
    secretary = [Assignment("secretaire_medicale", Scope("site", "330000027"))]
    assert matrix.grants(secretary, Action.MAIL_TRIAGE)
    assert not matrix.grants(secretary, Action.DMP_CONSULT)
    assert matrix.roles["medecin"].label == "Médecin"


def test_validate_accepts_a_valid_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(write_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Configuration valide : 2 site(s), 3 UF, 1 DPI, 1 boîte(s) MSSanté, 3 rôle(s)")


REFUSALS = [
    # id, file stem, new text, line to point at (needle, occurrence), French message expected
    (
        "unknown key",
        "sites",
        SITES.replace(
            'name = "CH de Montval — site Sud"', 'name = "CH de Montval — site Sud"\ncouleur = "bleu"'
        ),
        ("couleur", 1),
        "sites.couleur : clé inconnue « couleur »",
    ),
    (
        "unknown key in an inline table",
        "sites",
        SITES.replace('oid = "1.2.250.1.999.77.2" }', 'oid = "1.2.250.1.999.77.2", ns = "x" }'),
        ("CHMV-S", 1),
        "clé inconnue « ns »",
    ),
    (
        "bad FINESS key",
        "sites",
        SITES.replace('finess = "330000035"', 'finess = "330000036"'),
        ("330000036", 1),
        "Numéro FINESS « 330000036 » invalide : clé de contrôle (Luhn) fausse",
    ),
    (
        "malformed FINESS",
        "ght",
        'finess = "33-ABC"\nname = "GHT"\n',
        ("33-ABC", 1),
        "mal formé",
    ),
    (
        "duplicate site FINESS",
        "sites",
        SITES.replace('finess = "330000035"', 'finess = "330000027"'),
        ('finess = "330000027"', 2),
        "FINESS 330000027 déjà déclaré pour le site « CH de Montval — site Nord »",
    ),
    (
        "duplicate IPP namespace",
        "sites",
        SITES.replace('namespace = "CHMV-S"', 'namespace = "CHMV-N"'),
        ("CHMV-N", 2),
        "Domaine d'IPP « CHMV-N » déjà utilisé par le site « CH de Montval — site Nord »",
    ),
    (
        "duplicate IPP OID",
        "sites",
        SITES.replace("1.2.250.1.999.77.2", "1.2.250.1.999.77.1"),
        ("1.2.250.1.999.77.1", 2),
        "OID de domaine d'IPP « 1.2.250.1.999.77.1 » déjà utilisé",
    ),
    (
        "bad OID syntax",
        "sites",
        SITES.replace("1.2.250.1.999.77.2", "1.2.250.x.77"),
        ("1.2.250.x.77", 1),
        "OID « 1.2.250.x.77 » mal formé",
    ),
    (
        "duplicate unit",
        "sites",
        SITES.replace('code = "2002"', 'code = "1001"'),
        ('code = "1001"', 2),
        "UF « 1001 » déclarée deux fois",
    ),
    (
        "DPI on an unknown site",
        "dpis",
        DPIS.replace('site = "330000027"', 'site = "330000043"'),
        ("330000043", 1),
        "Site 330000043 inconnu : déclarez-le dans sites.toml",
    ),
    (
        "bad MLLP endpoint",
        "dpis",
        DPIS.replace("10.20.0.5:6661", "10.20.0.5"),
        ("zam_endpoint", 1),
        "attendu « hôte:port »",
    ),
    (
        "bad sender address",
        "dpis",
        DPIS.replace("10.20.0.0/24", "réseau-interne"),
        ("senders", 1),
        "n'est ni une adresse IP ni un réseau",
    ),
    (
        "mailbox on an unknown site",
        "mssante",
        MSSANTE.replace('site = "330000027"', 'site = "330000043"'),
        ("330000043", 1),
        "Site 330000043 inconnu",
    ),
    (
        "mailbox in an unknown unit",
        "mssante",
        MSSANTE.replace('unit = "1001"', 'unit = "3003"'),
        ("unit", 1),
        "UF « 3003 » inconnue sur le site « CH de Montval — site Nord » : déclarez-la dans sites.toml",
    ),
    (
        "not an MSSanté address",
        "mssante",
        MSSANTE.replace("urgences@ch-montval.mssante.fr", "urgences@gmail.com"),
        ("gmail", 1),
        "une boîte MSSanté est de la forme nom@domaine.mssante.fr",
    ),
    (
        "role without any action",
        "roles",
        ROLES.replace('actions = ["admin", "ops.read"]', "actions = []"),
        ("actions = []", 1),
        "roles.admin_technique.actions : le rôle n'accorde aucune action",
    ),
    (
        "unknown action, in a multi-line array",
        "roles",
        ROLES.replace('"mail.triage"', '"mail.trier"'),
        ("mail.trier", 1),
        "action inconnue « mail.trier »",
    ),
    (
        "bad role id",
        "roles",
        ROLES.replace("[roles.medecin]", '[roles."Médecin"]'),
        ("Médecin", 1),
        "identifiant « Médecin » invalide",
    ),
    (
        "a secret written in the file",
        "identity_providers",
        IDENTITY_PROVIDERS.replace(
            'client_id = "opensegur"', 'client_id = "opensegur"\nclient_secret = "s3cr3t"'
        ),
        ("client_secret =", 1),
        "ne mettez jamais le secret dans ces fichiers",
    ),
    (
        "an issuer without https",
        "identity_providers",
        IDENTITY_PROVIDERS.replace("https://sso.ch-montval.fr", "http://sso.ch-montval.fr"),
        ("http://sso", 1),
        "une URL https:// est attendue",
    ),
    (
        "missing key",
        "identity_providers",
        IDENTITY_PROVIDERS.replace('client_id = "ch-montval-opensegur"\n', ""),
        ("[psc]", 1),
        "psc.client_id : clé obligatoire « client_id » absente",
    ),
    (
        "TOML syntax",
        "dpis",
        DPIS.replace('name = "DPI Montval"', 'name = "DPI Montval'),
        ("DPI Montval", 1),
        "syntaxe TOML invalide",
    ),
]


@pytest.mark.parametrize(
    ("stem", "text", "where", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_validate_refuses_with_file_and_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stem: str,
    text: str,
    where: tuple[str, int],
    message: str,
) -> None:
    directory = write_config(tmp_path, **{stem: text})
    assert main(["config", "validate", str(directory)]) == 1
    err = capsys.readouterr().err
    expected = f"{stem}.toml, ligne {line_of(text, *where)} : "
    assert any(line.startswith(expected) and message in line for line in err.splitlines()), err
    assert err.rstrip().endswith("configuration refusée")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    directory = write_config(
        tmp_path,
        roles=ROLES.replace('"dmp.consult"', '"dmp.ecrire"'),
        dpis=DPIS.replace('site = "330000027"', 'site = "330000043"'),
    )
    with pytest.raises(ConfigInvalid) as caught:
        load_directory(directory)
    # The DPI's unknown site is a cross-file check: it waits for every file to be valid alone.
    assert [p.file for p in caught.value.problems] == ["roles.toml"]
    directory = write_config(
        tmp_path,
        roles=ROLES.replace('"dmp.consult"', '"dmp.ecrire"'),
        sites=SITES.replace('finess = "330000035"', 'finess = "330000036"'),
    )
    with pytest.raises(ConfigInvalid) as caught:
        load_directory(directory)
    assert sorted(p.file for p in caught.value.problems) == ["roles.toml", "sites.toml"]


def test_missing_and_unknown_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = write_config(tmp_path, roles=None)
    (directory / "site.toml").write_text("", encoding="utf-8")
    assert main(["config", "validate", str(directory)]) == 1
    err = capsys.readouterr().err
    assert "roles.toml : fichier obligatoire absent du répertoire" in err
    assert "site.toml : fichier inconnu ; les fichiers reconnus sont ght.toml, sites.toml" in err
    assert main(["config", "validate", str(tmp_path / "absent")]) == 1
    assert "répertoire de configuration introuvable" in capsys.readouterr().err


def test_optional_files_may_be_left_out(tmp_path: Path) -> None:
    config = load_files({name: FILES[name] for name in ("ght.toml", "sites.toml", "roles.toml")})
    assert config.dpis == [] and config.mailboxes == []
    assert config.identity_providers.sso is None and config.identity_providers.psc is None


def test_the_hash_ignores_line_endings_not_content() -> None:
    same = load_files({name: text.replace("\n", "\r\n") for name, text in FILES.items()})
    assert same.sha256 == load_files(dict(FILES)).sha256
    other = load_files({**FILES, "ght.toml": FILES["ght.toml"] + "# commentaire\n"})
    assert other.sha256 != same.sha256
