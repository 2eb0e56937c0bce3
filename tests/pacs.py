"""A real PACS for the tests and the bench: Debian's Orthanc, started on free loopback ports with an empty
storage, and filled through its REST API with DICOM images built here; with its DICOMweb plugin
(Debian's orthanc-dicomweb) when asked, as the bench's direct WADO-RS baseline."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from opensegur.connectors.pacs import PacsEndpoint
from tests.ports import free_port

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass(frozen=True)
class Pacs:
    http: str
    endpoint: PacsEndpoint

    def store(self, *datasets: Dataset) -> None:
        # One client for all: each httpx.post builds its own TLS context, about 10 ms — most of the bench's loading.
        with httpx.Client(timeout=30) as http:
            for ds in datasets:
                out = io.BytesIO()
                ds.save_as(out, enforce_file_format=True)
                http.post(f"{self.http}/instances", content=out.getvalue()).raise_for_status()


@contextmanager
def orthanc(tmp: Path, calling_aet: str = "OPENSEGUR", *, dicomweb: bool = False) -> Iterator[Pacs]:
    if ORTHANC is None or (dicomweb and not DICOMWEB_PLUGIN.exists()):
        if os.environ.get("CI"):
            pytest.fail("Orthanc and its DICOMweb plugin must be installed in CI (.ci/run installs them)")
        pytest.skip("Orthanc or its DICOMweb plugin not installed")
    with start_orthanc(tmp, calling_aet, dicomweb=dicomweb) as pacs:
        yield pacs


@contextmanager
def start_orthanc(tmp: Path, calling_aet: str = "OPENSEGUR", *, dicomweb: bool = False) -> Iterator[Pacs]:
    """Orthanc running until the block ends; its DICOMweb API under ``{http}/dicom-web`` with ``dicomweb``.
    Raises RuntimeError when Orthanc (or the plugin) is not installed or does not start."""
    if ORTHANC is None or (dicomweb and not DICOMWEB_PLUGIN.exists()):
        raise RuntimeError(
            "Orthanc (and orthanc-dicomweb for its WADO-RS) must be installed: apt install orthanc"
        )
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "OpenSegurTests",
        "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        # Only the declared AE titles may query, as a hospital's PACS is configured.
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"opensegur": [calling_aet, "127.0.0.1", free_port()]},
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    log = (tmp / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/system", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Orthanc did not start: {(tmp / 'orthanc.log').read_text(errors='replace')}"
                )
            time.sleep(0.1)
        yield Pacs(base, PacsEndpoint("127.0.0.1", dicom_port, "ORTHANC", calling_aet, timeout_s=10))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def mr_image(
    *,
    study: str,
    series: str,
    sop: str,
    patient_id: str,
    accession: str,
    series_number: int = 1,
    instance_number: int = 1,
    modality: str = "MR",
    size: int = 8,
) -> Dataset:
    """A ``size``×``size`` MR image (8×8: enough for a PACS to index it); its pixels vary with the instance."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MR_IMAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE, sop
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "PAT-TROIS^DOMINIQUE",
        patient_id,
        "19790328",
        "F",
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = accession, "102", "20210108", "102500"
    ds.StudyDescription, ds.SeriesDescription = "IRM du genou", f"Série {series_number}"
    ds.ReferringPhysicianName = "DUPONT^Jean"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, instance_number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pattern = bytes((instance_number + n) % 251 for n in range(251))
    ds.PixelData = (pattern * (size * size * 2 // 251 + 1))[: size * size * 2]
    return ds
