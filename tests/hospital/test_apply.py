"""Applying a configuration to the database: structures and units upserted, versions kept, nothing deleted."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from opensegur.hospital.apply import applied_config, apply_config, load_and_apply
from opensegur.hospital.loader import load_files
from opensegur.ops.demo import load_demo
from opensegur.store.db import Database
from opensegur.store.models import ConfigVersion, Patient, Structure, Unit

from .helpers import FILES, SITES, write_config


def versions(db: Database) -> list[ConfigVersion]:
    with db.session() as s:
        rows = list(s.scalars(select(ConfigVersion).order_by(ConfigVersion.id)))
        s.expunge_all()
    return rows


def test_apply_creates_the_structures_and_records_the_version(db: Database, tmp_path: Path) -> None:
    config, result = load_and_apply(db, write_config(tmp_path), "admin.test")
    assert result.version_id is not None and result.warnings == []
    with db.session() as s:
        ej = s.scalars(select(Structure).where(Structure.finess == "330000019")).one()
        nord = s.scalars(select(Structure).where(Structure.finess == "330000027")).one()
        sud = s.scalars(select(Structure).where(Structure.finess == "330000035")).one()
        assert (ej.kind, nord.kind, nord.parent_id, sud.parent_id) == ("EJ", "EG", ej.id, ej.id)
        assert (nord.ipp_authority, nord.ipp_authority_oid) == ("CHMV-N", "1.2.250.1.999.77.1")
        # The DPI's MSH-4 names its site as well as the declared alias.
        assert nord.settings["facility_aliases"] == ["CHMV", "CHMV-NORD"]
        assert nord.settings["secteur_activite"] == "SA01"
        assert nord.settings["dpis"][0]["zam_endpoint"] == "10.20.0.5:6661"
        assert nord.settings["mailboxes"] == [
            {"address": "urgences@ch-montval.mssante.fr", "kind": "organisationnelle", "unit": "1001"}
        ]
        assert sorted(s.scalars(select(Unit.code).where(Unit.structure_id == nord.id))) == ["1001", "2002"]
    (version,) = versions(db)
    assert (version.sha256, version.applied_by) == (config.sha256, "admin.test")
    assert version.source == str(tmp_path.resolve()) and version.files == FILES
    assert applied_config(db) == config


def test_same_content_twice_records_one_version_a_change_records_another(db: Database) -> None:
    first = apply_config(db, load_files(dict(FILES)), "a", "dir")
    again = apply_config(db, load_files(dict(FILES)), "b", "dir")
    assert first.version_id is not None and again.version_id is None
    assert len(versions(db)) == 1
    changed = load_files({**FILES, "sites.toml": SITES.replace('"Pneumologie"', '"Pneumologie adulte"')})
    assert apply_config(db, changed, "c", "dir").version_id is not None
    assert [v.applied_by for v in versions(db)] == ["a", "c"]
    with db.session() as s:
        assert s.scalar(select(Unit.name).where(Unit.code == "2002")) == "Pneumologie adulte"
        assert s.scalar(select(func.count()).select_from(Structure)) == 3


def test_a_removed_site_or_unit_is_reported_and_kept(db: Database) -> None:
    apply_config(db, load_files(dict(FILES)), "a", "dir")
    with db.session() as s:
        sud = s.scalars(select(Structure).where(Structure.finess == "330000035")).one()
        s.add(Patient(structure_id=sud.id, birth_name="X", first_names="Y", sex="F", status="PROV"))
    # The second site leaves the file, and unit 2002 becomes 2003.
    only_nord = SITES[: SITES.index("[[sites]]", 10)].replace(
        '[[sites.units]]\ncode = "2002"', '[[sites.units]]\ncode = "2003"'
    )
    result = apply_config(db, load_files({**FILES, "sites.toml": only_nord}), "b", "dir")
    assert result.warnings == [
        "L'UF 2002 « Pneumologie » du site « CH de Montval — site Nord » n'est plus déclarée dans sites.toml : "
        "elle est conservée dans la base",
        "Le site « CH de Montval — site Sud » (FINESS 330000035) n'est plus déclaré dans sites.toml : il est "
        "conservé dans la base (1 patient(s) y sont rattachés) et ses messages restent reconnus",
    ]
    with db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(Structure).where(Structure.finess == "330000035")) == 1
        )
        assert s.scalar(select(func.count()).select_from(Unit).where(Unit.code == "2002")) == 1


def test_the_demo_structures_come_from_the_demo_directory(db: Database) -> None:
    assert load_demo(db) is True
    assert load_demo(db) is False
    assert len(versions(db)) == 1
    with db.session() as s:
        rows = {r.finess: r for r in s.scalars(select(Structure))}
        assert (rows["750000010"].kind, rows["750000010"].name) == ("EJ", "GHT Rives de Seine (démo)")
        breteuil, hsv = rows["750000028"], rows["750000036"]
        assert (breteuil.name, breteuil.ipp_authority, breteuil.ipp_authority_oid) == (
            "CHU-X — site Breteuil (démo)",
            "CHU-X",
            "000897406",
        )
        assert (hsv.name, hsv.ipp_authority, hsv.ipp_authority_oid) == (
            "Hôpital Saint-Vincent (démo)",
            "HSV",
            "1.2.250.1.999.1.1.2",
        )
        assert breteuil.settings["facility_aliases"] == [
            "Organisation-X",
            "Organisation-Y",
            "labo",
            "300017985",
            "1120459876",
        ]
        assert hsv.settings["facility_aliases"] == []
        units = {(u.site.finess, u.code, u.name) for u in s.scalars(select(Unit))}
        assert ("750000028", "6268", "Chirurgie viscérale") in units and len(units) == 7
        assert (s.scalar(select(func.count()).select_from(Patient)) or 0) > 40
