"""The job handlers of the inbound flow, named in :data:`opensegur.flows.jobs.HANDLER_FACTORIES`."""

from __future__ import annotations

import asyncio
from typing import Any

from opensegur.flows.mss_inbound.context import MssInboundContext
from opensegur.flows.mss_inbound.integration import integrate_mail
from opensegur.flows.mss_inbound.mdn import send_mdn
from opensegur.flows.mss_inbound.to_dpi import send_results_to_dpi, send_to_dpi
from opensegur.store.models import Job


def make_integrate_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return {"status": await asyncio.to_thread(integrate_mail, ctx, int(job.args["mail_id"]))}

    return handle


def make_to_dpi_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_to_dpi(ctx, int(job.args["document_id"]), job.attempts)

    return handle


def make_mdn_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_mdn(
            ctx, int(job.args["mail_id"]), job.args.get("code"), bool(job.args.get("manual"))
        )

    return handle


def make_results_to_dpi_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_results_to_dpi(ctx, int(job.args["document_id"]), job.attempts)

    return handle
