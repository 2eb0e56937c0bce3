"""The sandbox of the national services, served on its own port: each simulator adds its routes here."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from opensegur.sandbox.dmp.app import create_dmp_app
from opensegur.sandbox.insi import create_insi_app
from opensegur.security.pki import TestPki


def create_sandbox_app(data_dir: Path, pki: TestPki) -> FastAPI:
    app = FastAPI(title="OpenSégur sandbox — services nationaux simulés")
    app.include_router(create_insi_app().router)
    app.include_router(create_dmp_app(data_dir, pki, prefix="/dmp").router)
    return app
