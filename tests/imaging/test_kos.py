"""The KOS manifest of the RIS example's exam, read back as any DICOM reader would."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pydicom
import pytest
from pydicom.dataset import Dataset

from opensegur.imaging.kos import KOS_SOP_CLASS, KosIds, build_kos, kos_bytes, retrieve_url
from opensegur.imaging.report import read_imaging_report
from opensegur.imaging.study import study_from_matches
from tests.imaging.helpers import INITIAL, PATIENT_INS, STUDY_UID, exam_matches

pytestmark = [
    pytest.mark.requirement("IMG-DRIMBOX-SOURCE"),
    pytest.mark.skipif(not INITIAL.exists(), reason="ANS examples not available"),
]

IDS = KosIds("1.2.250.1.999.80.1.1", "1.2.250.1.999.80.2.1")
WADO = "https://drimbox.chu-x.test/dicom-web/"
NOW = datetime(2026, 12, 5, 10, 30, tzinfo=timezone(timedelta(hours=1)))


def _kos(raw_report: bytes | None = None) -> Dataset:
    report = read_imaging_report(raw_report or INITIAL.read_bytes())
    built = build_kos(
        study_from_matches(exam_matches()), report, IDS, wado_base=WADO, institution="CHU-X", now=NOW
    )
    return pydicom.dcmread(io.BytesIO(kos_bytes(built)))


def test_the_manifest_names_the_patient_by_the_ins_and_the_request_by_its_accession() -> None:
    kos = _kos()
    assert kos.file_meta.MediaStorageSOPClassUID == KOS_SOP_CLASS == kos.SOPClassUID
    assert kos.SOPInstanceUID == IDS.sop_instance_uid and kos.Modality == "KO"
    assert kos.PatientID == PATIENT_INS and kos.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    qualifiers = kos.IssuerOfPatientIDQualifiersSequence[0]
    assert (qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType) == ("1.2.250.1.213.1.4.10", "ISO")
    assert str(kos.PatientName) == "PAT-TROIS^DOMINIQUE" and kos.PatientSex == "F"
    [request] = kos.ReferencedRequestSequence
    assert request.AccessionNumber == "ACN102" and kos.AccessionNumber == ""
    assert request.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.250.1.213.4.5.2.5"
    assert request.PlacerOrderNumberImagingServiceRequest == "OPN102"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113030"  # Manifest
    assert kos.TimezoneOffsetFromUTC == "+0100" and kos.ContentDate == "20261205"


def test_each_series_is_retrievable_from_this_drimbox_and_each_instance_is_listed() -> None:
    kos = _kos()
    [evidence] = kos.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == STUDY_UID == kos.StudyInstanceUID
    urls = [s.RetrieveURL for s in evidence.ReferencedSeriesSequence]
    assert urls == [
        f"https://drimbox.chu-x.test/dicom-web/studies/{STUDY_UID}/series/1.2.250.1.999.5.{n}"
        for n in (1, 2, 3)
    ]
    assert retrieve_url(WADO, STUDY_UID, "1.2.3") == urls[0].rsplit("/series/", 1)[0] + "/series/1.2.3"
    referenced = [
        r.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence for r in s.ReferencedSOPSequence
    ]
    assert len(referenced) == 5
    *items, text = kos.ContentSequence
    assert [i.ValueType for i in items] == ["IMAGE"] * 4 + ["COMPOSITE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items] == referenced
    assert text.ValueType == "TEXT" and text.ConceptNameCodeSequence[0].CodeValue == "113012"
    assert (
        "Acte = RM genou" in text.TextValue and "Série-1.2.250.1.999.5.3 : SR @ : Mesures" in text.TextValue
    )


def test_a_name_outside_latin_1_is_kept_whole() -> None:
    raw = INITIAL.read_bytes().replace(b"PAT-TROIS", "CŒUR-D'ŒIL".encode(), 1)
    kos = _kos(raw)
    assert kos.SpecificCharacterSet == "ISO_IR 192" and str(kos.PatientName).startswith("CŒUR-D'ŒIL^")


def test_the_manifest_is_dated_in_its_own_zone() -> None:
    report = read_imaging_report(INITIAL.read_bytes())
    utc = build_kos(
        study_from_matches(exam_matches()),
        report,
        IDS,
        wado_base=WADO,
        institution="",
        now=NOW.astimezone(UTC),
    )
    assert utc.TimezoneOffsetFromUTC == "+0000" and utc.ContentTime == "093000"
