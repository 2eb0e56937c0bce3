"""The exam as the PACS's C-FIND answer describes it."""

from __future__ import annotations

import pytest

from opensegur.imaging.study import StudyError, study_from_matches
from tests.imaging.helpers import STUDY_UID, exam_matches, match

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")


def test_the_matches_are_grouped_by_series_in_their_numbers_order() -> None:
    study = study_from_matches(exam_matches())
    assert study.study_instance_uid == STUDY_UID and study.accession_number == "ACN102"
    assert [s.series_number for s in study.series] == [1, 2, 3]
    assert [i.sop_instance_uid for i in study.series[0].instances] == [
        "1.2.250.1.999.6.11",
        "1.2.250.1.999.6.12",
    ]
    assert study.instance_count == 5
    # The structured report is not an acquisition, nor an image.
    assert study.modalities == ["MR"]
    assert [i.is_image for i in study.series[2].instances] == [False]


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        (match("1.2.9", 9, "MR", "1.2.9.1", 1, study="1.2.250.1.999.404"), "deux examens"),
        (match("1.2.9", 9, "MR", "1.2.9.1", 1, patient="000042"), "deux patients"),
        (match("", 9, "MR", "1.2.9.1", 1), "sans SeriesInstanceUID"),
    ],
)
def test_an_answer_that_is_not_one_exam_of_one_patient_is_refused(odd: object, reason: str) -> None:
    with pytest.raises(StudyError, match=reason):
        study_from_matches([*exam_matches(), odd])  # type: ignore[list-item]


def test_no_image_is_said_so() -> None:
    with pytest.raises(StudyError, match="aucune image"):
        study_from_matches([])
