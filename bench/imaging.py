"""DRIMbox image retrieval: an exam of another hospital brought into this site's image cache, through the source
DRIMbox (WADO-RS → C-GET from its PACS, streamed) and this site's consumer (WADO-RS client, checks against the
manifest, files in the cache) — against the same series read straight from the PACS's own WADO-RS (Orthanc's
DICOMweb plugin), in the same run, on the same machine.

The source is a platform with the sandbox (its PSC introspects the token) and Debian's Orthanc as PACS, in a process
of its own (`opensegur serve --demo`), as it runs in the other hospital; the consumer runs in the bench's process.
The exam is S series of K synthetic 512×512 16-bit images (512 KiB each). The manifest is registered in the
source's tables and handed to the consumer as ITI-43 would: the DMP is not what is measured here (the DMP tab's
bench is).
Time to first image: from the request to the first instance received whole, through the source and straight from
Orthanc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from opensegur.connectors.drimbox_client import ACCEPT, DrimboxClient
from opensegur.connectors.pacs import PacsClient
from opensegur.documents.metadata import DocumentMetadata
from opensegur.flows.dmp_consult import Consulter, patient_cx
from opensegur.flows.drimbox_cache import FetchStatus, ImageCache
from opensegur.flows.drimbox_consumer import DrimboxConsumer, PatientRef
from opensegur.imaging.kos import KosIds, build_kos, kos_bytes
from opensegur.imaging.report import read_imaging_report
from opensegur.imaging.study import study_from_matches
from opensegur.imaging.wado import MultipartReader
from opensegur.sandbox.dmp.seed import IMAGING_REPORT, demo_file
from opensegur.security.drimbox_directory import DrimboxDirectory, TrustedDrimbox
from opensegur.store.db import Database
from opensegur.store.models import Document, ImagingManifest, Patient, Structure
from opensegur.transactions.xds import RetrievedDocument
from tests.flows.drimbox_fakes import entry as manifest_entry
from tests.pacs import Pacs, mr_image, start_orthanc
from tests.ports import free_port
from tests.psc_tokens import psc_access_token

STUDY = "1.2.250.1.999.90.1"
KOS = "1.2.250.1.999.90.9.1"
SIZE = 512
DOCTOR = Consulter("10000000017", "Dr Bench", (), "1750000028")


@dataclass(frozen=True)
class Round:
    ours_s: float
    base_s: float
    ours_first_ms: float
    base_first_ms: float


@dataclass(frozen=True)
class ImagingFigures:
    megabytes: float
    instances: int
    rounds: list[Round]

    def _median(self, field: str) -> float:
        return statistics.median(getattr(r, field) for r in self.rounds)

    @property
    def ours_mb_s(self) -> float:
        return self.megabytes / self._median("ours_s")

    @property
    def base_mb_s(self) -> float:
        return self.megabytes / self._median("base_s")

    @property
    def ours_instances_s(self) -> float:
        return self.instances / self._median("ours_s")

    @property
    def base_instances_s(self) -> float:
        return self.instances / self._median("base_s")

    @property
    def ours_first_ms(self) -> float:
        return self._median("ours_first_ms")

    @property
    def base_first_ms(self) -> float:
        return self._median("base_first_ms")


class _Dmp:
    """ITI-43 answered with the manifest, as the DMP returns it."""

    def __init__(self, kos: bytes) -> None:
        self.kos = kos

    async def retrieve(
        self, consulter: Any, patient_cx: str, repository: str, unique_id: str
    ) -> RetrievedDocument:
        return RetrievedDocument(repository, unique_id, "application/dicom", self.kos)


def _load(pacs: Pacs, ins: str, series: int, per_series: int) -> None:
    for s in range(1, series + 1):
        pacs.store(
            *(
                mr_image(
                    study=STUDY,
                    series=f"{STUDY}.{s}",
                    sop=f"{STUDY}.{s}.{i}",
                    patient_id=ins,
                    accession="BENCH1",
                    series_number=s,
                    instance_number=i,
                    size=SIZE,
                )
                for i in range(1, per_series + 1)
            )
        )


async def _read(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> tuple[int, int, float]:
    """Instances, bytes, and ms to the first instance, of one WADO-RS series answer read as it streams."""
    started = time.perf_counter()
    first = 0.0
    count = size = 0
    async with http.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        reader = MultipartReader(response.headers["content-type"], max_part=1 << 30)
        async for chunk in response.aiter_bytes():
            for part in reader.feed(chunk):
                if not count:
                    first = (time.perf_counter() - started) * 1000
                count, size = count + 1, size + part.size
                part.body.close()
        reader.close()
    return count, size, first


def _manifest(db: Database, pacs: Pacs, wado: str) -> tuple[bytes, PatientRef, int]:
    """The exam's manifest, registered as published by the source; its bytes, the patient and instance count."""
    matches = PacsClient(pacs.endpoint).find_instances(STUDY)
    study = study_from_matches(matches)
    with db.session() as s:
        p = s.scalars(
            select(Patient).where(Patient.ins_matricule.is_not(None), Patient.status == "QUAL")
        ).first()
        assert p is not None and p.ins_matricule and p.ins_oid
        patient = PatientRef(p.id, p.ins_matricule, patient_cx(p.ins_matricule, p.ins_oid))
        report = read_imaging_report(demo_file(IMAGING_REPORT)).about(STUDY, p.ins_matricule, p.ins_oid)
        document = Document(structure_id=p.structure_id, source="hl7", kind="initial", unique_id="bench")
        s.add(document)
        s.flush()
        s.add(
            ImagingManifest(
                document_id=document.id,
                structure_id=p.structure_id,
                study_instance_uid=STUDY,
                sop_instance_uid=KOS,
                series_uids=[x.series_instance_uid for x in study.series],
                instances=study.instance_count,
                status="published",
            )
        )
    kos = build_kos(
        study, report, KosIds(KOS, f"{KOS}.1"), wado_base=wado, institution="Bench", now=datetime.now(UTC)
    )
    return kos_bytes(kos), patient, study.instance_count


