"""The sandbox's remote DRIMbox, as the demo uses it: the manifest of the demo imaging report's exam is in each
demo patient's DMP, and the platform's consumer brings its images with a Pro Santé Connect token of the sandbox;
what it refuses, it refuses as a real DRIMbox source does."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from opensegur.flows.dmp_consult import patient_cx
from opensegur.flows.drimbox_cache import FetchStatus
from opensegur.flows.drimbox_consumer import ImagingSearch, PatientRef, find_exams
from opensegur.store.models import Patient
from tests.dmp import helpers
from tests.dmp.helpers import running_platform, wait_for
from tests.dmp.test_drimbox_consumer_e2e import DOCTOR
from tests.psc_tokens import psc_access_token

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")
schematron_cache = helpers.schematron_cache
DE_LA_TOUR = "218089913400712"  # a demo patient with a DMP


async def test_the_demo_exam_of_another_hospital_is_retrieved_from_the_sandbox_drimbox(
    tmp_path: Path, schematron_cache: Path
) -> None:
    async with running_platform(tmp_path, schematron_cache) as (rt, _dpi):
        assert rt.dmp_consult is not None and rt.drimbox_consumer is not None
        with rt.db.session() as s:
            p = s.scalars(select(Patient).where(Patient.ins_matricule == DE_LA_TOUR)).first()
            assert p is not None and p.ins_oid
            patient = PatientRef(p.id, DE_LA_TOUR, patient_cx(DE_LA_TOUR, p.ins_oid))
        [exam] = await find_exams(rt.dmp_consult, DOCTOR, patient.cx, ImagingSearch(modality="CT"))
        assert exam.accession == "105234751" and exam.institutions
        token = await psc_access_token(rt.endpoints["psc"])
        view = rt.drimbox_consumer.start(DOCTOR, patient, exam.entry, token, "dr.test")

        async def ended() -> bool:
            now = rt.drimbox_consumer.cache.get(view.id)  # type: ignore[union-attr]
            return now is not None and now.status != FetchStatus.FETCHING

        await wait_for(ended)
        done = rt.drimbox_consumer.cache.get(view.id)
        assert done is not None and done.status == FetchStatus.COMPLETE, done
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
