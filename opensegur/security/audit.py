"""The audit trail: who did what on which patient, when, from where and why — append-only and tamper-evident.

``record`` adds an ``AuditEvent`` in the caller's transaction. A single sealer (``seal_pending``) later chains the
committed entries: seal n holds hash_n = SHA-256(hash_{n-1} ‖ canonical JSON of entry n). Entries are chained in
the order the sealer finds them committed, not by id (PostgreSQL hands out ids before commit, so a smaller id can
commit later). ``anchor`` copies the chain head to ``audit_anchor`` and to a file kept apart from the database:
rewriting the chain from some entry on, hashes included, no longer matches an anchor. The database refuses
UPDATE and DELETE on the three tables (migration 0005); ``verify`` catches whoever bypasses that with access to
the database files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from opensegur.security.actor import Actor
from opensegur.security.clock import as_utc
from opensegur.store.db import Database
from opensegur.store.models import AuditAnchor, AuditEvent, AuditSeal, utcnow

__all__ = [
    "GENESIS",
    "BrokenLink",
    "VerifyReport",
    "anchor",
    "entry_hash",
    "record",
    "record_admin",
    "seal_pending",
    "verify",
]

GENESIS = "0" * 64
_SEAL_BATCH = 500  # entries sealed per transaction: short locks while a large backlog is sealed
_SEALER_LOCK = 0x05E6A0D1  # pg_advisory_xact_lock key of the sealer: one sealer at a time across hosts
_ACTOR_MAX = 100
_REASON_MAX = 200


def record(
    session: Session,
    actor: Actor | None,
    action: str,
    patient_id: int | None,
    reason: str | None,
    detail: dict[str, Any] | None = None,
    actor_name: str | None = None,
) -> AuditEvent:
    """Add an entry in the caller's transaction. ``actor`` for a person or token; ``actor_name`` instead names a
    flow or the command line, which have no Actor."""
    if (actor is None) == (actor_name is None):
        raise TypeError("record() takes exactly one of actor and actor_name")
    who = actor.audit_fields() if actor is not None else {"actor": actor_name}
    who["actor"] = str(who["actor"])[:_ACTOR_MAX]
    event = AuditEvent(
        action=action[:64],
        patient_id=patient_id,
        reason=reason[:_REASON_MAX] if reason else None,
        detail=detail or {},
        **who,
    )
    session.add(event)
    session.flush()
    return event


def record_admin(session: Session, by: Actor | str | None, action: str, detail: dict[str, Any]) -> AuditEvent:
    """An administration entry (accounts, tokens) made by a logged-in person, or a named tool (``cli``)."""
    if isinstance(by, Actor):
        return record(session, by, action, None, "administration", detail)
    return record(session, None, action, None, "administration", detail, actor_name=by or "opensegur")


def _canonical(event: AuditEvent) -> bytes:
    entry = {
        "id": event.id,
        "at": as_utc(event.at).isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "patient_id": event.patient_id,
        "reason": event.reason,
        "detail": event.detail,
        "account_id": event.account_id,
        "role": event.role,
        "rpps": event.rpps,
        "address": event.address,
        "session_ref": event.session_ref,
    }
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256(prev_hash.encode() + _canonical(event)).hexdigest()


def _head(session: Session) -> tuple[int, str]:
    last = session.execute(
        select(AuditSeal.seq, AuditSeal.hash).order_by(AuditSeal.seq.desc()).limit(1)
    ).first()
    return (last.seq, last.hash) if last is not None else (0, GENESIS)


def seal_pending(db: Database) -> int:
    """Chain every committed entry that has no seal yet, oldest id first; returns how many were sealed."""
    sealed = 0
    while True:
        with db.session() as s:
            if s.get_bind().dialect.name == "postgresql":
                # Two sealers would both read the same head and fight over the next seq.
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEALER_LOCK})
            seq, prev = _head(s)
            pending = s.scalars(
                select(AuditEvent)
                .outerjoin(AuditSeal, AuditSeal.event_id == AuditEvent.id)
                .where(AuditSeal.seq.is_(None))
                .order_by(AuditEvent.id)
                .limit(_SEAL_BATCH)
            ).all()
            now = utcnow()
            for event in pending:
                seq += 1
                digest = entry_hash(prev, event)
                s.add(AuditSeal(seq=seq, event_id=event.id, prev_hash=prev, hash=digest, sealed_at=now))
                prev = digest
        sealed += len(pending)
        if len(pending) < _SEAL_BATCH:
            return sealed


def anchor(db: Database, anchor_file: Path | None = None) -> AuditAnchor | None:
    """Write the chain head to ``audit_anchor`` and, when given, append it to ``anchor_file`` (one JSON line).
    None while nothing is sealed; an unchanged head is not written twice."""
    with db.session() as s:
        seq, head = _head(s)
        if seq == 0:
            return None
        last = s.scalar(select(AuditAnchor).order_by(AuditAnchor.id.desc()).limit(1))
        if last is not None and last.seq == seq and last.hash == head:
            return last
        row = AuditAnchor(seq=seq, hash=head, at=utcnow())
        s.add(row)
    if anchor_file is not None:
        line = json.dumps({"seq": row.seq, "hash": row.hash, "at": as_utc(row.at).isoformat()}) + "\n"
        anchor_file.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only, appended and synced: the file is the copy an attacker on the database cannot rewrite.
        fd = os.open(anchor_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return row


@dataclass(frozen=True)
class BrokenLink:
    seq: int | None  # the position in the chain; None for a problem outside it (an unreadable anchor file)
    event_id: int | None
    problem: str  # French, for the operator

    def __str__(self) -> str:
        where = f"maillon n° {self.seq}" if self.seq is not None else "ancrage"
        entry = f", entrée n° {self.event_id}" if self.event_id is not None else ""
        return f"{where}{entry} : {self.problem}"


@dataclass(frozen=True)
class VerifyReport:
    sealed: int  # entries in the chain
    pending: int  # entries not sealed yet (not protected by the chain until then)
    anchors: int  # anchors checked, database and file
    broken: BrokenLink | None  # the first broken link; None when the chain is intact

    @property
    def intact(self) -> bool:
        return self.broken is None

    def summary(self) -> str:
        counts = (
            f"{self.sealed} entrée(s) scellée(s), {self.pending} en attente de scellement, "
            f"{self.anchors} ancre(s) vérifiée(s)"
        )
        if self.broken is None:
            return f"Trace d'audit intacte : {counts}."
        return f"Trace d'audit ALTÉRÉE — premier maillon rompu : {self.broken}. ({counts})"


def _file_anchors(anchor_file: Path) -> tuple[list[tuple[int, str]], BrokenLink | None]:
    anchors: list[tuple[int, str]] = []
    if not anchor_file.exists():
        return anchors, None
    with anchor_file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                anchors.append((int(data["seq"]), str(data["hash"])))
            except (ValueError, KeyError, TypeError):
                return anchors, BrokenLink(
                    None, None, f"ligne {number} du fichier d'ancrage {anchor_file} illisible"
                )
    return anchors, None


def verify(db: Database, anchor_file: Path | None = None) -> VerifyReport:
    """Walk the chain by seq, recompute every hash, compare the anchors; report the first broken link."""
    file_anchors, broken = _file_anchors(anchor_file) if anchor_file is not None else ([], None)
    with db.session() as s:
        db_anchors = [(a.seq, a.hash) for a in s.scalars(select(AuditAnchor).order_by(AuditAnchor.seq))]
        sealed = s.scalar(select(func.count()).select_from(AuditSeal)) or 0
        pending = (
            s.scalar(
                select(func.count(AuditEvent.id))
                .outerjoin(AuditSeal, AuditSeal.event_id == AuditEvent.id)
                .where(AuditSeal.seq.is_(None))
            )
            or 0
        )
    expected: dict[int, list[tuple[str, str]]] = {}
    for source, entries in (("base", db_anchors), ("fichier", file_anchors)):
        for seq, digest in entries:
            expected.setdefault(seq, []).append((source, digest))
    if broken is None:
        broken = _walk(db, expected)
    return VerifyReport(sealed, pending, len(db_anchors) + len(file_anchors), broken)


def _walk(db: Database, expected: dict[int, list[tuple[str, str]]]) -> BrokenLink | None:
    prev = GENESIS
    seq = 0
    while True:
        # One short transaction per batch: on SQLite a transaction holds the write lock, and the chain only
        # grows at its end, so batches read one consistent chain.
        with db.session() as s:
            batch = s.execute(
                select(AuditSeal, AuditEvent)
                .outerjoin(AuditEvent, AuditEvent.id == AuditSeal.event_id)
                .where(AuditSeal.seq > seq)
                .order_by(AuditSeal.seq)
                .limit(_SEAL_BATCH)
            ).all()
        for seal, event in batch:
            seq += 1
            if seal.seq != seq:
                return BrokenLink(
                    seq, None, f"maillon absent (le suivant est le n° {seal.seq}) : entrée et sceau supprimés"
                )
            if seal.prev_hash != prev:
                return BrokenLink(
                    seq,
                    seal.event_id,
                    "le sceau ne suit pas le précédent : sceau modifié ou chaîne réordonnée",
                )
            if event is None:
                return BrokenLink(seq, seal.event_id, "entrée supprimée")
            if entry_hash(prev, event) != seal.hash:
                return BrokenLink(
                    seq, seal.event_id, "entrée modifiée depuis son scellement (ou sceau modifié)"
                )
            for source, digest in expected.pop(seq, []):
                if digest != seal.hash:
                    return BrokenLink(
                        seq, seal.event_id, f"ne correspond pas à l'ancre ({source}) : chaîne réécrite"
                    )
            prev = seal.hash
        if len(batch) < _SEAL_BATCH:
            break
    if expected:
        missing = min(expected)
        source = expected[missing][0][0]
        return BrokenLink(
            missing,
            None,
            f"maillon ancré ({source}) absent : fin de la chaîne supprimée (dernier maillon : n° {seq})",
        )
    return None
