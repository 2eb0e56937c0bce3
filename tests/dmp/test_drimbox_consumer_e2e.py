"""Two hospitals side by side, sharing the sandbox DMP: site A's RIS sends an imaging report, its DRIMbox
publishes the manifest; site B's DRIMbox consumer finds the exam in the DMP, retrieves the manifest and brings
every instance from site A's DRIMbox over WADO-RS with a professional's Pro Santé Connect token — each instance
with the very pixel data site A's PACS holds, a JPEG one still JPEG."""

from __future__ import annotations

import contextlib
import html
import io
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sqlalchemy import select

from opensegur.flows.drimbox_cache import FetchStatus
from opensegur.flows.drimbox_consumer import (
    FetchRefused,
    ImagingSearch,
    find_exams,
)
from opensegur.ops.demo import luhn_complete
from opensegur.server import Runtime
from opensegur.store.models import AuditEvent
from opensegur.web.deps import CSRF_HEADER
from tests.actors import EVERYONE, act_as
from tests.dmp import helpers
from tests.dmp.drimbox_sites import (
    DOCTOR,
    consumer_settings,
    drimbox_site,
    exam,
    exam_images,
    local_patient,
    manifests,
    publish_example,
    retrieved,
)
from tests.dmp.helpers import INS, running_platform, wait_for
from tests.pacs import orthanc
from tests.psc_tokens import psc_access_token

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-CONSUMER")
schematron_cache = helpers.schematron_cache


def _jpeg_instance(accession: str) -> Dataset:
    """pydicom's JPEG baseline test image, made one more series of the exam: Orthanc keeps it JPEG."""
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    study, _ = exam()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.3"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.3.1"
    ds.PatientID, ds.AccessionNumber, ds.Modality, ds.SeriesNumber = INS, accession, "MR", 3
    return ds


@contextlib.asynccontextmanager
async def _two_sites(
    tmp_path: Path, schematron_cache: Path, via_wado: bool = False, **site_b: Any
) -> AsyncIterator[tuple[Runtime, Runtime, Dataset]]:
    """Site A with its published manifest (two MR series and a JPEG one), and site B (``site_b``: more of its
    settings)."""
    _study, accession = exam()
    jpeg = _jpeg_instance(accession)
    async with drimbox_site(tmp_path / "a", schematron_cache, more=[jpeg], via_wado=via_wado) as (a, _pacs):
        await publish_example(a)
        settings = consumer_settings(a) | site_b
        async with running_platform(tmp_path / "b", schematron_cache, **settings) as (b, _dpi):
            yield a, b, jpeg


@pytest.mark.parametrize("via_wado", [False, True], ids=["source-c-get", "source-wado-rs"])
async def test_site_b_retrieves_site_a_exam_with_the_pixel_data_of_site_a_pacs(
    tmp_path: Path, schematron_cache: Path, via_wado: bool
) -> None:
    """Site A's DRIMbox reads its PACS by C-GET, or streams its PACS's own WADO-RS answer through."""
    async with _two_sites(tmp_path, schematron_cache, via_wado) as (a, b, jpeg):
        consumer, dmp = b.drimbox_consumer, b.dmp_consult
        assert consumer is not None and dmp is not None
        patient = local_patient(b)
        [found] = await find_exams(dmp, DOCTOR, patient.cx, ImagingSearch())
        study, accession = exam()
        assert (found.study_instance_uid, found.accession) == (study, accession)
        assert [m.code for m in found.modalities] == ["MR"] and found.kos == manifests(a)[0][0]
        # The professional's criteria: the modality asked of the DMP, the accession filtered here.
        assert await find_exams(dmp, DOCTOR, patient.cx, ImagingSearch(modality="CT")) == []
        assert await find_exams(dmp, DOCTOR, patient.cx, ImagingSearch(accession="AUTRE")) == []

        token = await psc_access_token(a.endpoints["psc"])
        view = await consumer.start(DOCTOR, patient, found.entry, token, "dr.test")
        assert view.status == FetchStatus.FETCHING
        done = await retrieved(consumer, view)
        assert done.status == FetchStatus.COMPLETE, done.error
        assert (done.instances_expected, done.instances_done) == (5, 5)

        files = consumer.cache.instances(found.kos)
        received = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in files)}
        originals = {str(d.SOPInstanceUID): d for d in [*exam_images(INS, accession), jpeg]}
        assert received.keys() == originals.keys()
        for sop, original in originals.items():
            assert received[sop].PixelData == original.PixelData, sop
            assert received[sop].file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, sop

        # Asked again: the exam is in the cache, nothing is retrieved twice.
        again = await consumer.start(DOCTOR, patient, found.entry, token, "dr.test")
        assert (again.id, again.status) == (view.id, FetchStatus.COMPLETE)
        # Never under another patient of the site.
        with pytest.raises(FetchRefused, match="autre patient"):
            await consumer.start(DOCTOR, local_patient(b, "180012345678965"), found.entry, token, "dr.test")


