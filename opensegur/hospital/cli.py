"""``opensegur config validate|show|diff|schema``: the hospital's configuration directory from the command line.

Plain ``opensegur config`` keeps printing the effective settings (the parent command handles it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from opensegur.config import Settings
from opensegur.hospital.apply import applied_config
from opensegur.hospital.diff import diff_configs
from opensegur.hospital.loader import ConfigInvalid, load_directory
from opensegur.hospital.model import CONFIG_FILES, HospitalConfig
from opensegur.hospital.schema import file_schemas, render, write_schemas
from opensegur.store.db import Database
from opensegur.store.models import ConfigVersion

__all__ = ["register"]


def register(config_parser: argparse.ArgumentParser) -> None:
    """Add the subcommands under ``opensegur config``; the parsed arguments carry ``handler``."""
    sub = config_parser.add_subparsers(dest="config_command")

    def database_args(p: argparse.ArgumentParser) -> None:
        # SUPPRESS: given after the subcommand or before it (`config --db URL show`), never reset by the other.
        p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
        p.add_argument("--db", default=argparse.SUPPRESS, help="SQLAlchemy URL (default: SQLite in data dir)")

    p = sub.add_parser("validate", help="check a configuration directory (French messages, file and line)")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("show", help="print the settings and the hospital configuration in force")
    database_args(p)
    p.add_argument(
        "--dir", type=Path, help="show this directory instead of the version applied in the database"
    )
    p.set_defaults(handler=_show)

    p = sub.add_parser(
        "diff", help="what applying DIR would change compared with the version in the database"
    )
    database_args(p)
    p.add_argument("directory", type=Path, metavar="DIR")
    p.set_defaults(handler=_diff)

    p = sub.add_parser("schema", help="print the JSON Schema of the configuration files (for editors)")
    p.add_argument("file", nargs="?", choices=[f.name for f in CONFIG_FILES], help="one file (default: all)")
    p.add_argument("--output", type=Path, metavar="DIR", help="write one .schema.json per file into DIR")
    p.set_defaults(handler=_schema)


def _load(directory: Path) -> HospitalConfig | None:
    try:
        return load_directory(directory)
    except ConfigInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problème(s) : configuration refusée", file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    config = _load(args.directory)
    if config is None:
        return 1
    units = sum(len(s.units) for s in config.sites)
    print(
        f"Configuration valide : {len(config.sites)} site(s), {units} UF, {len(config.dpis)} DPI, "
        f"{len(config.mailboxes)} boîte(s) MSSanté, {len(config.roles)} rôle(s) — empreinte {config.sha256}"
    )
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**{k: v for k in ("data_dir", "db") if (v := getattr(args, k, None)) is not None})


def _database(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.migrate()
    return db


def _show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.dir is not None:
        config = _load(args.dir)
        if config is None:
            return 1
        hospital: dict[str, Any] | None = {"source": str(args.dir), **_dump(config)}
    else:
        try:
            hospital = _applied(_database(settings))
        except ConfigInvalid as exc:
            print(f"La version appliquée dans la base n'est plus lisible :\n{exc}", file=sys.stderr)
            return 1
    json.dump(
        {"settings": settings.public_dict(), "hospital": hospital}, sys.stdout, indent=2, ensure_ascii=False
    )
    sys.stdout.write("\n")
    return 0


def _dump(config: HospitalConfig) -> dict[str, Any]:
    return {"sha256": config.sha256, **config.model_dump(mode="json", exclude={"files"})}


def _applied(db: Database) -> dict[str, Any] | None:
    """The version applied last, with who applied it, when and from where; None when none was."""
    try:
        with db.session() as s:
            last = s.scalar(select(ConfigVersion).order_by(ConfigVersion.id.desc()).limit(1))
            if last is None:
                return None
            meta = {
                "source": last.source,
                "applied_by": last.applied_by,
                "applied_at": last.applied_at.isoformat(),
            }
        config = applied_config(db)
    finally:
        db.dispose()
    return {**meta, **_dump(config)} if config is not None else None


def _diff(args: argparse.Namespace) -> int:
    config = _load(args.directory)
    if config is None:
        return 1
    db = _database(_settings(args))
    try:
        applied = applied_config(db)
    except ConfigInvalid as exc:
        print(f"La version appliquée dans la base n'est plus lisible :\n{exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    if applied is None:
        print("Aucune version appliquée dans la base : tout serait ajouté.")
    elif applied.sha256 == config.sha256:
        print(f"Aucun changement : {args.directory} est la version appliquée (empreinte {config.sha256}).")
        return 0
    changes = diff_configs(applied, config)
    print(
        "\n".join(changes)
        if changes
        else "Aucun changement de fond (mise en forme ou commentaires seulement)."
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    if args.output is not None:
        for path in write_schemas(args.output):
            print(path)
        return 0
    schemas = file_schemas()
    sys.stdout.write(render(schemas[args.file] if args.file else dict(schemas)))
    return 0
