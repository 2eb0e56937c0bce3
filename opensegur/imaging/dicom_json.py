"""What the viewer asks of the exams in the image cache, in DICOMweb's terms (PS3.18): the study and its series as
QIDO-RS answers them (DICOM JSON, §F.2), each instance's metadata without its pixels, and a frame's pixels as
WADO-RS returns them — native frames as they are stored, compressed ones as the fragment(s) of their codec.

Pure: it reads DICOM files it is given; which files, and for whom, is the route's business."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID

from opensegur.errors import OpenSegurError

__all__ = ["FrameError", "frame", "instance_metadata", "series_json", "study_json"]

# A frame of a compressed transfer syntax is sent with its codec's media type (PS3.18 §8.7.3.3.2).
_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class FrameError(OpenSegurError):
    """No such frame in the instance."""


def _header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _json(ds: Dataset) -> dict[str, Any]:
    return ds.to_json_dict(bulk_data_threshold=1 << 20)


def study_json(paths: Sequence[Path]) -> dict[str, Any]:
    """The QIDO-RS study answer for the exam whose instances are ``paths``."""
    headers = [_header(p) for p in paths]
    first = headers[0]
    out = Dataset()
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
                    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID"):  # fmt: skip
        if keyword in first:
            out[keyword] = first[keyword]
    out.ModalitiesInStudy = sorted({str(h.get("Modality", "")) for h in headers} - {""})
    out.NumberOfStudyRelatedSeries = len({str(h.SeriesInstanceUID) for h in headers})
    out.NumberOfStudyRelatedInstances = len(headers)
    return _json(out)


def series_json(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The QIDO-RS series answers of the exam whose instances are ``paths``, in series number order."""
    by_series: dict[str, list[Dataset]] = {}
    for p in paths:
        ds = _header(p)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    answers = []
    for uid, headers in by_series.items():
        first = headers[0]
        out = Dataset()
        out.StudyInstanceUID, out.SeriesInstanceUID = first.StudyInstanceUID, uid
        for keyword in ("Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime"):
            if keyword in first:
                out[keyword] = first[keyword]
        out.NumberOfSeriesRelatedInstances = len(headers)
        answers.append((int(first.get("SeriesNumber") or 0), _json(out)))
    return [a for _n, a in sorted(answers, key=lambda a: a[0])]


def instance_metadata(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The WADO-RS metadata of the instances ``paths``: every attribute but the pixels, the transfer syntax too."""
    answers = []
    for p in paths:
        ds = _header(p)
        item = _json(ds)
        item["00020010"] = {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
        answers.append(item)
    return answers


def frame(path: Path, number: int) -> tuple[bytes, str]:
    """Frame ``number`` (from 1) of the instance at ``path``: its bytes and their media type with the transfer
    syntax. Raises FrameError."""
    ds = pydicom.dcmread(path)
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 1 <= number <= frames or "PixelData" not in ds:
        raise FrameError(f"Image {number} absente de l'instance ({frames} image(s))")
    if syntax.is_compressed:
        data = get_frame(ds.PixelData, number - 1, number_of_frames=frames)
        media = _MEDIA.get(str(syntax), "application/octet-stream")
        return data, f"{media}; transfer-syntax={syntax}"
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * (int(ds.BitsAllocated) // 8)
    data = bytes(ds.PixelData[(number - 1) * size : number * size])
    return data, f"application/octet-stream; transfer-syntax={syntax}"