async def test_what_site_b_refuses_to_keep(tmp_path: Path, schematron_cache: Path) -> None:
    async with _two_sites(tmp_path, schematron_cache) as (a, b, _jpeg):
        consumer, dmp = b.drimbox_consumer, b.dmp_consult
        assert consumer is not None and dmp is not None
        patient = local_patient(b)
        [found] = await find_exams(dmp, DOCTOR, patient.cx, ImagingSearch())

        # A token PSC does not know: site A refuses, site B says why and keeps nothing.
        forged = await retrieved(
            consumer, await consumer.start(DOCTOR, patient, found.entry, "forged", "dr.test")
        )
        assert forged.status == FetchStatus.FAILED and "Pro Santé Connect" in (forged.error or "")
        assert consumer.cache.instances(found.kos) == []

        # The exam, asked for under another local patient: refused before any image (by the DMP here, which knows
        # the manifest is not this patient's; by the manifest's INS otherwise, tests/flows/test_drimbox_consumer).
        other = local_patient(b, "180012345678965")
        token = await psc_access_token(a.endpoints["psc"])
        refused = await retrieved(
            consumer, await consumer.start(DOCTOR, other, found.entry, token, "dr.test")
        )
        assert refused.status == FetchStatus.FAILED and refused.patient_id == other.id
        assert refused.instances_done == 0
        assert consumer.cache.instances(found.kos) == []


async def test_the_imaging_tab_lists_the_exam_and_brings_its_images_in_the_doctors_name(
    tmp_path: Path, schematron_cache: Path
) -> None:
    async with _two_sites(tmp_path, schematron_cache) as (a, b, _jpeg):
        patient = local_patient(b)
        doctor = replace(EVERYONE, name="dr.reault", rpps=luhn_complete("1000000001"), session_id=4242)
        act_as(b.app, doctor)
        tab = f"http://127.0.0.1:{b.http_port}/identites/{patient.id}/dmp/imagerie"
        async with httpx.AsyncClient(timeout=30, headers={CSRF_HEADER: "jeton-de-test"}) as http:
            page = await http.get(tab)
            assert page.status_code == 200, page.text
            [kos] = re.findall(r'data-kos="([^"]+)"', page.text)
            assert kos == manifests(a)[0][0] and "connexion-psc" in page.text
            # From the report's row in the DMP tab to its exam, in one click.
            # (The whole DMP: the ANS example's exam is older than the default two years.)
            dmp_tab = await http.get(f"http://127.0.0.1:{b.http_port}/identites/{patient.id}/dmp?tout=1")
            [link] = re.findall(r'href="([^"]+)" class="images-examen"', dmp_tab.text)
            followed = await http.get(f"http://127.0.0.1:{b.http_port}{html.unescape(link)}")
            study, accession = exam()
            assert followed.status_code == 303
            # By its accession number, as DRIM-M links a report to its manifest.
            assert (
                followed.headers["location"] == f"/identites/{patient.id}/dmp/imagerie?accession={accession}"
            )
            assert re.findall(
                r'data-kos="([^"]+)"', (await http.get(tab, params={"accession": accession})).text
            ) == [kos]
            # A report without an accession number: by its study.
            exam_page = await http.get(tab, params={"etude": study})
            assert re.findall(r'data-kos="([^"]+)"', exam_page.text) == [kos]
            assert 'id="examen-du-compte-rendu"' in exam_page.text
            assert 'id="aucun-examen"' in (await http.get(tab, params={"etude": "1.2.3.4"})).text
            assert (await http.get(tab, params={"etude": "1.2.<b>"})).status_code == 422
            # The manifest itself is no report: said on the page.
            not_a_report = await http.get(f"{tab}/examen", params={"compte_rendu": kos})
            assert not_a_report.status_code == 422
            assert "n'est pas un compte rendu d'imagerie" in html.unescape(not_a_report.text)
            # Without a PSC session, the professional is sent to log in through PSC first.
            asked = await http.post(f"{tab}/recuperer", data={"kos": kos})
            assert asked.status_code == 303 and asked.headers["location"].startswith("/connexion/psc?retour=")

            b.psc_delegation.keep(4242, await psc_access_token(a.endpoints["psc"]), 600)
            asked = await http.post(f"{tab}/recuperer", data={"kos": kos})
            assert (
                asked.status_code == 303
                and asked.headers["location"] == f"/identites/{patient.id}/dmp/imagerie"
            )

            async def shown() -> bool:
                return "Images disponibles" in (await http.get(tab)).text

            await wait_for(shown)
            assert "5 image(s)" in (await http.get(tab)).text

            assert 'id="aucun-examen"' in (await http.get(tab, params={"modalite": "CT"})).text
            assert (await http.get(tab, params={"modalite": "<script>"})).status_code == 422
            assert (await http.get(tab, params={"modalite": "ZZ"})).status_code == 422
            unknown = await http.post(f"{tab}/recuperer", data={"kos": "1.2.250.1.999.12345"})
            assert unknown.status_code == 303
        with b.db.session() as s:
            details = [
                e.detail or {}
                for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "fetch_dmp_imaging"))
            ]
        assert [d.get("manifeste") for d in details] == [kos, "1.2.250.1.999.12345"]
        assert "refus" not in details[0] and "plus) dans le DMP" in details[1]["refus"]


