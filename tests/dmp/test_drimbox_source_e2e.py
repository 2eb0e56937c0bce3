"""The DRIMbox source end to end: the RIS's imaging report over MLLP → the DMP → a C-FIND to a real PACS
(Orthanc) → the KOS manifest registered in the sandbox DMP; and what keeps a manifest back."""

from __future__ import annotations

import asyncio
import email.parser
import io
import os
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from opensegur.imaging.kos import KOS_SOP_CLASS
from opensegur.store.models import AuditEvent, ImagingManifest
from tests.dmp import helpers
from tests.dmp.drimbox_sites import (
    drimbox_site,
    exam,
    first_manifest_published,
    job_of,
    kos_entries,
    kos_statuses,
    manifests,
    publish_example,
)
from tests.dmp.helpers import mdm, new_number, send_raw, wait_for
from tests.imaging.helpers import ANS_ACCEPT
from tests.imaging.iocm_notes import rejection_note
from tests.ports import free_port
from tests.psc_tokens import psc_access_token

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")
schematron_cache = helpers.schematron_cache


async def test_an_imaging_report_from_the_ris_publishes_its_manifest(
    tmp_path: Path, schematron_cache: Path
) -> None:
    study, _ = exam()
    async with drimbox_site(tmp_path, schematron_cache) as (rt, _pacs):
        number = new_number()
        assert (await send_raw(rt, mdm("initial", number))).code == "AA"

        async def published() -> bool:
            job = job_of(rt)
            return job is not None and job.status == "done"

        await wait_for(published)
        job = job_of(rt)
        assert job is not None and job.result["series"] == 2 and job.result["instances"] == 4
        with rt.db.session() as s:
            manifest = s.scalars(select(ImagingManifest)).one()
            assert manifest.study_instance_uid == study and manifest.status == "published"
            assert manifest.series_uids == [f"{study}.1", f"{study}.2"] and manifest.entry_uuid
        kos = await kos_entries(rt)
        assert [e["uniqueId"] for e in kos] == [manifest.sop_instance_uid]
        assert kos[0]["mimeType"] == "application/dicom" and kos[0]["classCode"]["code"] == "31"

        # The RIS corrects the report: a new manifest replaces the first in the DMP.
        first = manifest.sop_instance_uid
        corrected = new_number()
        assert (await send_raw(rt, mdm("replacement", corrected, parent=number))).code == "AA"

        async def two() -> bool:
            return len(manifests(rt)) == 2 and manifests(rt)[1][1] == "published"

        await wait_for(two)
        (_, old_status), (second, _) = manifests(rt)
        assert old_status == "replaced"
        statuses = await kos_statuses(rt)
        assert statuses == {first: "Deprecated", second: "Approved"}

        # The RIS deletes the report: its manifest leaves the DMP too.
        assert (await send_raw(rt, mdm("deletion", corrected, parent=number))).code == "AA"

        async def withdrawn() -> bool:
            return manifests(rt)[1][1] == "withdrawn"

        await wait_for(withdrawn)
        statuses = await kos_statuses(rt)
        assert statuses[second] == "Deleted"


async def test_images_of_another_patient_keep_the_manifest_back(
    tmp_path: Path, schematron_cache: Path
) -> None:
    async with drimbox_site(tmp_path, schematron_cache, "IPP-AUTRE") as (rt, _pacs):
        assert (await send_raw(rt, mdm("initial", new_number()))).code == "AA"

        async def ended() -> bool:
            job = job_of(rt)
            return job is not None and job.status == "dead"

        await wait_for(ended)
        job = job_of(rt)
        assert job is not None and "n'est pas celui du compte rendu" in (job.last_error or "")
        assert not await kos_entries(rt)


async def test_another_drimbox_retrieves_a_published_series_with_a_psc_token(
    tmp_path: Path, schematron_cache: Path
) -> None:
    study, _ = exam()
    async with drimbox_site(tmp_path, schematron_cache) as (rt, _pacs):
        kos = await publish_example(rt)
        token = await psc_access_token(rt.endpoints["psc"])
        base = f"http://127.0.0.1:{rt.http_port}/dicom-web/studies/{study}/series"
        headers = {"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": kos, "Accept": ANS_ACCEPT}
        async with httpx.AsyncClient(timeout=30) as http:
            ok = await http.get(f"{base}/{study}.1", headers=headers)
            assert ok.status_code == 200, ok.text
            message = email.parser.BytesParser().parsebytes(
                b"Content-Type: " + ok.headers["content-type"].encode() + b"\r\n\r\n" + ok.content
            )
            parts = message.get_payload()
            assert len(parts) == 2 and all(p.get_param("transfer-syntax") for p in parts)
            images = [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in parts]
            assert {str(i.SeriesInstanceUID) for i in images} == {f"{study}.1"}
            # Who asked, in the audit trail: the professional's PSC subject.
            with rt.db.session() as s:
                audited = s.scalars(select(AuditEvent).where(AuditEvent.action == "drimbox_retrieve")).one()
                assert audited.actor.startswith("psc:") and audited.detail["serie"] == f"{study}.1"

            refusals = {
                "no token": ({**headers, "Authorization": ""}, f"{study}.1", 401),
                "forged token": ({**headers, "Authorization": "Bearer forged"}, f"{study}.1", 401),
                "unknown manifest": ({**headers, "KOS-SOPInstanceUID": "1.2.3.4"}, f"{study}.1", 404),
                "series not covered": (headers, "1.2.250.1.999.77", 404),
                "not dicom": ({**headers, "Accept": "application/json"}, f"{study}.1", 406),
            }
            for why, (sent, series, status) in refusals.items():
                r = await http.get(f"{base}/{series}", headers=sent)
                assert r.status_code == status, (why, r.status_code, r.text)
                assert "detail" in r.json()
            bad_uid = await http.get(f"{base}/..%2F..%2Fadmin", headers=headers)
            assert bad_uid.status_code in (404, 422)


