"""The viewer's side of the platform, without a browser: OHIF's configuration, its files at the site's root and
nothing else there, and the DICOMweb it reads the image cache through — for a professional who may see the
patient, and for nobody else."""

from __future__ import annotations

import email.parser
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from opensegur.flows.drimbox_cache import ImageCache
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.models import AuditEvent
from opensegur.web.app import create_app
from tests.actors import EVERYONE, act_as
from tests.flows.test_mss_inbound import add_patient
from tests.web.test_rest_intake import Offline

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")

STUDY, SERIES, SOP, KOS = (
    "1.2.250.1.999.60.1",
    "1.2.250.1.999.60.1.1",
    "1.2.250.1.999.60.1.1.1",
    "1.2.250.1.999.60.9",
)
VIEWER = "/visionneuse/dicom-web"


@pytest.fixture
def exam(offline: Offline, tmp_path: Path) -> int:
    """A complete exam in the image cache (pydicom's CT test image), for a patient of the demo's first site."""
    cache = ImageCache(offline.db, tmp_path / "cache", max_bytes=10**9, max_age=timedelta(days=1))
    offline.drimbox_consumer = SimpleNamespace(cache=cache)  # type: ignore[attr-defined]
    patient = add_patient(offline.db)
    view, _ = cache.start(patient, KOS, "dr.test")
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, SERIES, SOP
    out = io.BytesIO()
    ds.save_as(out)
    out.seek(0)
    cache.describe(view.id, STUDY, "drimbox.chu-y.test", 1)
    cache.progress(view.id, 1, cache.write(KOS, SERIES, SOP, out))
    cache.complete(view.id, KOS)
    return patient


async def _client(offline: Offline, actor: object = EVERYONE) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=act_as(create_app(offline), actor))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://opensegur.test") as c:
        yield c


async def test_the_viewer_reads_the_cached_exam_and_the_opening_is_audited(
    offline: Offline, exam: int
) -> None:
    async for http in _client(offline):
        [study] = (await http.get(f"{VIEWER}/studies", params={"StudyInstanceUID": STUDY})).json()
        assert study["00080061"]["Value"] == ["CT"] and study["00201208"]["Value"] == [1]
        [series] = (await http.get(f"{VIEWER}/studies/{STUDY}/series")).json()
        assert series["0020000E"]["Value"] == [SERIES]
        [meta] = (await http.get(f"{VIEWER}/studies/{STUDY}/series/{SERIES}/metadata")).json()
        assert meta["00080018"]["Value"] == [SOP] and "7FE00010" not in meta
        assert meta["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]
        answer = await http.get(f"{VIEWER}/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/1")
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + answer.headers["content-type"].encode() + b"\r\n\r\n" + answer.content
        )
        [part] = message.get_payload()
        assert (
            part.get_content_type() == "application/octet-stream"
            and len(part.get_payload(decode=True)) == 32768
        )
        missing = await http.get(f"{VIEWER}/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/2")
        assert missing.status_code == 404
        # A search by patient (the viewer looks for prior studies) finds nothing: no list across patients.
        assert (await http.get(f"{VIEWER}/studies", params={"00100020": "X"})).json() == []
        assert (await http.get(f"{VIEWER}/studies", params={"StudyInstanceUID": "1.2.3"})).json() == []
    with offline.db.session() as s:
        [opened] = s.scalars(select(AuditEvent).where(AuditEvent.action == "view_images")).all()
        assert opened.patient_id == exam and opened.detail == {"examen": STUDY, "manifeste": KOS}


async def test_a_professional_outside_the_care_relationship_sees_nothing(offline: Offline, exam: int) -> None:
    elsewhere = replace(EVERYONE, assignments=(Assignment("medecin", Scope.parse("unit:750000028/9999")),))
    async for http in _client(offline, elsewhere):
        refused = await http.get(f"{VIEWER}/studies/{STUDY}/series")
        assert refused.status_code == 403
        frame = await http.get(f"{VIEWER}/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/1")
        assert frame.status_code == 403


async def test_only_the_viewers_files_are_served_at_the_root(offline: Offline, tmp_path: Path) -> None:
    dist = tmp_path / "ohif"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>OHIF</title>")
    (dist / "app.bundle.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("secret")
    offline.settings = offline.settings.model_copy(update={"viewer_dir": dist})
    async for http in _client(offline):
        assert (await http.get("/app.bundle.js")).text == "console.log(1)"
        for path in ("/..%2Fsecret.txt", "/../secret.txt", "/index.html", "/nothing.js", "/assets"):
            assert (await http.get(path)).status_code == 404, path
        page = await http.get("/visionneuse/viewer", params={"StudyInstanceUIDs": STUDY})
        assert page.status_code == 200 and "'wasm-unsafe-eval'" in page.headers["content-security-policy"]
        config = (await http.get("/app-config.js")).text
        assert '"routerBasename": "/visionneuse"' in config and '"showStudyList": false' in config
        assert "/visionneuse/dicom-web" in config
        assert "service worker" in (await http.get("/init-service-worker.js")).text
    async for http in _client(offline, None):
        assert (await http.get("/visionneuse/viewer")).status_code in (303, 401)
