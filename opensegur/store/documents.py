"""Stored documents looked up the way several flows need them (the DMP feed, MSSanté, the DRIMbox, MHD)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.store.models import Document

__all__ = ["document_with_content"]


def document_with_content(s: Session, structure_id: int, unique_id: str) -> Document | None:
    """The initial or replacement document of a site that carries ``unique_id`` (what a T10 replaces, a T04
    deletes): a deletion request shares the uniqueId but has no content of its own."""
    return s.scalar(
        select(Document).where(
            Document.structure_id == structure_id,
            Document.unique_id == unique_id,
            Document.kind.in_(("initial", "replacement")),
        )
    )
