"""Command line: `opensegur serve`, `opensegur worker`, `opensegur sandbox`, `opensegur config`, `opensegur migrate`,
`opensegur send`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from opensegur.config import Settings
from opensegur.conformance import cli as conformance_cli
from opensegur.hospital import cli as hospital_cli
from opensegur.hospital.loader import ConfigInvalid
from opensegur.ops.doctor import Verdict, diagnose, render
from opensegur.security import cli as security_cli
from opensegur.security import hr_cli
from opensegur.transport import mllp_send


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("data_dir", "db", "host", "http_port", "mllp_port", "config_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "demo", False):
        overrides["demo"] = True
    if getattr(args, "port", None) is not None:
        overrides["sandbox_port"] = args.port
    if getattr(args, "no_sandbox", False):
        overrides["sandbox"] = False
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opensegur", description="OpenSégur — plateforme Ségur Vague 2")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path)
        p.add_argument("--db", help="SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite)")

    def config_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            dest="config_dir",
            type=Path,
            metavar="DIR",
            help="the hospital's configuration directory",
        )

    serve = sub.add_parser("serve", help="start the whole platform")
    common(serve)
    config_dir(serve)
    serve.add_argument("--demo", action="store_true", help="load the demo GHT and patients")
    serve.add_argument("--host")
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--mllp-port", type=int)
    serve.add_argument(
        "--no-sandbox", action="store_true", help="do not start the simulated national services"
    )

    worker = sub.add_parser(
        "worker",
        help="run only the job workers on the shared database (more processes or hosts beside `serve`)",
    )
    common(worker)
    config_dir(worker)

    sandbox = sub.add_parser(
        "sandbox", help="start only the simulated national services (DMP, INSi, MSSanté, Annuaire Santé)"
    )
    common(sandbox)
    sandbox.add_argument("--host")
    sandbox.add_argument("--port", type=int, help="HTTP port of the sandbox (default: a free port)")

    cfg = sub.add_parser("config", help="print the effective configuration, without secrets")
    common(cfg)
    hospital_cli.register(cfg)
    mig = sub.add_parser("migrate", help="create or upgrade the database schema")
    common(mig)
    doctor = sub.add_parser(
        "doctor",
        help="test each link of the deployment (MLLP, PACS, DMP, PSC, Annuaire, certificates), in French",
    )
    common(doctor)
    doctor.add_argument(
        "--no-listener", action="store_true", help="skip the MLLP listener (serve not started)"
    )
    mllp_send.register(sub)
    security_cli.register(sub)
    hr_cli.register(sub)
    conformance_cli.register(sub)

    args = parser.parse_args(argv)
    settings = _settings(args)
    level = logging.getLevelName(settings.log_level.upper())
    # Libraries trace what they exchange at DEBUG (signxml the VIHF with the INS, imaplib the mails): only our
    # own loggers, which never carry patient data, go below INFO.
    logging.basicConfig(
        level=max(level, logging.INFO) if isinstance(level, int) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("opensegur").setLevel(level if isinstance(level, int) else logging.INFO)
    # One line per HTTP request to the DMP or INSi would drown the flow's own messages; exchanges are stored.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if hasattr(args, "handler"):
        return int(args.handler(args))
    if args.command == "config":
        json.dump(settings.public_dict(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if args.command == "doctor":
        checks = asyncio.run(diagnose(settings, with_listener=not args.no_listener))
        print(render(checks))
        return 1 if any(c.verdict is Verdict.FAILED for c in checks) else 0
    if args.command == "migrate":
        from opensegur.store.db import Database

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        Database(settings.db_url).migrate()
        return 0
    # Here, not at the top: `opensegur send`, `doctor` and `config` answer without loading the platform's flows.
    from opensegur.server import Platform

    if args.command == "sandbox":
        asyncio.run(Platform(settings).run_sandbox_forever())
        return 0
    try:
        asyncio.run(Platform(settings).run_forever(listen=args.command != "worker"))
    except ConfigInvalid:
        # Each problem was logged with its file and line; the platform does not start on an invalid directory.
        print("Démarrage refusé : le répertoire de configuration est invalide", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
