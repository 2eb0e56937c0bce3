"""Flow: the list of a patient's DMP documents a professional keeps, and how a later opening brings it up to date
(PDSM4DMP ``exemples_usage_dmp``, rule 2): rather than searching the whole period again, ask what was submitted
since the last call — FindSubmissionSets from that call, then GetAssociations on those sets and
GetDocumentsAndAssociations on their members, in batches of 20 entryUUIDs — and apply it to the kept list.

The list is kept per patient and professional, with each document's entryUUID, logicalId and uniqueId: what the
DMP shows depends on who asks. It is filled by the first consultation, or before it by the prefetch on admission
(``dmp_prefetch``).

What a delta cannot see: after a document's author masks it to professionals, the DMP shows this professional
neither the new version nor the submission set that carried it, so the old version would stay listed. A complete
search (FindDocuments) therefore replaces the list once it is ``COMPLETE_SEARCH_AFTER`` old, and whenever the
professional asks for it (« Actualiser »).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opensegur.documents.metadata import DocumentMetadata, metadata_from_dict, metadata_to_json
from opensegur.flows.dmp_consult import Consulter, DmpConsultPort
from opensegur.store.jobs import aware
from opensegur.store.models import DmpListing
from opensegur.transactions.ihe_ids import (
    ASSOC_HAS_MEMBER,
    ASSOC_RPLC,
    ASSOC_UPDATE_AVAILABILITY,
    ASSOC_XFRM_RPLC,
)
from opensegur.transactions.xds import SIGNATURE_CLASS

__all__ = [
    "BATCH",
    "COMPLETE_SEARCH_AFTER",
    "ORIGIN_ADMISSION",
    "ORIGIN_CONSULTATION",
    "KeptList",
    "Refreshed",
    "listed",
    "load_list",
    "refresh",
    "save_list",
]

BATCH = 20  # entryUUIDs per GetAssociations / GetDocumentsAndAssociations (PDSM4DMP)
COMPLETE_SEARCH_AFTER = timedelta(hours=12)
# A set submitted while our previous call was under way, or stamped by a DMP clock slightly behind ours; asking a
# minute more costs a set already applied, which applying again does not change.
CLOCK_MARGIN = timedelta(minutes=1)
ORIGIN_ADMISSION, ORIGIN_CONSULTATION = "admission", "consultation"
_MEMBERSHIPS = frozenset({ASSOC_HAS_MEMBER, ASSOC_UPDATE_AVAILABILITY})
_REPLACEMENTS = frozenset({ASSOC_RPLC, ASSOC_XFRM_RPLC})


@dataclass(frozen=True)
class KeptList:
    """The documents a professional was last shown for a patient (approved, acts since ``since``)."""

    fetched_at: datetime  # when the DMP was last asked: the next delta starts there
    searched_at: datetime  # the last complete search
    since: datetime  # the bound on the acts' date (the first search's two years)
    origin: str  # ORIGIN_ADMISSION (prefetched) or ORIGIN_CONSULTATION
    documents: tuple[DocumentMetadata, ...]

    def fresh(self, now: datetime) -> bool:
        return now - self.searched_at < COMPLETE_SEARCH_AFTER


@dataclass(frozen=True)
class Refreshed:
    documents: list[DocumentMetadata]
    added: int  # entries new to the list: new documents, corrections, new versions
    withdrawn: int  # entries gone from it: replaced, deleted, out of the period

    @property
    def changed(self) -> bool:
        return bool(self.added or self.withdrawn)


def _batches(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), BATCH):
        yield list(ids[start : start + BATCH])


def _dtm(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S")


def listed(doc: DocumentMetadata, since: datetime) -> bool:
    """Whether the kept list shows ``doc``: approved, not a submission set's signature, an act since ``since``."""
    return (
        (doc.availability_status or "Approved") == "Approved"
        and doc.class_code.code != SIGNATURE_CLASS.code
        and (doc.act_time or "").ljust(14, "0") >= _dtm(since)
    )


