"""The sandbox of the national services, served on its own port: each simulator adds its routes here."""

from __future__ import annotations

from fastapi import FastAPI

from opensegur.sandbox.insi import create_insi_app


def create_sandbox_app() -> FastAPI:
    app = FastAPI(title="OpenSégur sandbox — services nationaux simulés")
    app.include_router(create_insi_app().router)
    return app
