"""Command line of the HR feed: ``opensegur accounts import FILE [--dry-run]`` and ``opensegur accounts list``.

The import checks the file against the configuration last applied (``opensegur config``), and the RPPS numbers
against the Annuaire Santé when one is configured (``annuaire_url`` and its key); without one it says the
numbers were only checked for their key.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from opensegur.config import Settings
from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.hospital.apply import applied_config
from opensegur.security import hr_csv
from opensegur.security.cli import operator, run_with_database
from opensegur.security.errors import SecurityError
from opensegur.security.provisioning import ProvisioningReport
from opensegur.store.db import Database
from opensegur.store.models import Account

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``accounts`` to ``opensegur``'s subparsers; the parsed arguments carry ``handler``."""
    accounts = sub.add_parser(
        "accounts", help="accounts fed by HR (CSV import) and their list"
    ).add_subparsers(dest="accounts_command", required=True)
    p = accounts.add_parser("import", help="apply an HR CSV file: arrivals, moves, departures")
    p.add_argument("file", type=Path)
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.set_defaults(handler=lambda args: run_with_database(_import, args))
    p = accounts.add_parser("list", help="list accounts with their source, state and assignments")
    p.set_defaults(handler=lambda args: run_with_database(_list, args))
    for parser in (p, accounts.choices["import"]):
        parser.add_argument("--data-dir", type=Path)
        parser.add_argument("--db", help="SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite)")


def _annuaire(settings: Settings) -> AnnuaireClient | None:
    if not settings.annuaire_url or settings.annuaire_api_key is None:
        return None
    return AnnuaireClient(
        settings.annuaire_url,
        settings.annuaire_api_key.get_secret_value(),
        timeout=settings.annuaire_timeout_s,
        verify=settings.annuaire_ca or True,
    )


def _import(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    config = applied_config(db)
    if config is None:
        raise SecurityError(
            "Aucune configuration d'établissement appliquée : appliquez-la d'abord (opensegur config), "
            "les rôles, sites et unités du fichier RH s'y vérifient"
        )
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise SecurityError(f"Fichier illisible : {args.file} ({exc.strerror})") from None
    client = _annuaire(settings)
    if client is None:
        print("Annuaire Santé non configuré : RPPS vérifiés sur leur clé seulement.", file=sys.stderr)

    async def _go() -> ProvisioningReport:
        try:
            return await hr_csv.import_hr_csv(
                db,
                data,
                origin=args.file.name,
                config=config,
                annuaire=client,
                by=operator(),
                dry_run=args.dry_run,
            )
        finally:
            if client is not None:
                await client.aclose()

    print(asyncio.run(_go()).summary())
    return 0


def _list(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    with db.session() as s:
        rows = [
            (
                a.login,
                a.display_name,
                a.source,
                "actif" if a.active else "désactivé",
                a.departed_at.strftime("%Y-%m-%d") if a.departed_at else "—",
                ", ".join(f"{x['role']} ({x.get('scope', 'ght')})" for x in a.assignments) or "—",
            )
            for a in s.scalars(select(Account).order_by(Account.login))
        ]
    header = ("Identifiant", "Nom", "Source", "État", "Départ", "Affectations")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
