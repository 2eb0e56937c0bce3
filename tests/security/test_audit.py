"""The audit trail: append-only in the database, hash-chained, anchored; verify names the first broken link."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from opensegur.security import audit
from opensegur.security.actor import Actor
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.db import Database
from opensegur.store.models import AuditAnchor, AuditEvent, AuditSeal, Base

from .conftest import tamper

DOCTOR = Actor(
    kind="person",
    name="dr.martin",
    display_name="Dr Claire Martin",
    assignments=(Assignment("medecin", Scope.parse("ght")), Assignment("dim", Scope.parse("ght"))),
    strong=True,
    session_id=7,
    rpps="10003456789",
    address="10.0.0.1",
)


def fill(db: Database, count: int = 5) -> None:
    with db.session() as s:
        for i in range(count):
            if i % 2:
                audit.record(s, None, "mss_reject", None, None, {"mail": i}, actor_name="flux mss")
            else:
                audit.record(
                    s, DOCTOR, "read_identity", None, "soins", {"note": f"entrée n° {i} — é", "n": i / 3}
                )


def sealed_trail(db: Database, count: int = 5) -> None:
    fill(db, count)
    assert audit.seal_pending(db) == count


def test_record_fills_who_and_from_where(db: Database) -> None:
    with db.session() as s:
        event = audit.record(s, DOCTOR, "read_identity", None, "soins", {"patients": [1, 2]})
        assert (event.actor, event.role, event.rpps, event.address, event.session_ref) == (
            "dr.martin",
            "medecin,dim",
            "10003456789",
            "10.0.0.1",
            "session:7",
        )
        with pytest.raises(TypeError):
            audit.record(s, None, "x", None, None)
        with pytest.raises(TypeError):
            audit.record(s, DOCTOR, "x", None, None, actor_name="other")


def test_untouched_trail_verifies(db: Database, tmp_path: Path) -> None:
    fill(db, 3)
    report = audit.verify(db)
    assert report.intact and (report.sealed, report.pending) == (0, 3)
    assert audit.seal_pending(db) == 3
    assert audit.seal_pending(db) == 0
    fill(db, 2)
    assert audit.seal_pending(db) == 2
    anchor_file = tmp_path / "anchors.jsonl"
    head = audit.anchor(db, anchor_file)
    assert head is not None and head.seq == 5
    again = audit.anchor(db, anchor_file)  # an unchanged head is not anchored twice
    assert again is not None and again.id == head.id
    assert len(anchor_file.read_text().splitlines()) == 1
    assert anchor_file.stat().st_mode & 0o077 == 0
    report = audit.verify(db, anchor_file)
    assert report.intact and (report.sealed, report.pending, report.anchors) == (5, 0, 2)
    assert report.summary().startswith("Trace d'audit intacte : 5 entrée(s) scellée(s)")
    with db.session() as s:
        seals = s.scalars(select(AuditSeal).order_by(AuditSeal.seq)).all()
        assert seals[0].prev_hash == audit.GENESIS
        assert all(b.prev_hash == a.hash for a, b in zip(seals, seals[1:], strict=False))
        assert [x.event_id for x in seals] == sorted(x.event_id for x in seals)


def test_changed_entry_is_the_first_broken_link(db: Database) -> None:
    sealed_trail(db)
    tamper(db, ["UPDATE audit_event SET reason = 'bris de glace' WHERE id = 3"])
    report = audit.verify(db)
    assert not report.intact and report.broken is not None
    assert (report.broken.seq, report.broken.event_id) == (3, 3)
    assert "entrée modifiée" in report.broken.problem
    assert "premier maillon rompu : maillon n° 3, entrée n° 3" in report.summary()


def test_changed_json_detail_is_detected(db: Database) -> None:
    sealed_trail(db)
    tamper(db, ["UPDATE audit_event SET detail = '{\"mail\": 99}' WHERE id = 2"])
    broken = audit.verify(db).broken
    assert broken is not None and (broken.seq, broken.event_id) == (2, 2)


def test_deleted_entry(db: Database) -> None:
    sealed_trail(db)
    tamper(db, ["DELETE FROM audit_event WHERE id = 4"])
    broken = audit.verify(db).broken
    assert broken is not None and (broken.seq, broken.event_id) == (4, 4)
    assert broken.problem == "entrée supprimée"


def test_deleted_entry_and_its_seal(db: Database) -> None:
    sealed_trail(db)
    tamper(db, ["DELETE FROM audit_seal WHERE seq = 2", "DELETE FROM audit_event WHERE id = 2"])
    broken = audit.verify(db).broken
    assert broken is not None and broken.seq == 2 and "maillon absent" in broken.problem


def test_reordered_entries(db: Database) -> None:
    sealed_trail(db)
    tamper(
        db,
        [
            "UPDATE audit_seal SET event_id = 1000 WHERE seq = 2",
            "UPDATE audit_seal SET event_id = 2 WHERE seq = 3",
            "UPDATE audit_seal SET event_id = 3 WHERE seq = 2",
        ],
    )
    broken = audit.verify(db).broken
    assert broken is not None and broken.seq == 2


def test_changed_seal_breaks_the_next_link(db: Database) -> None:
    sealed_trail(db)
    tamper(db, [f"UPDATE audit_seal SET hash = '{'f' * 64}' WHERE seq = 5"])
    broken = audit.verify(db).broken
    assert broken is not None and broken.seq == 5
    sealed_trail(db, 1)  # the next seal chains on the forged hash, and the forged one itself is caught
    broken = audit.verify(db).broken
    assert broken is not None and broken.seq == 5


def rewrite_chain_from(db: Database, event_id: int) -> None:
    """The attacker's best move: change an entry, then recompute every hash from there on."""
    tamper(db, [f"UPDATE audit_event SET actor = 'quelqu''un' WHERE id = {event_id}"])
    with db.session() as s:
        rows = s.execute(
            select(AuditSeal, AuditEvent)
            .join(AuditEvent, AuditEvent.id == AuditSeal.event_id)
            .order_by(AuditSeal.seq)
        ).all()
        statements = []
        prev = audit.GENESIS
        for seal, event in rows:
            digest = audit.entry_hash(prev, event)
            statements.append(
                f"UPDATE audit_seal SET prev_hash = '{prev}', hash = '{digest}' WHERE seq = {seal.seq}"
            )
            prev = digest
    tamper(db, statements)


