"""Where a document stands, as the flow view shows it (pages, API) and the flows set it.

received → (waiting_identity) → validated → sending → sent → acknowledged, with ``held`` while a professional
retains it, ``opposition`` when the patient opposed the DMP feed, ``rejected`` when its content or its sender is
refused, ``error`` when a delivery failed. The status is the document's as a whole; each destination's own state
is its ``Delivery``'s.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

__all__ = ["STATUS_LABELS", "DocumentStatus", "HasStatus", "set_status"]


class DocumentStatus(StrEnum):
    RECEIVED = "received"
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


class HasStatus(Protocol):
    """A stored document (``store.models.Document``), as this module needs it: no database here."""

    status: str
    status_reason: str | None


def set_status(doc: HasStatus, status: DocumentStatus, reason: str | None = None) -> None:
    doc.status = status
    doc.status_reason = reason
