"""An exam imported into the site's PACS over STOW-RS: a real Orthanc with its DICOMweb plugin stores what it is
sent; what it refuses, or a PACS that does not answer, is said."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
import pytest

from opensegur.connectors.pacs_stow import PacsStow
from opensegur.flows.drimbox_ports import PacsQueryError, PacsUnavailable
from tests.pacs import mr_image, orthanc

STUDY = "1.2.250.1.999.88.1"


def _files(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for i in range(1, count + 1):
        ds = mr_image(
            study=STUDY,
            series=f"{STUDY}.1",
            sop=f"{STUDY}.1.{i}",
            patient_id="279035121518989",
            accession="ACN-STOW",
            series_number=1,
            instance_number=i,
        )
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(out.getvalue())
        paths.append(path)
    return paths


def test_the_pacs_stores_the_exam_sent_by_stow_rs(tmp_path: Path) -> None:
    files = _files(tmp_path, 3)
    with orthanc(tmp_path / "pacs", dicomweb=True) as pacs:
        assert PacsStow(f"{pacs.http}/dicom-web").store(files) == 3
        found = httpx.get(f"{pacs.http}/dicom-web/studies/{STUDY}/instances", timeout=30).json()
        assert sorted(i["00080018"]["Value"][0] for i in found) == [f"{STUDY}.1.{i}" for i in (1, 2, 3)]
        # The pixel data arrived as sent.
        [first] = httpx.post(
            f"{pacs.http}/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": f"{STUDY}.1.1"}}
        ).json()
        stored = pydicom.dcmread(
            io.BytesIO(httpx.get(f"{pacs.http}/instances/{first}/file", timeout=30).content)
        )
        assert stored.PixelData == pydicom.dcmread(files[0]).PixelData


def test_an_instance_the_pacs_refuses_ends_the_import_with_its_reason(tmp_path: Path) -> None:
    files = _files(tmp_path, 1)
    bogus = tmp_path / "bogus.dcm"
    bogus.write_bytes(b"\0" * 128 + b"DICM" + b"pas du DICOM")
    with orthanc(tmp_path / "pacs", dicomweb=True) as pacs, pytest.raises(PacsQueryError, match="refusé"):
        PacsStow(f"{pacs.http}/dicom-web").store([*files, bogus])


@pytest.mark.parametrize(
    ("answer", "raised"),
    [
        (httpx.Response(503), PacsUnavailable),
        (
            httpx.Response(
                409, json={"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [272]}}]}}
            ),
            PacsQueryError,
        ),
        (httpx.Response(200, content=b"<html>pas du JSON</html>"), None),
    ],
    ids=["unavailable", "all refused", "answer unreadable"],
)
def test_what_a_pacs_answers(tmp_path: Path, answer: httpx.Response, raised: type[Exception] | None) -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.read())
        return answer

    stow = PacsStow("http://pacs.test/dicom-web", transport=httpx.MockTransport(handler))
    files = _files(tmp_path, 2)
    if raised is None:
        assert stow.store(files) == 2  # 200 says every instance was stored, whatever its body
    else:
        with pytest.raises(raised):
            stow.store(files)
    assert seen[0].count(b"Content-Type: application/dicom") == 2


def test_an_unreachable_pacs_is_unavailable(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(PacsUnavailable, match="injoignable"):
        PacsStow("http://pacs.test/dicom-web", transport=httpx.MockTransport(refuse)).store(
            _files(tmp_path, 1)
        )
