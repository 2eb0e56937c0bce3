from __future__ import annotations

from dataclasses import dataclass

from opensegur.documents.lifecycle import STATUS_LABELS, DocumentStatus, set_status


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
