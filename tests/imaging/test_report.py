"""The imaging facts of a CR d'imagerie: the exam it documents, its request, modalities and regions."""

from __future__ import annotations

from pathlib import Path

import pytest

from opensegur.imaging.report import ImagingReportError, read_imaging_report
from tests.imaging.helpers import RIS, STUDY_UID

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")

EXAMPLES = Path("/work/shared/cisis/ExemplesCDA")
needs_examples = pytest.mark.skipif(not RIS.exists(), reason="ANS examples not available")


@needs_examples
@pytest.mark.parametrize("path", sorted(RIS.glob("*.xml")), ids=lambda p: p.name)
def test_each_ris_example_names_its_exam_request_and_region(path: Path) -> None:
    report = read_imaging_report(path.read_bytes())
    assert report.study_instance_uid == STUDY_UID
    assert report.accession is not None and (report.accession.root, report.accession.extension) == (
        "1.2.250.1.213.4.5.2.5",
        "ACN102",
    )
    assert report.order is not None and report.order.extension == "OPN102"
    assert report.act is not None and report.act.code == "24802-1"
    assert [r.code for r in report.regions] == ["61685007"]
    # The examples code the MR modality « RM », which DICOM (CID 29) and the JDV do not know: read as written.
    assert [m.code for m in report.modalities] == ["RM"]
    assert report.header.patient.ins_matricule == "279035121518989"


@needs_examples
@pytest.mark.parametrize("name", ["IMG_CR_IMG_2024.01.xml", "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml"])
def test_the_cisis_imaging_reports_of_both_levels_are_read(name: str) -> None:
    report = read_imaging_report((EXAMPLES / name).read_bytes())
    assert report.study_instance_uid and report.header.code is not None


@needs_examples
def test_a_report_of_another_kind_or_without_its_exam_is_refused() -> None:
    with pytest.raises(ImagingReportError, match="pas un compte rendu d'imagerie"):
        read_imaging_report((EXAMPLES / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes())
    raw = (RIS / "transmission_initiale_cr_imagerie.xml").read_bytes()
    for forged in (b'<id root="1.2.3; DROP"/>', b'<id root="' + b"1." * 40 + b'1"/>', b""):
        text = raw.replace(b'<id root="1.2.250.1.213.4.5.2.1.102"/>', forged, 1)
        with pytest.raises(ImagingReportError, match="Study Instance UID"):
            read_imaging_report(text)