@pytest.mark.parametrize("how", ["c-store", "stow-rs"])
async def test_site_b_imports_the_retrieved_exam_into_its_own_pacs(
    tmp_path: Path, schematron_cache: Path, how: str
) -> None:
    with orthanc(tmp_path / "b-pacs", calling_aet="DRIMBOX_B", dicomweb=how == "stow-rs") as b_pacs:
        pacs = {
            "pacs_host": b_pacs.endpoint.host,
            "pacs_port": b_pacs.endpoint.port,
            "pacs_aet": b_pacs.endpoint.called_aet,
            "drimbox_aet": "DRIMBOX_B",
            "drimbox_wado_url": "https://drimbox-b.test/dicom-web",
            "pacs_import": how,
        }
        if how == "stow-rs":
            pacs["pacs_wado_url"] = f"{b_pacs.http}/dicom-web"
        async with _two_sites(tmp_path, schematron_cache, **pacs) as (a, b, jpeg):
            consumer, dmp = b.drimbox_consumer, b.dmp_consult
            assert consumer is not None and dmp is not None
            patient = local_patient(b)
            [found] = await find_exams(dmp, DOCTOR, patient.cx, ImagingSearch())
            token = await psc_access_token(a.endpoints["psc"])
            done = await retrieved(
                consumer, await consumer.start(DOCTOR, patient, found.entry, token, "dr.test")
            )
            assert done.status == FetchStatus.COMPLETE
            act_as(b.app, replace(EVERYONE, name="dr.reault", rpps=luhn_complete("1000000001"), session_id=7))
            tab = f"http://127.0.0.1:{b.http_port}/identites/{patient.id}/dmp/imagerie"
            async with httpx.AsyncClient(timeout=30, headers={CSRF_HEADER: "jeton-de-test"}) as http:
                assert "Importer dans le PACS du site" in (await http.get(tab)).text
                asked = await http.post(f"{tab}/importer", data={"kos": found.kos})
                assert asked.status_code == 303
                unknown = await http.post(f"{tab}/importer", data={"kos": "1.2.250.1.999.4242"})
                assert unknown.status_code == 404

                async def imported() -> bool:
                    return len((await http.get(f"{b_pacs.http}/instances")).json()) == 5

                await wait_for(imported)
                # The JPEG instance reaches site B's PACS as JPEG, its pixels untouched.
                jpeg_id = (
                    await http.post(
                        f"{b_pacs.http}/tools/find",
                        json={"Level": "Instance", "Query": {"SOPInstanceUID": str(jpeg.SOPInstanceUID)}},
                    )
                ).json()[0]
                stored = await http.get(f"{b_pacs.http}/instances/{jpeg_id}/file")
                kept = pydicom.dcmread(io.BytesIO(stored.content))
                assert kept.file_meta.TransferSyntaxUID == jpeg.file_meta.TransferSyntaxUID
                assert kept.PixelData == jpeg.PixelData
