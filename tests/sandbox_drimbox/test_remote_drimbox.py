"""The sandbox's remote DRIMbox, as the demo uses it: the manifest of the demo imaging report's exam is in each
demo patient's DMP, and the platform's consumer brings its images with a Pro Santé Connect token of the sandbox;
what it refuses, it refuses as a real DRIMbox source does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest

from tests.dmp import helpers
from tests.dmp.helpers import running_platform
from tests.sandbox_drimbox.helpers import DE_LA_TOUR, retrieve_demo_exam

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")
schematron_cache = helpers.schematron_cache


async def test_the_demo_exam_of_another_hospital_is_retrieved_from_the_sandbox_drimbox(
    tmp_path: Path, schematron_cache: Path
) -> None:
    async with running_platform(tmp_path, schematron_cache) as (rt, _dpi):
        exam, _done, token = await retrieve_demo_exam(rt)
        assert exam.accession == "105234751" and exam.institutions
        assert rt.drimbox_consumer is not None
        files = rt.drimbox_consumer.cache.instances(exam.kos)
        assert len(files) == 8
        first = pydicom.dcmread(files[0])
        assert (
            first.PatientID == DE_LA_TOUR and first.Modality == "CT" and len(first.PixelData) == 128 * 128 * 2
        )

        # What the remote DRIMbox refuses.
        url = f"{rt.endpoints['drimbox']['wado']}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        good = {"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": exam.kos}
        async with httpx.AsyncClient() as http:
            assert (await http.get(url, headers=good)).status_code == 200
            assert (await http.get(url, headers={**good, "Authorization": "Bearer faux"})).status_code == 401
            assert (await http.get(url, headers={**good, "KOS-SOPInstanceUID": "1.2.3"})).status_code == 404
            assert (await http.get(url, headers={**good, "Accept": "application/json"})).status_code == 406
