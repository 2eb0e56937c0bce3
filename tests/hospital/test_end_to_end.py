"""A hospital that is not the demo one, configured entirely from a directory written here, receives an ADT from
its DPI; an ADT from an IPP domain it did not declare is refused with the file to edit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import hl7
import httpx
import pytest
from sqlalchemy import select

from opensegur.config import Settings
from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.hospital.apply import load_and_apply
from opensegur.hospital.loader import ConfigInvalid
from opensegur.security import accounts
from opensegur.security.matrix import Assignment, Scope
from opensegur.server import Platform
from opensegur.store.db import Database
from opensegur.store.models import ConfigVersion, Structure
from opensegur.web.app import create_app
from tests.flows.helpers import hl7 as msg
from tests.flows.helpers import msh, patient_by_ipp, pid

from .helpers import SITES, write_config

NORD, SUD = "330000027", "330000035"


def from_dpi(cid: str, segment: str) -> bytes:
    header = msh("A28", cid).replace("|GAM|CHU-X|OPENSEGUR|CHU-X|", "|DPI-MV|CHMV-NORD|OPENSEGUR|CHMV|")
    return msg(header, "EVN||20240306111154", segment)


def site_of(db: Database, ipp: str) -> str:
    patient = patient_by_ipp(db, ipp)
    assert patient is not None
    with db.session() as s:
        return s.get_one(Structure, patient.structure_id).finess


def test_an_adt_from_the_configured_dpi_creates_the_patient_on_its_site(db: Database, tmp_path: Path) -> None:
    load_and_apply(db, write_config(tmp_path), "admin.test")
    intake = Hl7Intake(db)
    sud = pid("5001", name="GARONNE").replace("CHU-X&000897406&N", "CHMV-S&1.2.250.1.999.77.2&ISO")
    result = intake.handle(from_dpi("MV1", sud))
    assert result.ack_code == "AA", result.ack
    assert site_of(db, "5001") == SUD
    nord = pid("5002", name="DORDOGNE").replace("CHU-X&000897406&N", "CHMV-N&1.2.250.1.999.77.1&ISO")
    assert intake.handle(from_dpi("MV2", nord)).ack_code == "AA"
    assert site_of(db, "5002") == NORD


def test_an_adt_from_an_undeclared_ipp_domain_names_the_file_to_edit(db: Database, tmp_path: Path) -> None:
    load_and_apply(db, write_config(tmp_path), "admin.test")
    segment = pid("5003").replace("CHU-X&000897406&N", "CHMV-X&1.2.250.1.999.77.9&ISO")
    raw = msg("MSH|^~\\&|AUTRE|AILLEURS|OPENSEGUR|CHMV|2024||ADT^A28^ADT_A05|MV3|P|2.5", "EVN||2024", segment)
    result = Hl7Intake(db).handle(raw)
    assert result.ack_code == "AE"
    err = hl7.parse(result.ack.decode().replace("\n", "\r")).segment("ERR")
    assert str(err[2]) == "PID^1^3" and str(err[3]).startswith("204")
    assert "CHMV-X" in str(err[8]) and "sites.toml du répertoire de configuration (ipp_domain" in str(err[8])
    assert patient_by_ipp(db, "5003") is None


async def test_reload_applies_a_valid_directory_and_keeps_the_last_on_an_invalid_one(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "conf")
    platform = Platform(Settings(data_dir=tmp_path / "data", config_dir=directory, sandbox=False))
    platform.db.migrate()
    try:
        first = await platform.reload_config("admin.test")
        assert first is not None and first.version_id is not None
        write_config(directory, sites=SITES.replace('"Gériatrie"', '"Gériatrie aiguë"'))
        second = await platform.reload_config("SIGHUP")
        assert second is not None and second.version_id is not None
        write_config(directory, sites=SITES.replace('namespace = "CHMV-S"', 'namespace = "CHMV-N"'))
        with pytest.raises(ConfigInvalid, match="sites.toml, ligne"):
            await platform.reload_config("SIGHUP")
        with platform.db.session() as s:
            assert list(s.scalars(select(ConfigVersion.applied_by).order_by(ConfigVersion.id))) == [
                "admin.test",
                "SIGHUP",
            ]
            assert s.scalar(select(Structure.ipp_authority).where(Structure.finess == SUD)) == "CHMV-S"
    finally:
        platform.db.dispose()


async def test_its_users_log_in_and_see_the_patients_of_their_site(db: Database, tmp_path: Path) -> None:
    """The same hospital's roles (its roles.toml, not the demo's) govern what its people see once logged in."""
    hospital, _ = load_and_apply(db, write_config(tmp_path), "admin.test")
    intake = Hl7Intake(db)
    sud = pid("5101", name="GARONNE").replace("CHU-X&000897406&N", "CHMV-S&1.2.250.1.999.77.2&ISO")
    nord = pid("5102", name="DORDOGNE").replace("CHU-X&000897406&N", "CHMV-N&1.2.250.1.999.77.1&ISO")
    assert intake.handle(from_dpi("MV11", sud)).ack_code == "AA"
    assert intake.handle(from_dpi("MV12", nord)).ack_code == "AA"
    password = "mot-de-passe-montval-2026"
    with db.session() as s:
        accounts.create_account(
            s,
            "sec.sud",
            "Secrétariat Sud",
            [Assignment("secretaire_medicale", Scope.parse(f"site:{SUD}"))],
            password,
        )
    runtime = SimpleNamespace(settings=Settings(data_dir=tmp_path), db=db, workers=None, hospital=hospital)
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://chmv.test") as web:
        r = await web.post("/connexion", data={"login": "sec.sud", "password": password})
        assert r.status_code == 303 and r.headers["location"] == "/identites"
        listed = (await web.get("/api/v1/patients")).json()["items"]
        assert [p["traits"]["birth_name"] for p in listed] == [
            "GARONNE"
        ]  # the Nord patient is not in her scope
        # This hospital's secretaries may not send documents: its roles.toml grants no documents.send.
        assert (await web.post("/api/v1/mssante/appointments", json={})).status_code == 403
