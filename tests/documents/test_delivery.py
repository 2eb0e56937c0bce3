from __future__ import annotations

from dataclasses import dataclass

import pytest

from opensegur.documents.delivery import (
    DELIVERY_LABELS,
    INITIAL,
    TRANSITIONS,
    DeliveryLifecycleError,
    DeliveryStatus,
    can_become,
    give_up,
    set_delivery_status,
)


@dataclass
class _Delivery:
    status: str = "pending"


def test_every_status_has_its_french_label_and_a_stored_status_finds_it() -> None:
    assert set(DELIVERY_LABELS) == set(DeliveryStatus)
    assert DELIVERY_LABELS["dead"] == "Échec définitif"
    assert all(label and label[0].isupper() for label in DELIVERY_LABELS.values())


def test_the_table_has_a_row_for_every_status_and_every_status_is_reachable_from_an_entry() -> None:
    assert set(TRANSITIONS) == set(DeliveryStatus)
    assert {"pending", "held"} == INITIAL
    reached, todo = set(INITIAL), list(INITIAL)
    while todo:
        for after in TRANSITIONS[todo.pop()] - reached:
            reached.add(after)
            todo.append(after)
    assert reached == set(DeliveryStatus)


def test_a_delivery_is_sent_delivered_or_retried_and_a_replacement_waits_for_its_parent() -> None:
    d = _Delivery()
    for status in ("sending", "failed", "sending", "delivered"):
        set_delivery_status(d, DeliveryStatus(status))
    assert d.status == "delivered"
    child = _Delivery()
    for status in ("waiting", "pending", "sending", "dead", "pending"):
        set_delivery_status(child, DeliveryStatus(status))
    assert child.status == "pending"


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        ("held", "sending"),  # a held delivery goes only once released
        ("waiting", "sending"),  # woken first (pending), then its own job sends it
        ("delivered", "pending"),  # nothing to retry
        ("delivered", "held"),  # too late to retain it
        ("sending", "held"),  # nor while it is being sent
        ("pending", "delivered"),  # nothing is delivered without being sent
    ],
)
def test_any_other_transition_is_refused_in_french_and_the_delivery_is_left_as_it_was(
    current: str, wanted: str
) -> None:
    d = _Delivery(status=current)
    with pytest.raises(DeliveryLifecycleError) as err:
        set_delivery_status(d, DeliveryStatus(wanted))
    assert str(err.value) == (
        f"Un envoi « {DELIVERY_LABELS[current]} » ne peut pas passer à « {DELIVERY_LABELS[wanted]} »"
    )
    assert d.status == current
    assert isinstance(err.value, ValueError)


def test_a_report_that_a_mail_was_lost_may_come_whatever_its_delivery_became_since() -> None:
    assert all(DeliveryStatus.DEAD in after for status, after in TRANSITIONS.items() if status != "dead")


def test_staying_is_always_allowed() -> None:
    assert all(can_become(status, status) for status in DeliveryStatus)
    d = _Delivery(status="dead")
    set_delivery_status(d, DeliveryStatus.DEAD)  # a second report on a mail already refused
    assert d.status == "dead"


def test_a_given_up_job_leaves_its_failed_or_sending_delivery_dead_and_any_other_as_it_was() -> None:
    for before in ("failed", "sending"):
        d = _Delivery(before)
        assert give_up(d) == before and d.status == "dead"
    for other in ("pending", "held", "waiting", "delivered", "dead"):
        d = _Delivery(other)
        assert give_up(d) is None and d.status == other