def test_rewritten_chain_is_caught_by_the_anchor_table(db: Database) -> None:
    sealed_trail(db)
    audit.anchor(db)
    rewrite_chain_from(db, 2)
    broken = audit.verify(db).broken
    assert broken is not None and broken.seq == 5 and "ancre (base)" in broken.problem


def test_rewritten_chain_and_anchor_table_caught_by_the_anchor_file(db: Database, tmp_path: Path) -> None:
    anchor_file = tmp_path / "anchors.jsonl"
    sealed_trail(db, 3)
    audit.anchor(db, anchor_file)
    sealed_trail(db, 3)
    audit.anchor(db, anchor_file)
    rewrite_chain_from(db, 2)
    with db.session() as s:
        statements = [
            f"UPDATE audit_anchor SET hash = '{h}' WHERE seq = {q}"
            for q, h in s.execute(select(AuditSeal.seq, AuditSeal.hash).where(AuditSeal.seq.in_([3, 6])))
        ]
    tamper(db, statements)
    assert audit.verify(db).intact  # the database alone now looks consistent…
    broken = audit.verify(db, anchor_file).broken
    assert broken is not None and broken.seq == 3 and "ancre (fichier)" in broken.problem


def test_truncated_tail_is_caught_by_the_anchor(db: Database, tmp_path: Path) -> None:
    anchor_file = tmp_path / "anchors.jsonl"
    sealed_trail(db)
    audit.anchor(db, anchor_file)
    tamper(db, ["DELETE FROM audit_seal WHERE seq >= 4", "DELETE FROM audit_event WHERE id >= 4"])
    report = audit.verify(db, anchor_file)
    assert report.broken is not None and report.broken.seq == 5 and "absent" in report.broken.problem
    assert report.sealed == 3


def test_unreadable_anchor_file(db: Database, tmp_path: Path) -> None:
    sealed_trail(db, 1)
    anchor_file = tmp_path / "anchors.jsonl"
    anchor_file.write_text(json.dumps({"seq": 1}) + "\n")
    broken = audit.verify(db, anchor_file).broken
    assert broken is not None and broken.seq is None and "ligne 1" in broken.problem


@pytest.mark.parametrize("model", [AuditEvent, AuditSeal, AuditAnchor])
def test_database_refuses_update_and_delete(db: Database, model: type[Base]) -> None:
    sealed_trail(db, 2)
    audit.anchor(db)
    column = {AuditEvent: AuditEvent.reason, AuditSeal: AuditSeal.hash, AuditAnchor: AuditAnchor.hash}[model]
    with pytest.raises(DBAPIError, match="ajout seul"), db.session() as s:
        s.execute(update(model).values({column.key: "x"}))
    with pytest.raises(DBAPIError, match="ajout seul"), db.session() as s:
        s.execute(delete(model))
    if not db.is_sqlite:
        with pytest.raises(DBAPIError, match="ajout seul"), db.session() as s:
            s.execute(text(f"TRUNCATE {model.__tablename__} CASCADE"))
    report = audit.verify(db)
    assert report.intact and report.sealed == 2 and report.anchors == 1


def test_orm_update_of_an_entry_refused(db: Database) -> None:
    fill(db, 1)
    with pytest.raises(DBAPIError, match="ajout seul"), db.session() as s:
        s.scalars(select(AuditEvent)).one().reason = "changed"


def test_concurrent_sealers_build_one_chain(db: Database) -> None:
    fill(db, 40)
    others = [Database(db.url) for _ in range(3)]
    counts: list[int] = []
    try:
        threads = [threading.Thread(target=lambda d=d: counts.append(audit.seal_pending(d))) for d in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for d in others:
            d.dispose()
    assert sum(counts) == 40
    report = audit.verify(db)
    assert report.intact and report.sealed == 40