def _send_note(port: int, note: Dataset, calling_aet: str = "ORTHANC") -> int | None:
    """A C-STORE of ``note`` to the DRIMbox, as the PACS sends it; the status, None if the association failed."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(KOS_SOP_CLASS, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="OPENSEGUR")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(note)
        return int(status.Status) if status else None
    finally:
        assoc.release()


async def test_images_the_pacs_withdraws_leave_the_manifest(tmp_path: Path, schematron_cache: Path) -> None:
    study, _ = exam()
    port = free_port()
    async with drimbox_site(tmp_path, schematron_cache, drimbox_dicom_port=port) as (rt, _pacs):
        assert (await send_raw(rt, mdm("initial", new_number()))).code == "AA"

        async def published(count: int) -> bool:
            return len(manifests(rt)) == count and manifests(rt)[-1][1] == "published"

        await wait_for(lambda: published(1))
        [(first, _)] = manifests(rt)

        # The PACS withdraws series 2 (IOCM): a manifest of series 1 alone replaces the first.
        note = rejection_note("1.2.250.1.999.77.1", study, {f"{study}.2": [f"{study}.2.1", f"{study}.2.2"]})
        assert await asyncio.to_thread(_send_note, port, note) == 0x0000
        await wait_for(lambda: published(2))
        (_, old_status), (second, _) = manifests(rt)
        assert old_status == "replaced"
        with rt.db.session() as s:
            row = s.scalars(select(ImagingManifest).where(ImagingManifest.sop_instance_uid == second)).one()
            assert row.series_uids == [f"{study}.1"] and row.instances == 2
        statuses = await kos_statuses(rt)
        assert statuses == {first: "Deprecated", second: "Approved"}

        # What the DRIMbox does not take: another AE title, an object that is no rejection note.
        assert await asyncio.to_thread(_send_note, port, note, "INCONNU") is None
        manifest_kos = rejection_note("1.2.250.1.999.77.2", study, {f"{study}.1": [f"{study}.1.1"]}, "113030")
        assert await asyncio.to_thread(_send_note, port, manifest_kos) == 0xC000

        # Then series 1 too: no image left, the manifest leaves the DMP.
        rest = rejection_note("1.2.250.1.999.77.3", study, {f"{study}.1": [f"{study}.1.1", f"{study}.1.2"]})
        assert await asyncio.to_thread(_send_note, port, rest) == 0x0000

        async def withdrawn() -> bool:
            return manifests(rt)[-1][1] == "withdrawn"

        await wait_for(withdrawn)
        statuses = await kos_statuses(rt)
        assert statuses[second] == "Deleted"


async def test_a_report_written_as_a_file_reaches_the_dmp_and_publishes_its_manifest(
    tmp_path: Path, schematron_cache: Path
) -> None:
    """A teleradiology platform or the PACS leaves the report's HL7 message in the drop folder: the same path."""
    depot = tmp_path / "depot"
    depot.mkdir()
    async with drimbox_site(tmp_path, schematron_cache, hl7_drop_dir=depot, hl7_drop_interval_s=0.2) as (
        rt,
        _,
    ):
        message = depot / "cr-teleradiologie.hl7"
        message.write_bytes(mdm("initial", new_number()))
        os.utime(message, (time.time() - 60, time.time() - 60))  # written a while ago: settled
        (depot / "illisible.hl7").write_bytes(b"pas un message HL7")
        os.utime(depot / "illisible.hl7", (time.time() - 60, time.time() - 60))

        async def acknowledged() -> bool:
            # Both files, which a round may take in two: the first can be handled before the second is written.
            answered = (
                depot / "traites" / "cr-teleradiologie.hl7.ack",
                depot / "refuses" / "illisible.hl7.ack",
            )
            return all(ack.exists() for ack in answered)

        await wait_for(acknowledged)
        assert b"MSA|AA|" in (depot / "traites" / "cr-teleradiologie.hl7.ack").read_bytes()
        assert b"MSA|AR|" in (depot / "refuses" / "illisible.hl7.ack").read_bytes()

        await first_manifest_published(rt)
        assert await kos_entries(rt)
