"""A hospital with a DRIMbox source, as the imaging scenarios need one: a real PACS (Orthanc) holding the exam
of the ANS RIS example's imaging report, and a platform with the sandbox that publishes its manifests and serves
its images on a real address; and what a consumer site needs to read them: the DMP of that sandbox, a list of
DRIMboxes naming the source, the patient known by the same INS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select

from opensegur.documents.metadata import Coded
from opensegur.flows.dmp_consult import Consulter, patient_cx
from opensegur.flows.drimbox_cache import FetchStatus, FetchView
from opensegur.flows.drimbox_consumer import DrimboxConsumer, PatientRef
from opensegur.flows.jobs import JobKind
from opensegur.imaging.report import read_imaging_report
from opensegur.security.drimbox_directory import TrustedDrimbox, sign_directory
from opensegur.security.pki import common_name_of, ensure_test_pki, load_certificate
from opensegur.server import Runtime
from opensegur.store.models import ImagingManifest, Job, Patient, Structure
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

INS_OID = "1.2.250.1.213.1.4.10"
DOCTOR = Consulter(
    "10000000017",
    "Dr Test",
    (Coded("10", "1.2.250.1.71.1.2.7", "Médecin"), Coded("SM44", "1.2.250.1.71.4.2.5", "Radio-diagnostic")),
    "1750000028",
)


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


def job_of(rt: Runtime, kind: str = JobKind.DRIMBOX_PUBLISH) -> Job | None:
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


def consumer_settings(a: Runtime) -> dict[str, object]:
    """A consumer site B's settings: it reaches the DMP of site A's sandbox, as both reach the national DMP, and
    trusts site A's DRIMbox through a list signed as the ANS signs its own."""
    dmp = a.endpoints["dmp"]
    pki = ensure_test_pki(a.settings.data_dir / "sandbox" / "pki")
    ans = ensure_test_pki(a.settings.data_dir.parent / "ans")
    directory = a.settings.data_dir.parent / "liste-blanche.xml"
    assert a.settings.drimbox_wado_url is not None
    site_a = TrustedDrimbox("DB-SITE-A", a.settings.drimbox_wado_url, "Site A")
    directory.write_bytes(
        sign_directory([site_a], ans.signing_key.read_bytes(), [ans.signing_cert.read_bytes()])
    )
    return {
        "drimbox_directory_file": str(directory),
        "drimbox_directory_ca": str(ans.ca_cert),
        "drimbox_directory_signer_cn": common_name_of(load_certificate(ans.signing_cert.read_bytes())),
        "dmp_iti41_url": dmp["iti41"],
        "dmp_iti18_url": dmp["iti18"],
        "dmp_iti57_url": dmp["iti57"],
        "dmp_iti43_url": dmp["iti43"],
        "dmp_td02_url": dmp["td02"],
        "dmp_signing_cert": str(pki.signing_cert),
        "dmp_signing_key": str(pki.signing_key),
    }


def local_patient(b: Runtime, ins: str = INS) -> PatientRef:
    """Site B knows the patient by the same qualified INS."""
    with b.db.session() as s:
        structure = s.query(Structure).first()
        assert structure is not None
        p = Patient(
            structure_id=structure.id,
            ins_matricule=ins,
            ins_oid=INS_OID,
            birth_name="PAT-TROIS",
            first_names="DOMINIQUE",
            sex="F",
            status="QUAL",
            dmp_consent={"consultation_consent": "IC"},
        )
        s.add(p)
        s.flush()
        return PatientRef(p.id, ins, patient_cx(ins, INS_OID))


async def retrieved(consumer: DrimboxConsumer, view: FetchView) -> FetchView:
    """The retrieval ``view`` started, once it has ended (complete or failed)."""

    async def ended() -> bool:
        now = consumer.cache.get(view.id)
        return now is not None and now.status != FetchStatus.FETCHING

    await wait_for(ended)
    ended_view = consumer.cache.get(view.id)
    assert ended_view is not None
    return ended_view
