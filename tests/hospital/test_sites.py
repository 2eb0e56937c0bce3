"""Which site a name designates, and when the kept names are read again: never stale after a change, whoever
made it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, insert

from opensegur.hospital.apply import apply_config
from opensegur.hospital.loader import load_files
from opensegur.hospital.sites import resolve_site
from opensegur.store.db import Database
from opensegur.store.models import ConfigVersion, Structure

from .helpers import FILES, SITES


def site_finess(db: Database, names: list[str]) -> str | None:
    with db.session() as s:
        site = resolve_site(s, names)
        return site.finess if site is not None else None


def test_a_site_answers_to_its_ipp_domain_finess_and_aliases_in_the_order_asked(db: Database) -> None:
    apply_config(db, load_files(dict(FILES)), "test", "dir")
    assert site_finess(db, ["CHMV-N"]) == "330000027"  # IPP namespace
    assert site_finess(db, ["1.2.250.1.999.77.1"]) == "330000027"  # IPP OID
    assert site_finess(db, ["330000035"]) == "330000035"  # FINESS
    assert site_finess(db, ["CHMV-NORD"]) == "330000027"  # declared alias
    # The IPP domain comes first and decides, whatever the facility the DPI names after it.
    assert site_finess(db, ["", "330000035", "CHMV-NORD"]) == "330000035"
    assert site_finess(db, ["inconnu", ""]) is None
    assert site_finess(db, ["330000019"]) is None  # the legal entity is not a site


def test_a_configuration_applied_again_is_seen_at_the_next_message(db: Database) -> None:
    apply_config(db, load_files(dict(FILES)), "test", "dir")
    assert site_finess(db, ["CHMV"]) == "330000027" and site_finess(db, ["CHMV-BIS"]) is None
    renamed = SITES.replace('facility_aliases = ["CHMV"]', 'facility_aliases = ["CHMV-BIS"]')
    assert renamed != SITES
    apply_config(db, load_files({**FILES, "sites.toml": renamed}), "test", "dir")
    assert site_finess(db, ["CHMV-BIS"]) == "330000027"
    assert site_finess(db, ["CHMV"]) is None


def test_a_site_written_by_another_process_is_seen_once_its_version_is_recorded(db: Database) -> None:
    apply_config(db, load_files(dict(FILES)), "test", "dir")
    assert site_finess(db, ["330000043"]) is None
    # Another host applies a configuration: its own connection, no event of this process's ORM.
    other = create_engine(db.url)
    with other.begin() as conn:
        conn.execute(
            insert(Structure.__table__).values(kind="EG", finess="330000043", name="Est", settings={})
        )
        conn.execute(
            insert(ConfigVersion.__table__).values(sha256="0" * 64, applied_by="autre", source="x", files={})
        )
    other.dispose()
    assert site_finess(db, ["330000043"]) == "330000043"


def test_a_site_written_in_this_process_is_seen_at_once_even_in_its_own_transaction(db: Database) -> None:
    assert site_finess(db, ["330000050"]) is None
    with db.session() as s:
        s.add(
            Structure(kind="EG", finess="330000050", name="Ouest", settings={"facility_aliases": ["OUEST"]})
        )
        site = resolve_site(s, ["OUEST"])
        assert site is not None and site.finess == "330000050"
    assert site_finess(db, ["OUEST"]) == "330000050"
    with db.session() as s:
        site = resolve_site(s, ["OUEST"])
        assert site is not None
        site.settings = {"facility_aliases": ["OUEST-2"]}
    assert site_finess(db, ["OUEST"]) is None and site_finess(db, ["OUEST-2"]) == "330000050"


def test_each_database_keeps_its_own_names(db: Database, tmp_path: Path) -> None:
    apply_config(db, load_files(dict(FILES)), "test", "dir")
    assert site_finess(db, ["CHMV-N"]) == "330000027"
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    other.migrate()
    assert site_finess(other, ["CHMV-N"]) is None
    other.dispose()