@contextlib.asynccontextmanager
async def _source(data_dir: Path, pacs: Pacs, port: int, wado: str, via_wado: bool) -> AsyncIterator[str]:
    """The source DRIMbox's platform, serving on ``port``; its base URL once ready."""
    env = {
        **os.environ,
        "OPENSEGUR_HTTP_PORT": str(port),
        "OPENSEGUR_MLLP_PORT": "0",
        "OPENSEGUR_PACS_HOST": pacs.endpoint.host,
        "OPENSEGUR_PACS_PORT": str(pacs.endpoint.port),
        "OPENSEGUR_PACS_AET": pacs.endpoint.called_aet,
        "OPENSEGUR_DRIMBOX_AET": pacs.endpoint.calling_aet,
        "OPENSEGUR_DRIMBOX_WADO_URL": wado,
        "OPENSEGUR_LOG_LEVEL": "WARNING",
    }
    if via_wado:
        env["OPENSEGUR_PACS_WADO_URL"] = f"{pacs.http}/dicom-web"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "opensegur.cli", "serve", "--demo", "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(1500):
                # Ready, and done compiling its schematrons: else that compilation shares the cores with the run.
                with contextlib.suppress(httpx.HTTPError):
                    health = await http.get(f"{base}/healthz")
                    if health.status_code == 200 and health.json().get("validation") != "warming":
                        break
                if proc.poll() is not None:
                    raise SystemExit(
                        f"the source platform stopped: {(data_dir / 'serve.log').read_text()[-2000:]}"
                    )
                await asyncio.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def bench_imaging(
    tmp: Path, series: int, per_series: int, rounds: int, *, via_wado: bool
) -> ImagingFigures:
    """``via_wado``: the source reads the PACS's own WADO-RS (passed through) rather than C-GET."""
    port = free_port()
    wado = f"http://127.0.0.1:{port}/dicom-web"
    with start_orthanc(tmp / "pacs", dicomweb=True) as pacs:
        async with (
            _source(tmp / "source", pacs, port, wado, via_wado) as base,
            httpx.AsyncClient(timeout=120) as http,
        ):
            endpoints = (await http.get(f"{base}/sandbox/endpoints")).json()
            # The source's database, as its own DRIMbox would have filled it on publishing the manifest.
            source_db = Database(f"sqlite:///{tmp / 'source' / 'opensegur.db'}")
            ins = await asyncio.to_thread(_patient_ins, source_db)
            await asyncio.to_thread(_load, pacs, ins, series, per_series)
            kos, patient, instances = await asyncio.to_thread(_manifest, source_db, pacs, wado)
            source_db.dispose()
            # The consumer's site: its own database and cache.
            db = Database(f"sqlite:///{tmp / 'consumer.db'}")
            db.migrate()
            patient = await asyncio.to_thread(_consumer_patient, db, patient)
            token = await psc_access_token(endpoints["psc"])
            cache = ImageCache(db, tmp / "cache", max_bytes=1 << 40, max_age=timedelta(days=1))
            trusted = DrimboxDirectory((TrustedDrimbox("BENCH-SOURCE", wado),))
            consumer = DrimboxConsumer(_Dmp(kos), DrimboxClient(), cache, lambda: trusted)  # type: ignore[arg-type]
            entry = manifest_entry(KOS)
            results = [
                await _round(http, consumer, patient, entry, token, pacs, wado, series) for _ in range(rounds)
            ]
            megabytes = sum(p.stat().st_size for p in cache.instances(KOS)) / 1e6
            await consumer.aclose()
            db.dispose()
    return ImagingFigures(megabytes, instances, results)


