"""Where a document stands, as the flow view shows it (pages, API) and the flows set it.

A document the hospital produces is ``received``, then validated against its volet: ``rejected`` when its content
or its sender is refused, ``waiting_identity`` until its patient's INS is qualified, ``opposition`` when the
patient opposed the DMP feed, ``held`` while a professional retains it, else ``validated``. It is then ``sending``,
``sent``, ``acknowledged`` (the DMP, or the MSSanté recipient's report, confirmed it) or in ``error``. A document
received by MSSanté mail is ``integrated`` until the DPI accepts it (``acknowledged``) or refuses it.

The status is the document's as a whole; each destination's own state is its ``Delivery``'s (its statuses and
their table are :mod:`opensegur.documents.delivery`'s). It follows the DMP's delivery when the DMP is a destination,
else the MSSanté ones', which is why the delivery statuses may move back and forth between ``sending``, ``sent``
and ``error`` (a second recipient's mail after the first one's).

The transitions are a table (:data:`TRANSITIONS`), as :mod:`opensegur.identity.rniv` has for identities:
:func:`set_status` refuses any other, so a flow that would move a rejected document on, or hold a sent one, fails
loudly instead of showing a clinician a status that never happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from opensegur.errors import OpenSegurError

__all__ = [
    "HOLDABLE",
    "INITIAL",
    "STATUS_LABELS",
    "TRANSITIONS",
    "DocumentStatus",
    "HasStatus",
    "LifecycleError",
    "can_become",
    "set_status",
]


class DocumentStatus(StrEnum):
    RECEIVED = "received"
    INTEGRATED = "integrated"
    VALIDATED = "validated"
    WAITING_IDENTITY = "waiting_identity"
    HELD = "held"
    SENDING = "sending"
    SENT = "sent"
    ACKNOWLEDGED = "acknowledged"
    OPPOSITION = "opposition"
    REJECTED = "rejected"
    ERROR = "error"


# Keyed by the members, which are their strings: a stored status finds its label as it is.
STATUS_LABELS: dict[str, str] = {
    DocumentStatus.RECEIVED: "Reçu",
    DocumentStatus.INTEGRATED: "Intégré",
    DocumentStatus.VALIDATED: "Validé",
    DocumentStatus.WAITING_IDENTITY: "En attente d'identité qualifiée",
    DocumentStatus.HELD: "Retenu",
    DocumentStatus.SENDING: "Envoi en cours",
    DocumentStatus.SENT: "Envoyé",
    DocumentStatus.ACKNOWLEDGED: "Accusé",
    DocumentStatus.OPPOSITION: "Opposition du patient",
    DocumentStatus.REJECTED: "Rejeté",
    DocumentStatus.ERROR: "Erreur",
}

_S = DocumentStatus

# A produced document enters as received (intake), a document received by mail as integrated (mss_inbound).
INITIAL = frozenset({_S.RECEIVED, _S.INTEGRATED})

# Where each status may go; staying is always allowed (a new reason, a job run again).
TRANSITIONS: Mapping[DocumentStatus, frozenset[DocumentStatus]] = MappingProxyType(
    {
        # Processing decides; the last three when a processing job run again finds its delivery under way.
        _S.RECEIVED: frozenset(
            {
                _S.VALIDATED,
                _S.WAITING_IDENTITY,
                _S.HELD,
                _S.REJECTED,
                _S.OPPOSITION,
                _S.ACKNOWLEDGED,  # identical content already in the DMP: nothing to send
                _S.SENDING,
                _S.SENT,
                _S.ERROR,
            }
        ),
        _S.WAITING_IDENTITY: frozenset({_S.RECEIVED, _S.HELD}),  # the identity qualified: processed again
        _S.HELD: frozenset({_S.VALIDATED, _S.RECEIVED}),  # released: its deliveries go, or it is processed
        _S.VALIDATED: frozenset({_S.SENDING, _S.SENT, _S.ERROR, _S.HELD}),
        # Validated again: waits for the document it replaces. Not held: the exchange is under way.
        _S.SENDING: frozenset({_S.SENT, _S.ERROR, _S.VALIDATED}),
        # Another recipient's mail of a document sent by MSSanté only starts, fails or goes.
        _S.SENT: frozenset({_S.ACKNOWLEDGED, _S.SENDING, _S.ERROR}),
        _S.ACKNOWLEDGED: frozenset({_S.SENDING, _S.SENT, _S.ERROR}),
        _S.ERROR: frozenset({_S.VALIDATED, _S.SENDING, _S.SENT, _S.HELD}),  # retried by a person or the queue
        _S.INTEGRATED: frozenset({_S.ACKNOWLEDGED, _S.REJECTED}),  # the DPI's answer
        _S.REJECTED: frozenset(),  # a corrected document comes as a new version
        _S.OPPOSITION: frozenset(),
    }
)


# What a professional may still retain: nothing once sent, nor while it is being sent.
HOLDABLE = frozenset(status for status, after in TRANSITIONS.items() if DocumentStatus.HELD in after)


class LifecycleError(OpenSegurError, ValueError):
    """A flow asked for a transition the table does not allow."""

    def __init__(self, current: str, wanted: DocumentStatus) -> None:
        self.current, self.wanted = current, wanted
        super().__init__(
            f"Un document « {STATUS_LABELS.get(current, current)} » ne peut pas passer à « {STATUS_LABELS[wanted]} »"
        )


class HasStatus(Protocol):
    """A stored document (``store.models.Document``), as this module needs it: no database here."""

    status: str
    status_reason: str | None


def can_become(current: str, wanted: DocumentStatus) -> bool:
    return current == wanted or wanted in TRANSITIONS[DocumentStatus(current)]


def set_status(doc: HasStatus, status: DocumentStatus, reason: str | None = None) -> None:
    if not can_become(doc.status, status):
        raise LifecycleError(doc.status, status)
    doc.status = status
    doc.status_reason = reason
