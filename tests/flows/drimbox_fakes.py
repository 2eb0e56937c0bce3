"""Stand-ins for the DMP and another DRIMbox, for the consumer's unit tests: the DMP returns the manifest of the
RIS example's exam, the other DRIMbox sends the series a test scripts (whole, cut short, or with a stranger)."""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from opensegur.documents.metadata import Coded, DocumentMetadata
from opensegur.flows.drimbox_ports import RemoteUnavailable
from opensegur.imaging.kos import KosIds, build_kos, kos_bytes
from opensegur.imaging.report import read_imaging_report
from opensegur.imaging.study import study_from_matches
from opensegur.imaging.wado import Part
from opensegur.imaging.xdsi import KOS_FORMAT, KOS_TYPE
from opensegur.transactions.xds import RetrievedDocument
from tests.imaging.helpers import INITIAL, MR_IMAGE, PATIENT_INS, STUDY_UID, exam_matches

KOS_UID = "1.2.250.1.999.80.1.1"
WADO = "https://drimbox.chu-y.test/dicom-web"


def manifest_bytes() -> bytes:
    report = read_imaging_report(INITIAL.read_bytes())
    built = build_kos(
        study_from_matches(exam_matches()),
        report,
        KosIds(KOS_UID, "1.2.250.1.999.80.2.1"),
        wado_base=WADO,
        institution="CHU-Y",
        now=datetime(2026, 12, 5, 10, 30, tzinfo=UTC),
    )
    return kos_bytes(built)


def entry(unique_id: str = KOS_UID) -> DocumentMetadata:
    """The manifest's DMP entry, as ITI-18 lists it (only what the consumer reads is meaningful)."""
    unused = Coded("x", "1.2.3")
    return DocumentMetadata(
        unique_id=unique_id,
        patient_id=f"{PATIENT_INS}^^^&1.2.250.1.213.1.4.10&ISO^NH",
        mime_type="application/dicom",
        class_code=unused,
        type_code=KOS_TYPE,
        format_code=KOS_FORMAT,
        healthcare_facility_type_code=unused,
        practice_setting_code=unused,
        confidentiality_codes=[],
        creation_time="20261205103000",
        repository_unique_id="1.2.250.1.213.1.1.1.1",
    )


@dataclass
class FakeDmp:
    content: bytes = field(default_factory=manifest_bytes)
    retrieved: int = 0

    async def retrieve(
        self, consulter: Any, patient_cx: str, repository: str, unique_id: str
    ) -> RetrievedDocument:
        self.retrieved += 1
        return RetrievedDocument(repository, unique_id, "application/dicom", self.content)


def instance(series: str, sop: str, study: str = STUDY_UID) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.BitsAllocated = 8
    ds.PixelData = bytes(16)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def part(data: bytes) -> Part:
    p = Part({"content-type": "application/dicom"})
    p.body.write(data)
    p.size = len(data)
    p.body.seek(0)
    return p


# The exam of tests.imaging.helpers: series → its instances, as the manifest lists them (the SR too).
SERIES = {
    "1.2.250.1.999.5.1": ["1.2.250.1.999.6.11", "1.2.250.1.999.6.12"],
    "1.2.250.1.999.5.2": ["1.2.250.1.999.6.21", "1.2.250.1.999.6.22"],
    "1.2.250.1.999.5.3": ["1.2.250.1.999.6.31"],
}


@dataclass
class FakeRemote:
    """Sends each series whole, unless ``script`` (call number → what to send) says otherwise."""

    script: dict[int, Callable[[str], list[bytes | Exception]]] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    closed: bool = False

    async def retrieve_series(
        self, url: str, token: str, kos: str, operator_dn: str = ""
    ) -> AsyncGenerator[Part, None]:
        self.calls.append((url, token, kos))
        series = url.rsplit("/", 1)[-1]
        plan = self.script.get(len(self.calls))
        items = plan(series) if plan else [instance(series, sop) for sop in SERIES[series]]
        for item in items:
            if isinstance(item, Exception):
                raise item
            yield part(item)

    async def aclose(self) -> None:
        self.closed = True


def cut_short(series: str) -> list[bytes | Exception]:
    """The first instance, then the source stops (its PACS timed out)."""
    return [instance(series, SERIES[series][0]), RemoteUnavailable("DRIMbox distant : réponse interrompue")]
