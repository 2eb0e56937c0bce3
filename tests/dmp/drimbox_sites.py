"""A hospital with a DRIMbox source, as the imaging scenarios need one: a real PACS (Orthanc) holding the exam
of the ANS RIS example's imaging report, and a platform with the sandbox that publishes its manifests and serves
its images on a real address."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select

from opensegur.flows.drimbox_source import JOB_DRIMBOX_PUBLISH
from opensegur.imaging.report import read_imaging_report
from opensegur.server import Runtime
from opensegur.store.models import ImagingManifest, Job
from tests.dmp.helpers import (
    INS,
    MDM_EXAMPLES,
    cda_of,
    inspect,
    mdm,
    new_number,
    running_platform,
    send_raw,
    wait_for,
)
from tests.pacs import Pacs, mr_image, orthanc
from tests.ports import free_port


def exam() -> tuple[str, str]:
    """The study and accession number of the ANS MDM example's CR d'imagerie."""
    report = read_imaging_report(cda_of(MDM_EXAMPLES["initial"].read_bytes()))
    assert report.accession is not None and report.accession.extension
    return report.study_instance_uid, report.accession.extension


def exam_images(patient_id: str, accession: str) -> list[Dataset]:
    """Two MR series of two images each."""
    study, _ = exam()
    return [
        mr_image(
            study=study,
            series=f"{study}.{s}",
            sop=f"{study}.{s}.{i}",
            patient_id=patient_id,
            accession=accession,
            series_number=s,
            instance_number=i,
        )
        for s in (1, 2)
        for i in (1, 2)
    ]


def _settings(pacs: Pacs, http_port: int) -> dict[str, Any]:
    return {
        "pacs_host": pacs.endpoint.host,
        "pacs_port": pacs.endpoint.port,
        "pacs_aet": pacs.endpoint.called_aet,
        "drimbox_aet": pacs.endpoint.calling_aet,
        "http_port": http_port,
        "drimbox_wado_url": f"http://127.0.0.1:{http_port}/dicom-web",
    }


def job_of(rt: Runtime, kind: str = JOB_DRIMBOX_PUBLISH) -> Job | None:
    """The latest job of ``kind``."""
    with rt.db.session() as s:
        job = s.scalar(select(Job).where(Job.kind == kind).order_by(Job.id.desc()).limit(1))
        if job is not None:
            s.expunge(job)
        return job


def manifests(rt: Runtime) -> list[tuple[str, str]]:
    """The manifests the site published, oldest first: (SOP Instance UID, status)."""
    with rt.db.session() as s:
        return [
            (m.sop_instance_uid, m.status)
            for m in s.scalars(select(ImagingManifest).order_by(ImagingManifest.id))
        ]


async def first_manifest_published(rt: Runtime) -> None:
    """Waits until the site's first manifest is published."""

    async def published() -> bool:
        return bool(manifests(rt)) and manifests(rt)[0][1] == "published"

    await wait_for(published)


async def publish_example(rt: Runtime) -> str:
    """The RIS example's imaging report sent to the site; the SOP Instance UID of the manifest it published."""
    assert (await send_raw(rt, mdm("initial", new_number()))).code == "AA"
    await first_manifest_published(rt)
    [(kos, _status)] = manifests(rt)
    return kos


async def kos_entries(rt: Runtime) -> list[dict[str, Any]]:
    """The KOS manifests the sandbox DMP holds for the RIS example's patient."""
    return [e for e in await inspect(rt) if e["typeCode"]["code"] == "IMG-KOS"]


async def kos_statuses(rt: Runtime) -> dict[str, str]:
    """Each manifest's DMP status (Approved, Deprecated, Deleted), by uniqueId."""
    return {e["uniqueId"]: e["status"] for e in await kos_entries(rt)}


@contextlib.asynccontextmanager
async def drimbox_site(
    tmp_path: Path,
    schematron_cache: Path,
    patient_id: str = INS,
    more: Iterable[Dataset] = (),
    *,
    via_wado: bool = False,
    **overrides: Any,
) -> AsyncIterator[tuple[Runtime, Pacs]]:
    """A platform with a DRIMbox source on a PACS holding the ANS example's exam under ``patient_id`` (with
    ``more`` instances); the platform and its PACS. ``via_wado``: the source reads the PACS's own WADO-RS."""
    _study, accession = exam()
    with orthanc(tmp_path / "pacs", dicomweb=via_wado) as pacs:
        pacs.store(*exam_images(patient_id, accession), *more)
        settings = _settings(pacs, free_port()) | overrides
        if via_wado:
            settings["pacs_wado_url"] = f"{pacs.http}/dicom-web"
        async with running_platform(tmp_path / "platform", schematron_cache, **settings) as (rt, _dpi):
            yield rt, pacs
