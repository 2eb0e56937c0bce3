"""Reading the PACS's IOCM Rejection Notes: which instances of which exam are withdrawn, and why."""

from __future__ import annotations

import pytest

from opensegur.imaging.iocm import RejectionError, read_rejection
from tests.imaging.iocm_notes import rejection_note
from tests.pacs import mr_image

pytestmark = pytest.mark.requirement("IMG-DRIMBOX-SOURCE")


def test_a_rejection_note_names_the_withdrawn_instances_by_exam() -> None:
    note = rejection_note(
        "1.2.9.1", "1.2.3", {"1.2.3.1": ["1.2.3.1.1", "1.2.3.1.2"], "1.2.3.2": ["1.2.3.2.1"]}
    )
    rejection = read_rejection(note)
    assert rejection is not None and rejection.note_sop_instance_uid == "1.2.9.1"
    assert rejection.instances == {"1.2.3": frozenset({"1.2.3.1.1", "1.2.3.1.2", "1.2.3.2.1"})}
    assert rejection.reason_label == "Rejeté pour raison de qualité"


def test_other_objects_are_not_rejection_notes() -> None:
    manifest = rejection_note("1.2.9.2", "1.2.3", {"1.2.3.1": ["1.2.3.1.1"]}, reason="113030")  # « Manifest »
    assert read_rejection(manifest) is None
    image = mr_image(study="1.2.3", series="1.2.3.1", sop="1.2.3.1.1", patient_id="X", accession="A")
    assert read_rejection(image) is None


@pytest.mark.parametrize(
    "instances", [{}, {"1.2.3.1": []}, {"1.2.3.1": ["<script>"]}], ids=["nothing", "empty", "bad uid"]
)
def test_a_rejection_note_that_names_nothing_usable_is_refused(instances: dict[str, list[str]]) -> None:
    with pytest.raises(RejectionError):
        read_rejection(rejection_note("1.2.9.3", "1.2.3", instances))
