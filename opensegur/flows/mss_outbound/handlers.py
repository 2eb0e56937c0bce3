"""The job handlers of the outbound flow, as ``jobs.HANDLER_FACTORIES`` names them: ``mss.send``,
``mss.appointment``, ``mss.zam``.
"""

from __future__ import annotations

from typing import Any

from opensegur.flows.mss_outbound.appointments import send_appointment_mail
from opensegur.flows.mss_outbound.common import MssOutboundConfig
from opensegur.flows.mss_outbound.document_mail import send_document_mail
from opensegur.flows.mss_outbound.reports import send_mss_zam
from opensegur.flows.mssante_ports import DpiSender, MailSender
from opensegur.store.db import Database
from opensegur.store.models import Job


def make_mss_send_handler(db: Database, mailer: MailSender, cfg: MssOutboundConfig) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_document_mail(db, mailer, cfg, int(job.args["delivery_id"]))

    return handle


def make_appointment_handler(db: Database, mailer: MailSender, cfg: MssOutboundConfig) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_appointment_mail(db, mailer, cfg, int(job.args["mail_id"]))

    return handle


def make_mss_zam_handler(db: Database, dpi: DpiSender, *, app: str = "OPENSEGUR") -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_mss_zam(db, dpi, job.id, dict(job.args), app=app)

    return handle
