"""``opensegur config show|diff`` against the database, and plain ``opensegur config`` as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opensegur.cli import main
from opensegur.hospital.apply import load_and_apply
from opensegur.store.db import Database

from .helpers import ROLES, write_config


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def applied(data_dir: Path, directory: Path) -> None:
    data_dir.mkdir()
    db = Database(f"sqlite:///{(data_dir / 'opensegur.db').resolve()}")
    try:
        db.migrate()
        load_and_apply(db, directory, "admin.test")
    finally:
        db.dispose()


def test_plain_config_still_prints_the_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "config", "--data-dir", str(tmp_path))
    assert code == 0 and json.loads(out)["data_dir"] == str(tmp_path)


def test_show_from_the_database_and_from_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = write_config(tmp_path / "conf")
    data = tmp_path / "data"
    applied(data, directory)
    code, out, _ = run(capsys, "config", "show", "--data-dir", str(data))
    shown = json.loads(out)
    assert code == 0 and shown["settings"]["data_dir"] == str(data)
    hospital = shown["hospital"]
    assert hospital["applied_by"] == "admin.test" and hospital["source"] == str(directory.resolve())
    assert [s["finess"] for s in hospital["sites"]] == ["330000027", "330000035"]
    assert hospital["identity_providers"]["sso"]["client_secret_env"] == "OPENSEGUR_SSO_SECRET"
    code, out, _ = run(
        capsys, "config", "show", "--dir", str(directory), "--data-dir", str(tmp_path / "empty")
    )
    assert code == 0 and json.loads(out)["hospital"]["ght"]["finess"] == "330000019"
    code, out, _ = run(capsys, "config", "--data-dir", str(tmp_path / "fresh"), "show")
    assert code == 0 and json.loads(out)["hospital"] is None


def test_diff_against_the_applied_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = write_config(tmp_path / "conf")
    data = tmp_path / "data"
    code, out, _ = run(capsys, "config", "diff", str(directory), "--data-dir", str(data))
    assert code == 0 and out.startswith(
        "Aucune version appliquée dans la base : tout serait ajouté.\nGHT : aucun"
    )
    applied(tmp_path / "data2", directory)
    code, out, _ = run(capsys, "config", "diff", str(directory), "--data-dir", str(tmp_path / "data2"))
    assert code == 0 and out.startswith("Aucun changement :")
    write_config(directory, roles=ROLES.replace('"ops.read"]', '"ops.read", "audit.read"]'))
    code, out, _ = run(capsys, "config", "diff", str(directory), "--data-dir", str(tmp_path / "data2"))
    assert code == 0 and out == "~ rôle admin_technique : + audit.read (Lire la trace d'audit)\n"
    write_config(directory, roles=ROLES.replace('"ops.read"]', '"ops.lire"]'))
    code, _, err = run(capsys, "config", "diff", str(directory), "--data-dir", str(tmp_path / "data2"))
    assert code == 1 and "action inconnue « ops.lire »" in err
