"""Write a configuration into the database: the GHT and its sites (structures), their units, and the version
applied (content hash, who, when, from where, the files), so every change of the hospital's configuration is
kept and can be shown with its diff to the previous one.

Nothing the patients' data cites is ever deleted: a site or a unit that left the files stays in the database,
and the application says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opensegur.hospital.loader import load_directory, load_files
from opensegur.hospital.model import HospitalConfig, SiteConfig
from opensegur.store.db import Database
from opensegur.store.models import ConfigVersion, Patient, Structure, Unit

# The keys of Structure.settings this configuration owns; others (set by hand or other features) are kept.
SITE_KEYS = ("facility_aliases", "secteur_activite", "dmp_prefetch", "dpis", "mailboxes")


@dataclass(frozen=True)
class ApplyResult:
    version_id: int | None  # the version recorded; None when the content is the one applied last
    warnings: list[str] = field(default_factory=list)


def apply_config(db: Database, config: HospitalConfig, applied_by: str, source: str) -> ApplyResult:
    """Upsert the structures and units the configuration declares, in one transaction, and record the version
    when its content hash differs from the last one applied."""
    with db.session() as s:
        warnings = _apply_structures(s, config)
        last = s.scalar(select(ConfigVersion.sha256).order_by(ConfigVersion.id.desc()).limit(1))
        if last == config.sha256:
            return ApplyResult(None, warnings)
        version = ConfigVersion(
            sha256=config.sha256, applied_by=applied_by, source=source, files=dict(config.files)
        )
        s.add(version)
        s.flush()
        return ApplyResult(version.id, warnings)


def load_and_apply(db: Database, directory: Path, applied_by: str) -> tuple[HospitalConfig, ApplyResult]:
    """Read, validate and apply ``directory`` (start, SIGHUP, the admin action); raises
    :class:`~opensegur.hospital.loader.ConfigInvalid` and changes nothing when the directory is invalid."""
    config = load_directory(directory)
    return config, apply_config(db, config, applied_by, str(directory.resolve()))


def applied_config(db: Database) -> HospitalConfig | None:
    """The configuration of the last applied version, read back from its files; None when none was applied."""
    with db.session() as s:
        files = s.scalar(select(ConfigVersion.files).order_by(ConfigVersion.id.desc()).limit(1))
    return load_files(files) if files is not None else None


def site_settings(config: HospitalConfig, site: SiteConfig) -> dict[str, Any]:
    """What a site's structure row carries for the flows: the names that resolve a message to it, and its
    DPIs and mailboxes."""
    known = {site.finess, site.ipp_domain.namespace, site.ipp_domain.oid}
    aliases = list(site.facility_aliases)
    dpis = [d for d in config.dpis if d.site == site.finess]
    # A DPI's MSH-4 names its site too; names the site already answers to are not repeated.
    for dpi in dpis:
        aliases += [name for name in dpi.msh4 if name not in known and name not in aliases]
    return {
        "facility_aliases": aliases,
        "secteur_activite": site.secteur_activite,
        "dmp_prefetch": site.dmp_prefetch,
        "dpis": [d.model_dump(mode="json", exclude={"site"}) for d in dpis],
        "mailboxes": [
            m.model_dump(mode="json", exclude={"site"}) for m in config.mailboxes if m.site == site.finess
        ],
    }


def _apply_structures(s: Session, config: HospitalConfig) -> list[str]:
    warnings: list[str] = []
    by_finess = {row.finess: row for row in s.scalars(select(Structure))}
    ej = by_finess.get(config.ght.finess)
    if ej is None:
        ej = Structure(kind="EJ", finess=config.ght.finess, name=config.ght.name, settings={})
        s.add(ej)
        s.flush()
    ej.kind, ej.name = "EJ", config.ght.name
    for site in config.sites:
        row = by_finess.get(site.finess)
        if row is None:
            row = Structure(kind="EG", finess=site.finess, settings={})
            s.add(row)
        row.kind, row.name, row.parent_id = "EG", site.name, ej.id
        row.ipp_authority, row.ipp_authority_oid = site.ipp_domain.namespace, site.ipp_domain.oid
        # A new dict: the JSON column notices reassignment, not mutation in place.
        row.settings = {**(row.settings or {}), **site_settings(config, site)}
        s.flush()
        warnings += _apply_units(s, row, site)
    declared = {site.finess for site in config.sites}
    for row in by_finess.values():
        if row.kind == "EG" and row.finess not in declared:
            patients = s.scalar(
                select(func.count()).select_from(Patient).where(Patient.structure_id == row.id)
            )
            warnings.append(
                f"Le site « {row.name} » (FINESS {row.finess}) n'est plus déclaré dans sites.toml : il est "
                f"conservé dans la base ({patients} patient(s) y sont rattachés) et ses messages restent reconnus"
            )
    return warnings


def _apply_units(s: Session, row: Structure, site: SiteConfig) -> list[str]:
    existing = {u.code: u for u in s.scalars(select(Unit).where(Unit.structure_id == row.id))}
    for unit in site.units:
        if unit.code in existing:
            existing[unit.code].name = unit.label
        else:
            s.add(Unit(structure_id=row.id, code=unit.code, name=unit.label))
    declared = {u.code for u in site.units}
    return [
        f"L'UF {code} « {unit.name} » du site « {site.name} » n'est plus déclarée dans sites.toml : "
        "elle est conservée dans la base"
        for code, unit in existing.items()
        if code not in declared
    ]