def _patient_ins(db: Database) -> str:
    with db.session() as s:
        ins = s.scalars(select(Patient.ins_matricule).where(Patient.status == "QUAL")).first()
    assert ins is not None
    return ins


def _consumer_patient(db: Database, source: PatientRef) -> PatientRef:
    """The same patient, known to the consumer's site by the same INS."""
    with db.session() as s:
        site = Structure(
            kind="EG", finess="750000028", name="CH consommateur", ipp_authority="CHC", settings={}
        )
        s.add(site)
        s.flush()
        p = Patient(
            structure_id=site.id,
            ins_matricule=source.ins,
            birth_name="BENCH",
            first_names="IMAGERIE",
            sex="F",
            status="QUAL",
        )
        s.add(p)
        s.flush()
        return PatientRef(p.id, source.ins, source.cx)


async def _round(
    http: httpx.AsyncClient,
    consumer: DrimboxConsumer,
    patient: PatientRef,
    entry: DocumentMetadata,
    token: str,
    pacs: Pacs,
    wado: str,
    series: int,
) -> Round:
    consumer.cache.purge(now=datetime.now(UTC) + timedelta(days=365))  # a cold cache each round
    view, run = consumer.cache.start(patient.id, KOS, "bench")
    assert run
    started = time.perf_counter()
    await consumer.fetch(view.id, DOCTOR, patient, entry, token)
    ours_s = time.perf_counter() - started
    done = consumer.cache.get(view.id)
    assert done is not None and done.status == FetchStatus.COMPLETE

    direct = {"Accept": ACCEPT}
    started = time.perf_counter()
    for s in range(1, series + 1):
        await _read(http, f"{pacs.http}/dicom-web/studies/{STUDY}/series/{STUDY}.{s}", direct)
    base_s = time.perf_counter() - started

    first_series = f"studies/{STUDY}/series/{STUDY}.1"
    _n, _size, ours_first = await _read(
        http,
        f"{wado}/{first_series}",
        {**direct, "Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": KOS},
    )
    _n, _size, base_first = await _read(http, f"{pacs.http}/dicom-web/{first_series}", direct)
    return Round(ours_s, base_s, ours_first, base_first)