async def refresh(
    port: DmpConsultPort, consulter: Consulter, cx: str, kept: KeptList, since: datetime
) -> Refreshed:
    """The kept list with what the DMP received since it was fetched, on acts since ``since``.

    A new document is added; a replaced one (RPLC), a new version of one (same logicalId, after a visibility
    change) or a status change (deletion, deprecation) takes the old one off the list. The port's errors reach
    the caller, as for a complete search."""
    sets = await port.find_submission_sets(consulter, cx, since=kept.fetched_at - CLOCK_MARGIN)
    members: dict[str, None] = {}
    for batch in _batches(sets):
        for a in await port.get_associations(consulter, cx, batch):
            if a.type in _MEMBERSHIPS and a.source in batch:
                members[a.target] = None
    found: list[DocumentMetadata] = []
    # The list drops its copy of every member and of what the members replace (RPLC)…
    gone = set(members)
    for batch in _batches(list(members)):
        docs, assocs = await port.get_documents_and_associations(consulter, cx, batch)
        found += docs
        gone |= {a.target for a in assocs if a.type in _REPLACEMENTS}
    current = [d for d in found if listed(d, since)]
    superseded = {d.logical_id for d in found if d.logical_id} | {d.unique_id for d in current}
    kept_docs = [
        d
        for d in kept.documents
        if d.entry_uuid not in gone and d.logical_id not in superseded and d.unique_id not in superseded
    ]
    documents = [d for d in kept_docs if listed(d, since)] + current  # …and lists the members still current
    before, after = {d.entry_uuid for d in kept.documents}, {d.entry_uuid for d in documents}
    return Refreshed(documents, added=len(after - before), withdrawn=len(before - after))


def _row(session: Session, patient_id: int, rpps: str) -> DmpListing | None:
    return session.scalar(
        select(DmpListing).where(DmpListing.patient_id == patient_id, DmpListing.rpps == rpps)
    )


def load_list(session: Session, patient_id: int, rpps: str) -> KeptList | None:
    row = _row(session, patient_id, rpps)
    if row is None or row.since is None:
        return None
    return KeptList(
        aware(row.fetched_at),
        aware(row.searched_at),
        aware(row.since),
        row.origin,
        tuple(metadata_from_dict(d) for d in row.documents),
    )


def save_list(
    session: Session, patient_id: int, rpps: str, kept: KeptList, *, same_documents: bool = False
) -> None:
    """Keep ``kept`` as this professional's list of this patient's DMP, in place of the previous one;
    ``same_documents``: only its dates change (a refresh that found nothing), the documents are not written again.

    The lists past ``COMPLETE_SEARCH_AFTER`` are deleted on the way: no opening uses them any more, and they hold
    health data (titles, authors) that nothing else needs."""
    session.execute(
        delete(DmpListing).where(DmpListing.searched_at < kept.fetched_at - COMPLETE_SEARCH_AFTER)
    )
    mine = (DmpListing.patient_id == patient_id) & (DmpListing.rpps == rpps)
    if same_documents:
        dates = {"fetched_at": kept.fetched_at, "searched_at": kept.searched_at, "since": kept.since}
        if session.execute(update(DmpListing).where(mine).values(dates)).rowcount:  # type: ignore[attr-defined]
            return
    values = {
        "fetched_at": kept.fetched_at,
        "searched_at": kept.searched_at,
        "since": kept.since,
        "origin": kept.origin,
        "documents": [json.loads(metadata_to_json(d)) for d in kept.documents],
    }
    row = _row(session, patient_id, rpps)
    if row is None:
        try:
            with session.begin_nested():
                session.add(DmpListing(patient_id=patient_id, rpps=rpps, **values))
            return
        except IntegrityError:  # the same professional's other page, or the prefetch, kept one meanwhile
            row = _row(session, patient_id, rpps)
            assert row is not None
    for name, value in values.items():
        setattr(row, name, value)
    session.flush()
