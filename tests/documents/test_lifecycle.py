from __future__ import annotations

from dataclasses import dataclass

import pytest

from opensegur.documents.lifecycle import (
    HOLDABLE,
    INITIAL,
    STATUS_LABELS,
    TRANSITIONS,
    DocumentStatus,
    LifecycleError,
    can_become,
    set_status,
)


@dataclass
class _Doc:
    status: str = "received"
    status_reason: str | None = None


def test_every_status_has_its_french_label_and_a_stored_status_finds_it() -> None:
    assert set(STATUS_LABELS) == set(DocumentStatus)
    assert STATUS_LABELS["waiting_identity"] == "En attente d'identité qualifiée"
    assert all(label and label[0].isupper() for label in STATUS_LABELS.values())


def test_set_status_says_why_or_clears_the_previous_reason() -> None:
    doc = _Doc()
    set_status(doc, DocumentStatus.ERROR, "DMP_INDISPONIBLE")
    assert (doc.status, doc.status_reason) == ("error", "DMP_INDISPONIBLE")
    set_status(doc, DocumentStatus.SENT)
    assert (doc.status, doc.status_reason) == ("sent", None)


def test_the_table_has_a_row_for_every_status_and_every_status_is_reachable_from_an_entry() -> None:
    assert set(TRANSITIONS) == set(DocumentStatus)
    reached, todo = set(INITIAL), list(INITIAL)
    while todo:
        for after in TRANSITIONS[todo.pop()] - reached:
            reached.add(after)
            todo.append(after)
    assert reached == set(DocumentStatus)


def test_a_produced_document_goes_from_received_to_acknowledged_and_a_mailed_one_from_integrated() -> None:
    doc = _Doc()
    for status in ("validated", "sending", "sent", "acknowledged"):
        set_status(doc, DocumentStatus(status))
    assert doc.status == "acknowledged"
    mailed = _Doc(status="integrated")
    set_status(mailed, DocumentStatus.REJECTED, "Refusé par le DPI")
    assert (mailed.status, mailed.status_reason) == ("rejected", "Refusé par le DPI")


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        ("sent", "held"),  # a sent document can no longer be retained
        ("sending", "held"),
        ("rejected", "validated"),  # a corrected document comes as a new version
        ("opposition", "sending"),
        ("integrated", "sending"),  # a mail's document is the DPI's to accept, never sent on
        ("acknowledged", "received"),
    ],
)
def test_any_other_transition_is_refused_in_french_and_the_document_is_left_as_it_was(
    current: str, wanted: str
) -> None:
    doc = _Doc(status=current, status_reason="avant")
    with pytest.raises(LifecycleError) as err:
        set_status(doc, DocumentStatus(wanted), "après")
    assert str(err.value) == (
        f"Un document « {STATUS_LABELS[current]} » ne peut pas passer à « {STATUS_LABELS[wanted]} »"
    )
    assert (doc.status, doc.status_reason) == (current, "avant")
    assert isinstance(err.value, ValueError)  # the routes answer 409 with it


def test_staying_is_always_allowed_and_what_may_be_held_is_read_from_the_table() -> None:
    assert all(can_become(status, status) for status in DocumentStatus)
    assert {"received", "waiting_identity", "validated", "error"} == HOLDABLE
