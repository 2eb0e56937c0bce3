"""The HR CSV import: a good file, hostile files (nothing applied, French errors with line numbers), the RPPS
checked against the sandbox Annuaire Santé, the simulation, and the command line."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from opensegur.config import Settings
from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.hospital.apply import apply_config
from opensegur.ops.demo import demo_config
from opensegur.sandbox.annuaire import SANDBOX_API_KEY
from opensegur.security import hr_cli
from opensegur.security.hr_csv import MAX_BYTES, import_hr_csv, parse_hr_csv
from opensegur.security.provisioning import ProvisioningError
from opensegur.store.db import Database
from opensegur.store.models import Account
from tests.annuaire.conftest import BASE, sandbox_app

TODAY = date(2026, 3, 2)
HEADER = "matricule;nom;prenom;rpps;role;perimetre;date_arrivee;date_depart\n"
GOOD = (
    HEADER
    + "M1001;Dupont;Jean;10010000189;medecin;unit:750000028/6268;2024-09-01;\n"
    + "M1001;Dupont;Jean;10010000189;interne;750000036;2024-09-01;\n"
    + "m2002;MARTIN;Léa;;secretaire_medicale;750000028/4010;01/03/2022;\n"
)


def errors_of(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(ProvisioningError) as refused:
        parse_hr_csv(data, demo_config(), TODAY)
    return refused.value.errors


@pytest.fixture
def configured(sqlite_db: Database) -> Database:
    apply_config(sqlite_db, demo_config(), applied_by="test", source="demo")
    return sqlite_db


@pytest.fixture
async def annuaire() -> AsyncIterator[AnnuaireClient]:
    client = AnnuaireClient(BASE, SANDBOX_API_KEY, transport=httpx.ASGITransport(app=sandbox_app()))
    yield client
    await client.aclose()


def count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count(Account.id))) or 0)


def test_a_good_file_with_bom_accents_in_the_header_and_two_assignments() -> None:
    data = "\ufeff" + GOOD.replace("prenom", "Prénom").replace("\n", "\r\n")
    dupont, martin = parse_hr_csv(data.encode(), demo_config(), TODAY)
    assert (dupont.login, dupont.display_name, dupont.rpps) == ("m1001", "Jean DUPONT", "10010000189")
    assert [(a.role, str(a.scope)) for a in dupont.assignments] == [
        ("medecin", "unit:750000028/6268"),
        ("interne", "site:750000036"),
    ]
    assert dupont.ref == "lignes 2, 3 (m1001)"
    assert (martin.rpps, martin.arrival, str(martin.assignments[0].scope)) == (
        None,
        date(2022, 3, 1),
        "unit:750000028/4010",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"matricule;nom\n\xff\xfe;x\n", "ligne 2 : fichier non UTF-8"),
        ("", "Fichier vide"),
        (HEADER, "Aucune ligne de données"),
        ("matricule,nom,prenom\nm1,a,b\n", "ligne 1 : en-tête attendu"),
        (HEADER + "m1;Dupont;Jean\n", "ligne 2 : 3 colonnes au lieu de 8"),
        (
            HEADER + 'm1;=HYPERLINK("http://x");Jean;;medecin;ght;;\n',
            "ligne 2 : nom : cellule commençant par",
        ),
        (HEADER + "m1;Dupont;@SUM(1);;medecin;ght;;\n", "ligne 2 : prenom : cellule commençant par"),
        (HEADER + "m1;Dupont;Jean;;chef;ght;;\n", "ligne 2 (m1) : rôle « chef » inconnu"),
        (HEADER + "m1;Dupont;Jean;;medecin;site:999999999;;\n", "site FINESS 999999999 inconnu"),
        (HEADER + "m1;Dupont;Jean;;medecin;750000028/9999;;\n", "UF « 9999 » inconnue du site 750000028"),
        (HEADER + "m1;Dupont;Jean;10010000188;medecin;ght;;\n", "clé de contrôle (Luhn) fausse"),
        (
            HEADER + "m1;Dupont;Jean;;medecin;ght;31/02/2024;\n",
            "ligne 2 : date_arrivee « 31/02/2024 » invalide",
        ),
        (HEADER + "m1;Dupont;Jean;;medecin;partout;;\n", "Périmètre « partout » invalide"),
        (HEADER + "m1;;Jean;;medecin;ght;;\n", "nom et prénom sont obligatoires"),
        (HEADER + "m1;Dupont;Jean;;;;;\n", "aucune affectation"),
        (
            HEADER + "m1;Dupont;Jean;;medecin;ght;;\nm1;Durand;Jean;;ide;ght;;\n",
            "ligne 3 : matricule « m1 » déjà vu",
        ),
        (HEADER + "m1;Dupont;Jean;;medecin;ght;;\nm1;Dupont;Jean;;medecin;ght;;\n", "affectation en double"),
        (HEADER + 'm1;"Dupont;Jean;;medecin;ght;;\n', "CSV mal formé"),
        (HEADER + "m1;Du\x00pont;Jean;;medecin;ght;;\n", "ligne 2 : caractère nul"),
        (HEADER + "m1;Du\x1bpont;Jean;;medecin;ght;;\n", "caractère de contrôle"),
    ],
)
def test_hostile_and_wrong_files_are_refused_in_french_with_the_line(
    text: str | bytes, expected: str
) -> None:
    assert any(expected in e for e in errors_of(text)), errors_of(text)


def test_a_huge_file_is_refused_before_it_is_read() -> None:
    (error,) = errors_of(b"x" * (MAX_BYTES + 1))
    assert error.startswith("Fichier trop volumineux")


def test_errors_are_listed_for_every_line_and_capped() -> None:
    lines = "".join(f"m{i};Dupont;Jean;;chef;ght;;\n" for i in range(80))
    errors = errors_of(HEADER + lines)
    assert len(errors) == 51 and errors[-1] == "… et 30 autre(s) erreur(s)"


async def test_nothing_is_applied_when_one_line_is_wrong(
    configured: Database, annuaire: AnnuaireClient
) -> None:
    bad = GOOD + "m3003;Durand;Paul;;chef;ght;;\n"
    with pytest.raises(ProvisioningError):
        await import_hr_csv(
            configured, bad.encode(), origin="rh.csv", config=demo_config(), annuaire=annuaire, by="t"
        )
    assert count(configured) == 0


async def test_rpps_unknown_to_the_annuaire_is_reported(
    configured: Database, annuaire: AnnuaireClient
) -> None:
    unknown = GOOD + "m3003;Durand;Paul;10019999993;ide;ght;;\n"
    with pytest.raises(ProvisioningError) as refused:
        await import_hr_csv(
            configured, unknown.encode(), origin="rh.csv", config=demo_config(), annuaire=annuaire, by="t"
        )
    assert refused.value.errors == ["ligne 5 (m3003) : RPPS 10019999993 inconnu de l'Annuaire Santé"]
    assert count(configured) == 0


async def test_dry_run_reports_and_changes_nothing_then_the_import_applies(
    configured: Database, annuaire: AnnuaireClient
) -> None:
    args = {"origin": "rh.csv", "config": demo_config(), "annuaire": annuaire, "by": "cli:rh", "today": TODAY}
    report = await import_hr_csv(configured, GOOD.encode(), dry_run=True, **args)  # type: ignore[arg-type]
    assert report.dry_run and [c.kind for c in report.changes] == ["arrivée", "arrivée"]
    assert count(configured) == 0
    report = await import_hr_csv(configured, GOOD.encode(), **args)  # type: ignore[arg-type]
    assert "arrivée 2" in report.summary() and count(configured) == 2
    departure = HEADER + "m2002;MARTIN;Léa;;;;01/03/2022;2026-03-01\n"
    report = await import_hr_csv(configured, departure.encode(), **args)  # type: ignore[arg-type]
    assert [str(c) for c in report.changes] == ["départ : m2002 — compte désactivé, 0 session(s) fermée(s)"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    db = Database(Settings(data_dir=tmp_path).db_url)
    db.migrate()
    apply_config(db, demo_config(), applied_by="test", source="demo")
    db.dispose()
    yield tmp_path


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    hr_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_command_line_import_dry_run_and_list(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "rh.csv"
    file.write_text(GOOD, encoding="utf-8")
    assert _cli("accounts", "import", str(file), "--dry-run", "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr()
    assert (
        out.out.startswith("Simulation (rien n'est enregistré)") and "Annuaire Santé non configuré" in out.err
    )
    assert _cli("accounts", "import", str(file), "--data-dir", str(data_dir)) == 0
    assert "arrivée : m1001 — Jean DUPONT" in capsys.readouterr().out
    assert _cli("accounts", "list", "--data-dir", str(data_dir)) == 0
    listing = capsys.readouterr().out
    assert "m2002" in listing and "secretaire_medicale (unit:750000028/4010)" in listing
    file.write_bytes(b"\xff\xfe")
    assert _cli("accounts", "import", str(file), "--data-dir", str(data_dir)) == 1
    assert "non UTF-8" in capsys.readouterr().err
