"""Flow: an exam of another hospital, once in the image cache, imported into this site's PACS (C-STORE, or STOW-RS
for a PACS configured so) when a professional asks — so that it is read beside the site's own exams, with the
PACS's tools.

A durable job (``drimbox.import``), queued by the imaging tab: it needs no professional's token (the PACS trusts
this DRIMbox's AE title), so it outlives the session and the process; a PACS that does not answer is retried, one
that refuses an instance ends the job with its reason. Imported once per manifest."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.orm import Session

from opensegur.errors import RetryLater
from opensegur.flows.drimbox_cache import FetchView, ImageCache
from opensegur.flows.drimbox_ports import PacsQueryError, PacsStorePort, PacsUnavailable
from opensegur.flows.jobs import JobKind
from opensegur.flows.worker import Handler, PermanentError
from opensegur.store import jobs
from opensegur.store.models import Job

__all__ = ["make_import_handler", "request_import"]


def request_import(s: Session, fetch: FetchView, structure_id: int | None) -> int:
    """The import job of a complete exam (the same job if it was asked before)."""
    return jobs.enqueue(
        s,
        JobKind.DRIMBOX_IMPORT,
        f"{JobKind.DRIMBOX_IMPORT}:{fetch.kos_sop_instance_uid}",
        {"manifest": fetch.kos_sop_instance_uid},
        structure_id=structure_id,
        patient_id=fetch.patient_id,
    )


def make_import_handler(cache: ImageCache, pacs: PacsStorePort) -> Handler:
    async def import_job(job: Job) -> dict[str, Any]:
        files = await asyncio.to_thread(cache.instances, str(job.args["manifest"]))
        if not files:
            raise PermanentError("L'examen n'est plus dans le cache d'images : récupérez-le à nouveau")
        try:
            stored = await asyncio.to_thread(pacs.store, files)
        except PacsUnavailable as exc:
            raise RetryLater(str(exc)) from exc
        except PacsQueryError as exc:
            raise PermanentError(str(exc)) from exc
        return {"instances": stored}

    return import_job
