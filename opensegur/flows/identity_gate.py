"""The identity gate of the document flows: documents wait for a qualified identity, then go on by themselves."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.flows.jobs import JobKind
from opensegur.store import jobs
from opensegur.store.models import Document, utcnow


def release_waiting_documents(s: Session, patient_id: int) -> int:
    """Called when an identity becomes qualified: its waiting documents go through the gates again."""
    waiting = s.scalars(
        select(Document).where(
            Document.patient_id == patient_id, Document.status == DocumentStatus.WAITING_IDENTITY
        )
    ).all()
    for doc in waiting:
        set_status(doc, DocumentStatus.RECEIVED, "Identité qualifiée : reprise du traitement")
        jobs.enqueue(
            s,
            JobKind.PROCESS,
            f"{JobKind.PROCESS}:{doc.id}:{utcnow().isoformat()}",
            {"document_id": doc.id},
            structure_id=doc.structure_id,
            patient_id=patient_id,
        )
    return len(waiting)
