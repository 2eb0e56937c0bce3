"""Where one document stands towards one destination (the DMP, the professionals' or the patient's mailbox).

A document has one ``Delivery`` per destination, created ``pending`` (in the queue) or ``held`` when a
professional retains the document. Its job makes it ``sending``, or ``waiting`` while the document it replaces has
not gone that way yet; the exchange ends it ``delivered``, ``failed`` (the peer was unavailable: the queue tries
again) or ``dead`` (refused, or uncertain: a person decides). A professional holds, releases or retries it; an
MSSanté report may still turn a mail ``dead`` (not distributed), or prove that an uncertain ``dead`` one went.

The transitions are a table (:data:`TRANSITIONS`), as :mod:`opensegur.documents.lifecycle` has for the document
as a whole: :func:`set_delivery_status` refuses any other, so a flow that would, say, send a held delivery fails
loudly instead of doing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from opensegur.errors import OpenSegurError

__all__ = [
    "INITIAL",
    "DELIVERY_LABELS",
    "TRANSITIONS",
    "DeliveryLifecycleError",
    "DeliveryStatus",
    "HasDeliveryStatus",
    "can_become",
    "give_up",
    "set_delivery_status",
]


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    HELD = "held"
    WAITING = "waiting"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD = "dead"


# Keyed by the members, which are their strings: a stored status finds its label as it is.
DELIVERY_LABELS: dict[str, str] = {
    DeliveryStatus.PENDING: "En file d'attente",
    DeliveryStatus.HELD: "Retenu",
    DeliveryStatus.WAITING: "En attente du document qu'il remplace",
    DeliveryStatus.SENDING: "Envoi en cours",
    DeliveryStatus.DELIVERED: "Remis",
    DeliveryStatus.FAILED: "Échec (nouvel essai prévu)",
    DeliveryStatus.DEAD: "Échec définitif",
}

_S = DeliveryStatus

# A delivery is created queued, or held when its document is (dmp_feed._plan_deliveries, mss_outbound.planning).
INITIAL = frozenset({_S.PENDING, _S.HELD})

# Where each status may go; staying is always allowed (a job run again, a second report). Any status but ``dead``
# itself may become ``dead`` on a report that the mail was not distributed (mss_outbound.reports): a mail sent once,
# then retried, held or made to wait, may still be reported lost.
TRANSITIONS: Mapping[DeliveryStatus, frozenset[DeliveryStatus]] = MappingProxyType(
    {
        # Its job sends it, or makes it wait while its parent has not gone; a professional holds it; a mail with no
        # recipient, or that cannot be built, is refused before it is sent.
        _S.PENDING: frozenset({_S.SENDING, _S.WAITING, _S.HELD, _S.DEAD}),
        # Released into the queue; its jobs skip it meanwhile. A held document's mail with no recipient is refused
        # as soon as it is planned.
        _S.HELD: frozenset({_S.PENDING, _S.DEAD}),
        # Woken into the queue when its parent went (or, by mail, failed for good); a professional holds it. Its
        # jobs skip it: it is never sent from here.
        _S.WAITING: frozenset({_S.PENDING, _S.HELD, _S.DEAD}),
        # The exchange's outcome (uncertain when a run stopped mid-send: dead). A DMP job run again after a crash
        # looks at the parent again, which may have been planned meanwhile. Not held: the exchange is under way.
        _S.SENDING: frozenset({_S.DELIVERED, _S.FAILED, _S.DEAD, _S.WAITING}),
        # Only a mail's report takes it back; the DMP's acceptance is final, and nothing is retried or held.
        _S.DELIVERED: frozenset({_S.DEAD}),
        # The queue tries again (or waits, a parent mail having been retried meanwhile); a professional holds it or
        # asks for a new try; a mail that cannot be built is refused.
        _S.FAILED: frozenset({_S.SENDING, _S.WAITING, _S.PENDING, _S.HELD, _S.DEAD}),
        # A professional asks for a new try; an operator replays its dead DMP job, which dmp.deliver does not skip
        # (it sends, or waits for a parent); a report proves that an uncertain mail did go.
        _S.DEAD: frozenset({_S.PENDING, _S.SENDING, _S.WAITING, _S.DELIVERED}),
    }
)


class DeliveryLifecycleError(OpenSegurError, ValueError):
    """A flow asked for a delivery transition the table does not allow."""

    def __init__(self, current: str, wanted: DeliveryStatus) -> None:
        self.current, self.wanted = current, wanted
        super().__init__(
            f"Un envoi « {DELIVERY_LABELS.get(current, current)} » ne peut pas passer à « {DELIVERY_LABELS[wanted]} »"
        )


class HasDeliveryStatus(Protocol):
    """A stored delivery (``store.models.Delivery``), as this module needs it: no database here."""

    status: str


def can_become(current: str, wanted: DeliveryStatus) -> bool:
    return current == wanted or wanted in TRANSITIONS[DeliveryStatus(current)]


def set_delivery_status(delivery: HasDeliveryStatus, status: DeliveryStatus) -> None:
    if not can_become(delivery.status, status):
        raise DeliveryLifecycleError(delivery.status, status)
    delivery.status = status


def give_up(delivery: HasDeliveryStatus) -> DeliveryStatus | None:
    """The job that brought ``delivery`` forward is in the dead letters: a failed delivery, or one a crash left
    sending, becomes dead (no new try is planned any more: a person decides). Returns the status it left, None
    when it was elsewhere (delivered, refused already, held…) and stays."""
    if delivery.status not in (DeliveryStatus.FAILED, DeliveryStatus.SENDING):
        return None
    before = DeliveryStatus(delivery.status)
    set_delivery_status(delivery, DeliveryStatus.DEAD)
    return before
