"""The sandbox of the national services, served on its own port: each simulator adds its routes here.

The MSSanté operator also listens on SMTP and IMAP ports of its own; its HTTP side (inspect, admin) is mounted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from opensegur.sandbox.annuaire import create_annuaire_router
from opensegur.sandbox.dmp.app import create_dmp_app
from opensegur.sandbox.dmp.patients import DmpPatient, PatientRegistry
from opensegur.sandbox.drimbox import RemoteDrimbox, create_drimbox_router, publish_demo_exams
from opensegur.sandbox.insi import create_insi_app
from opensegur.sandbox.mssante import MssOperator, create_mssante_router
from opensegur.sandbox.psc import PscSandbox, create_psc_router
from opensegur.security.pki import TestPki


def create_sandbox_app(
    data_dir: Path,
    pki: TestPki,
    operator: MssOperator | None = None,
    endpoints: dict[str, Any] | None = None,
    psc: PscSandbox | None = None,
    dmp_patients: PatientRegistry | None = None,
    dmp_demo_content: Sequence[DmpPatient] = (),
    drimbox: RemoteDrimbox | None = None,
) -> FastAPI:
    """``drimbox``: a remote DRIMbox, serving the images of the demo imaging report's exam for the patients of
    ``dmp_demo_content``, its manifests published in their DMP."""
    app = FastAPI(title="OpenSégur sandbox — services nationaux simulés")
    app.include_router(create_insi_app().router)
    dmp = create_dmp_app(data_dir, pki, prefix="/dmp", patients=dmp_patients, demo_content=dmp_demo_content)
    app.include_router(dmp.router)
    if drimbox is not None:
        publish_demo_exams(drimbox, dmp.state.dmp.store, dmp_demo_content, datetime.now(UTC))
        app.include_router(create_drimbox_router(drimbox))
    app.include_router(create_annuaire_router(), prefix="/annuaire")
    if operator is not None:
        app.include_router(create_mssante_router(operator))
    if psc is not None:
        app.include_router(create_psc_router(psc), prefix="/psc")
    if endpoints is not None:
        # The sandbox run on its own (`opensegur sandbox`) publishes where it listens, as the platform does.
        @app.get("/sandbox/endpoints", tags=["sandbox"])
        async def sandbox_endpoints() -> dict[str, Any]:
            return endpoints

    return app
