"""The DMP entry of a KOS manifest, and the checks that keep a manifest off the wrong exam or patient."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from opensegur.content.xds_metadata import document_metadata
from opensegur.imaging.kos import KosIds, build_kos, kos_bytes
from opensegur.imaging.report import ImagingReport, read_imaging_report
from opensegur.imaging.study import Study, study_from_matches
from opensegur.imaging.xdsi import (
    KOS_FORMAT,
    KOS_MIME,
    ExamMismatch,
    check_exam,
    event_codes,
    kos_metadata,
    reference_ids,
)
from opensegur.sandbox.dmp.app import validate_document
from tests.imaging.helpers import INITIAL, STUDY_UID, exam_matches, match

pytestmark = [
    pytest.mark.requirement("IMG-DRIMBOX-SOURCE"),
    pytest.mark.skipif(not INITIAL.exists(), reason="ANS examples not available"),
]

SOP = "1.2.250.1.999.80.1.7"


def _report() -> ImagingReport:
    return read_imaging_report(INITIAL.read_bytes())


def _study(**more: str) -> Study:
    return study_from_matches(exam_matches(**more))


def test_the_entry_is_found_by_region_modality_accession_study_and_order() -> None:
    report = _report()
    assert [(c.code, c.scheme) for c in event_codes(report, _study())] == [
        ("61685007", "1.2.250.1.213.1.1.5.695"),
        ("MR", "1.2.250.1.213.1.1.5.618"),
    ]
    assert reference_ids(report) == [
        "ACN102^^^&1.2.250.1.213.4.5.2.5&ISO^urn:ihe:iti:xds:2013:accession",
        f"{STUDY_UID}^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
        "OPN102^^^&1.2.250.1.213.4.5.2.6&ISO^urn:ihe:iti:xds:2013:order",
    ]


def test_without_the_pacs_modality_the_reports_is_used_if_the_jdv_knows_it() -> None:
    # Only a structured report in the PACS: the report's « RM » is not a DICOM modality, so none is coded.
    sr_only = study_from_matches([match("1.2.9", 1, "SR", "1.2.9.1", 1, "1.2.840.10008.5.1.4.1.1.88.11")])
    assert [c.code for c in event_codes(_report(), sr_only)] == ["61685007"]


def test_the_kos_entry_takes_the_reports_context_and_is_what_the_dmp_accepts() -> None:
    report = _report()
    report_entry = document_metadata(report.header, ipp="000003", ipp_authority_oid="1.2.250.1.999.1.1.1")
    study = _study()
    content = kos_bytes(
        build_kos(
            study,
            report,
            KosIds(SOP, SOP + ".1"),
            wado_base="https://db.test",
            institution="",
            now=datetime.now(UTC),
        )
    )
    entry = kos_metadata(report_entry, report, study, SOP, content)
    assert (entry.unique_id, entry.mime_type, entry.format_code) == (SOP, KOS_MIME, KOS_FORMAT)
    assert (entry.class_code.code, entry.type_code.code) == ("31", "IMG-KOS")
    assert entry.size == len(content) and entry.hash_sha1 == hashlib.sha1(content).hexdigest()
    # The patient, the act's dates, the facility and the authors are the report's.
    for same in (
        "patient_id",
        "source_patient_id",
        "service_start_time",
        "healthcare_facility_type_code",
        "authors",
    ):
        assert getattr(entry, same) == getattr(report_entry, same)
    validate_document(entry)


@pytest.mark.parametrize(
    ("more", "ipp", "reason"),
    [
        ({"study": "1.2.250.1.999.404"}, None, "l'examen 1.2.250.1.999.404"),
        ({"accession": "ACN999"}, None, "accession discordant"),
        ({"patient": "000042"}, "000003", "n'est pas celui du compte rendu"),
    ],
)
def test_no_manifest_for_another_exam_or_patient(more: dict[str, str], ipp: str | None, reason: str) -> None:
    with pytest.raises(ExamMismatch, match=reason):
        check_exam(_report(), _study(**more), ipp)


def test_the_pacs_may_name_the_patient_by_the_ipp_or_the_ins() -> None:
    check_exam(_report(), _study(patient="000003"), "000003")
    check_exam(_report(), _study(), None)
    check_exam(_report(), _study(accession=""), None)  # a PACS without the accession number
