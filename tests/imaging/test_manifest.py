"""A KOS manifest read back by the consumer: what it must say before any image is asked for."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset

from opensegur.imaging.manifest import ManifestError, read_manifest
from tests.flows.drimbox_fakes import KOS_UID, SERIES, WADO, manifest_bytes
from tests.imaging.helpers import INITIAL, PATIENT_INS, STUDY_UID

pytestmark = [
    pytest.mark.requirement("IMG-DRIMBOX-CONSUMER"),
    pytest.mark.skipif(not INITIAL.exists(), reason="ANS examples not available"),
]


def _edited(change: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(manifest_bytes()))
    evidence: Dataset = ds.CurrentRequestedProcedureEvidenceSequence[0]
    if change == "no patient":
        ds.PatientID = ""
    elif change == "retrieve url":
        evidence.ReferencedSeriesSequence[0].RetrieveURL = "file:///etc/passwd"
    elif change == "two studies":
        ds.CurrentRequestedProcedureEvidenceSequence.append(evidence)
    elif change == "bad sop":
        evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[
            0
        ].ReferencedSOPInstanceUID = "1.2.<script>"
    elif change == "other study":
        ds.StudyInstanceUID = "1.2.3.4"
    elif change == "not a kos":
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_the_manifest_says_whose_exam_and_where_each_series_is() -> None:
    manifest = read_manifest(manifest_bytes())
    assert (manifest.sop_instance_uid, manifest.patient_id) == (KOS_UID, PATIENT_INS)
    assert manifest.patient_id_oid == "1.2.250.1.213.1.4.10"
    assert (manifest.study_instance_uid, manifest.accession_number) == (STUDY_UID, "ACN102")
    assert {s.series_instance_uid: list(s.sop_instance_uids) for s in manifest.series} == SERIES
    assert manifest.series[0].retrieve_url == f"{WADO}/studies/{STUDY_UID}/series/1.2.250.1.999.5.1"
    assert manifest.instance_count == 5


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("no patient", "patient"),
        ("retrieve url", "RetrieveURL"),
        ("two studies", "exactement un examen"),
        ("bad sop", "instance référencée"),
        ("other study", "n'est pas celui du manifeste"),
        ("not a kos", "pas un manifeste KOS"),
    ],
)
def test_a_manifest_that_does_not_say_it_all_is_refused(change: str, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        read_manifest(_edited(change))


@pytest.mark.parametrize("data", [b"", b"\0" * 132, b"<ClinicalDocument/>", b"\0" * 128 + b"DICM\x02\x00"])
def test_what_is_not_dicom_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestError):
        read_manifest(data)
