"""Command line of the security package: ``opensegur token``, ``opensegur audit``, ``opensegur account``.

Each command migrates the database first, so it works on a fresh data directory as on an old one.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from opensegur.config import Settings
from opensegur.security import accounts, audit, tokens, totp
from opensegur.security.errors import SecurityError
from opensegur.security.matrix import Assignment, Scope
from opensegur.security.sealer import ANCHOR_FILE
from opensegur.store.db import Database
from opensegur.store.models import Account

__all__ = ["register"]

Handler = Callable[[argparse.Namespace, Settings, Database], int]


def register(sub: Any) -> None:
    """Add the subcommands to ``opensegur``'s subparsers; the parsed arguments carry ``handler``."""

    def command(parent: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        p.add_argument("--data-dir", type=Path)
        p.add_argument("--db", help="SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite)")
        p.set_defaults(handler=lambda args: run_with_database(handler, args))
        return p

    token = sub.add_parser("token", help="bearer tokens of system accounts").add_subparsers(
        dest="token_command", required=True
    )
    p = command(token, "create", "create a token and print it once", _token_create)
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--scope", default="ght", help="ght, site:<FINESS> or unit:<FINESS>/<UF> (default: ght)")
    p.add_argument("--expires", type=int, metavar="DAYS", help="validity in days (default: no expiry)")
    p = command(token, "revoke", "revoke a token at once", _token_revoke)
    p.add_argument("name")
    command(token, "list", "list tokens with their last use", _token_list)

    aud = sub.add_parser("audit", help="the tamper-evident audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    for name, help_text, handler in (
        ("verify", "seal pending entries, then check the whole chain", _audit_verify),
        (
            "anchor",
            "seal pending entries, then write the chain head to the anchor table and file",
            _audit_anchor,
        ),
    ):
        p = command(aud, name, help_text, handler)
        p.add_argument("--anchor-file", type=Path, help=f"default: <data dir>/{ANCHOR_FILE}")

    account = sub.add_parser("account", help="local accounts").add_subparsers(
        dest="account_command", required=True
    )
    p = command(
        account, "create", "create a local account (password read from stdin or prompted)", _account_create
    )
    p.add_argument("--login", required=True)
    p.add_argument("--name", required=True, help="display name")
    p.add_argument("--role", required=True)
    p.add_argument("--scope", required=True, help="ght, site:<FINESS> or unit:<FINESS>/<UF>")
    p.add_argument("--rpps")
    p.add_argument("--totp", action="store_true", help="enrol a TOTP second factor and print its secret")
    p = command(
        account,
        "password",
        "set a password (first one after an HR arrival, or a reset); ends the account's sessions",
        _account_password,
    )
    p.add_argument("login")
    p.add_argument(
        "--totp", action="store_true", help="also enrol a new TOTP second factor and print its secret"
    )
    p = command(
        account, "deactivate", "departure: deactivate the account and end its sessions", _account_deactivate
    )
    p.add_argument("login")
    p.add_argument("--reason", default="départ")


def run_with_database(handler: Handler, args: argparse.Namespace) -> int:
    """Settings from --data-dir/--db, the database migrated, and a French refusal as exit status 1."""
    settings = Settings(**{k: v for k in ("data_dir", "db") if (v := getattr(args, k)) is not None})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    try:
        db.migrate()
        return handler(args, settings, db)
    except SecurityError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    finally:
        db.dispose()


def operator() -> str:
    """Who runs the command, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in a bare container
        return "cli"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "—"


def _token_create(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    with db.session() as s:
        secret = tokens.create_token(
            s, args.name, args.role, args.scope, expires_days=args.expires, created_by=operator()
        )
    print(secret)
    print(f"Jeton « {args.name} » créé. Il ne sera plus affiché : conservez-le maintenant.", file=sys.stderr)
    return 0


def _token_revoke(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    with db.session() as s:
        tokens.revoke_token(s, args.name, by=operator())
    print(f"Jeton « {args.name} » révoqué.")
    return 0


def _token_list(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    with db.session() as s:
        rows = [
            (
                t.name,
                t.role,
                t.scope,
                _when(t.created_at),
                _when(t.expires_at),
                _when(t.last_used_at),
                _when(t.revoked_at),
            )
            for t in tokens.list_tokens(s)
        ]
    header = ("Nom", "Rôle", "Périmètre", "Créé le", "Expire le", "Dernier usage", "Révoqué le")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _anchor_file(args: argparse.Namespace, settings: Settings) -> Path:
    return args.anchor_file if args.anchor_file is not None else settings.data_dir / ANCHOR_FILE


def _audit_verify(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    audit.seal_pending(db)
    report = audit.verify(db, _anchor_file(args, settings))
    print(report.summary(), file=sys.stdout if report.intact else sys.stderr)
    return 0 if report.intact else 1


def _audit_anchor(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    audit.seal_pending(db)
    row = audit.anchor(db, _anchor_file(args, settings))
    if row is None:
        print("Trace d'audit vide : rien à ancrer.")
    else:
        print(f"Tête de chaîne ancrée : maillon n° {row.seq}, empreinte {row.hash}.")
    return 0


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Mot de passe : ")
    if getpass.getpass("Confirmez le mot de passe : ") != first:
        raise SecurityError("Les deux mots de passe diffèrent")
    return first


def _account_create(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    try:
        assignment = Assignment(args.role, Scope.parse(args.scope))
    except ValueError as exc:
        raise SecurityError(str(exc)) from None
    password = _read_password()
    with db.session() as s:
        account, secret = accounts.create_account(
            s,
            args.login,
            args.name,
            [assignment],
            password,
            rpps=args.rpps,
            with_totp=args.totp,
            by=operator(),
        )
        codes = totp.set_recovery_codes(account) if secret is not None else []
    print(f"Compte « {account.login} » créé ({assignment.role}, {assignment.scope.label}).")
    _print_second_factor(account.login, secret, codes)
    return 0


def _account_password(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    password = _read_password()
    with db.session() as s:
        account = s.scalar(select(Account).where(Account.login == args.login.strip().casefold()))
        if account is None:
            raise SecurityError(f"Aucun compte « {args.login} »")
        secret = accounts.set_password(s, account, password, with_totp=args.totp, by=operator())
        codes = totp.set_recovery_codes(account) if secret is not None else []
    print(f"Mot de passe de « {account.login} » enregistré ; ses sessions sont fermées.")
    _print_second_factor(account.login, secret, codes)
    return 0


def _print_second_factor(login: str, secret: str | None, codes: list[str]) -> None:
    """A new TOTP secret, its enrolment URI and the recovery codes: shown once, here, never stored in clear."""
    if secret is None:
        return
    print(f"Secret TOTP : {secret}")
    print(f"URI d'enrôlement : {totp.provisioning_uri(secret, login)}")
    print("Codes de secours (chacun utilisable une fois, affichés une seule fois) :")
    for code in codes:
        print(f"  {code}")


def _account_deactivate(args: argparse.Namespace, settings: Settings, db: Database) -> int:
    with db.session() as s:
        account = s.scalar(select(Account).where(Account.login == args.login.strip().casefold()))
        if account is None:
            raise SecurityError(f"Aucun compte « {args.login} »")
        revoked = accounts.deactivate(s, account, args.reason, by=operator())
    print(f"Compte « {account.login} » désactivé ; {revoked} session(s) fermée(s).")
    return 0
