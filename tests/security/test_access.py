"""Patient visibility by scope (GHT, site, unit care relationship) and break the glass, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from opensegur.security.access import (
    GLASS_DURATION,
    break_glass,
    glass_broken,
    patient_allowed,
    patient_allowed_or_glass,
    patient_scope_filter,
)
from opensegur.security.actor import Actor
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.db import Database
from opensegur.store.models import Account, AuditEvent, Patient, Stay, Structure, Unit, utcnow

SITE_A, SITE_B = "100000017", "200000025"
MOTIF = "Patient inconscient admis aux urgences, antécédents nécessaires"


@dataclass
class World:
    ids: dict[str, int]
    account_id: int

    def names(self, ids: Sequence[int]) -> set[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return {by_id[i] for i in ids}


@pytest.fixture
def world(db: Database) -> World:
    """Two sites (the same UF code 1001 exists at both), patients with and without stays."""
    now = utcnow()
    with db.session() as s:
        ej = Structure(kind="EJ", finess="300000013", name="GHT de test", settings={})
        s.add(ej)
        s.flush()
        sites = {}
        for finess, name in ((SITE_A, "Site A"), (SITE_B, "Site B")):
            site = Structure(kind="EG", finess=finess, name=name, parent_id=ej.id, settings={})
            s.add(site)
            s.flush()
            s.add_all([Unit(structure_id=site.id, code=c, name=c) for c in ("1001", "2002")])
            sites[finess] = site
        ids: dict[str, int] = {}

        def patient(name: str, finess: str, *stays: Stay, merged_into: str | None = None) -> None:
            p = Patient(
                structure_id=sites[finess].id,
                birth_name=name.upper(),
                first_names="TEST",
                sex="F",
                dmp_consent={},
                insi_state={},
                merged_into_id=ids[merged_into] if merged_into else None,
                active=merged_into is None,
            )
            s.add(p)
            s.flush()
            for n, stay in enumerate(stays):
                stay.patient_id, stay.visit_number = p.id, f"{name}-{n}"
                s.add(stay)
            ids[name] = p.id

        def stay(
            finess: str, unit: str, *, ended_hours_ago: float | None = None, cancelled: bool = False
        ) -> Stay:
            ended = now - timedelta(hours=ended_hours_ago) if ended_hours_ago is not None else None
            return Stay(
                structure_id=sites[finess].id,
                unit_code=unit,
                patient_class="I",
                started_at=now - timedelta(days=5),
                ended_at=ended,
                cancelled=cancelled,
            )

        patient("current_a1", SITE_A, stay(SITE_A, "1001"))
        patient("current_a2", SITE_A, stay(SITE_A, "2002"))
        patient("no_stay_a", SITE_A)
        patient("recently_discharged_a1", SITE_A, stay(SITE_A, "1001", ended_hours_ago=10))
        patient("discharged_long_ago_a1", SITE_A, stay(SITE_A, "1001", ended_hours_ago=72))
        patient("cancelled_a1", SITE_A, stay(SITE_A, "1001", cancelled=True))
        # An old stay in 1001 and a current one in 2002: only the current one counts.
        patient("moved_a1_to_a2", SITE_A, stay(SITE_A, "1001", ended_hours_ago=100), stay(SITE_A, "2002"))
        patient("current_b1", SITE_B, stay(SITE_B, "1001"))
        # An identity of site B cared for at site A (same GHT): the unit reaches it, site A's scope does not.
        patient("b_patient_in_a1", SITE_B, stay(SITE_A, "1001"))
        # Merged-away identity without stays of its own: judged on its own row (module docstring).
        patient("merged_into_current_a1", SITE_A, merged_into="current_a1")
        account = Account(login="dr.garcia", display_name="Dr Garcia", assignments=[], recovery_codes=[])
        s.add(account)
        s.flush()
        return World(ids, account.id)


def visible(db: Database, world: World, scopes: Sequence[str], now: datetime | None = None) -> set[str]:
    with db.session() as s:
        clause = patient_scope_filter([Scope.parse(x) for x in scopes], now=now)
        return world.names(s.scalars(select(Patient.id).where(clause)).all())


def test_unit_scope_sees_current_stays_of_that_unit_only(db: Database, world: World) -> None:
    assert visible(db, world, [f"unit:{SITE_A}/1001"]) == {
        "current_a1",
        "recently_discharged_a1",
        "b_patient_in_a1",
    }
    assert visible(db, world, [f"unit:{SITE_A}/2002"]) == {"current_a2", "moved_a1_to_a2"}
    # Same UF code, other site.
    assert visible(db, world, [f"unit:{SITE_B}/1001"]) == {"current_b1"}
    assert visible(db, world, [f"unit:{SITE_B}/2002"]) == set()


def test_site_scope_sees_the_site_identities(db: Database, world: World) -> None:
    site_a = {n for n in world.ids if n.endswith(("_a", "_a1", "_a2"))} - {"b_patient_in_a1"}
    assert visible(db, world, [f"site:{SITE_A}"]) == site_a
    assert visible(db, world, [f"site:{SITE_B}"]) == {"current_b1", "b_patient_in_a1"}


def test_ght_sees_everyone_and_no_scope_no_one(db: Database, world: World) -> None:
    assert visible(db, world, ["ght"]) == set(world.ids)
    assert visible(db, world, ["ght", f"unit:{SITE_A}/1001"]) == set(world.ids)
    assert visible(db, world, []) == set()


def test_scopes_add_up(db: Database, world: World) -> None:
    assert visible(db, world, [f"unit:{SITE_A}/2002", f"site:{SITE_B}"]) == {
        "current_a2",
        "moved_a1_to_a2",
        "current_b1",
        "b_patient_in_a1",
    }
    assert visible(db, world, [f"unit:{SITE_A}/2002", f"unit:{SITE_B}/1001"]) == {
        "current_a2",
        "moved_a1_to_a2",
        "current_b1",
    }


def test_discharge_grace_is_48_hours(db: Database, world: World) -> None:
    scope = [f"unit:{SITE_A}/1001"]
    assert "recently_discharged_a1" in visible(db, world, scope)
    assert "recently_discharged_a1" not in visible(db, world, scope, now=utcnow() + timedelta(hours=39))
    assert "discharged_long_ago_a1" not in visible(db, world, scope)
    assert "discharged_long_ago_a1" in visible(db, world, scope, now=utcnow() - timedelta(hours=25))


def test_patient_allowed_matches_the_filter(db: Database, world: World) -> None:
    scopes = [Scope.parse(f"unit:{SITE_A}/1001")]
    listed = visible(db, world, [str(x) for x in scopes])
    with db.session() as s:
        assert {name for name, pid in world.ids.items() if patient_allowed(s, scopes, pid)} == listed
        assert not patient_allowed(s, scopes, 10**9)
        assert not patient_allowed(s, [], world.ids["current_a1"])


def doctor(world: World, *, account: bool = True, name: str = "dr.garcia") -> Actor:
    return Actor(
        kind="person",
        name=name,
        display_name="Dr Garcia",
        assignments=(Assignment("medecin", Scope.parse(f"unit:{SITE_A}/1001")),),
        strong=True,
        account_id=world.account_id if account else None,
        session_id=42,
        rpps="10000000106",
        address="10.0.0.7",
    )


def test_break_the_glass_grants_four_hours_and_is_audited(db: Database, world: World) -> None:
    actor = doctor(world)
    target = world.ids["current_b1"]  # outside the doctor's unit
    scopes = [a.scope for a in actor.assignments]
    with db.session() as s:
        assert not patient_allowed_or_glass(s, actor, scopes, target)
        break_glass(s, actor, target, MOTIF)
    now = utcnow()
    with db.session() as s:
        assert patient_allowed_or_glass(s, actor, scopes, target)
        assert glass_broken(s, actor, target, now + GLASS_DURATION - timedelta(minutes=1))
        assert not glass_broken(s, actor, target, now + GLASS_DURATION + timedelta(minutes=1))
        assert not patient_allowed_or_glass(s, actor, scopes, target, now=now + timedelta(hours=5))
        # Only this patient, only this account.
        assert not glass_broken(s, actor, world.ids["current_a2"], now)
        assert not glass_broken(s, doctor(world, account=False, name="dr.other"), target, now)
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "break_glass")).one()
        assert event.patient_id == target
        assert event.reason == "bris de glace: " + MOTIF
        assert (event.actor, event.account_id, event.role, event.rpps, event.address, event.session_ref) == (
            "dr.garcia",
            world.account_id,
            "medecin",
            "10000000106",
            "10.0.0.7",
            "session:42",
        )


def test_break_the_glass_of_a_system_actor_is_matched_by_name(db: Database, world: World) -> None:
    token = Actor(kind="system", name="regulation-samu", display_name="SAMU", assignments=(), token_id=7)
    target = world.ids["current_a1"]
    with db.session() as s:
        break_glass(s, token, target, MOTIF)
    with db.session() as s:
        assert glass_broken(s, token, target)
        assert s.scalars(select(AuditEvent.session_ref)).one() == "token:7"


@pytest.mark.parametrize("motif", ["", "   ", "urgence", "  urgence  \n "])
def test_break_the_glass_needs_a_motif(db: Database, world: World, motif: str) -> None:
    actor = doctor(world)
    with db.session() as s, pytest.raises(ValueError, match="motif d'au moins 10 caractères"):
        break_glass(s, actor, world.ids["current_b1"], motif)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0
        assert not glass_broken(s, actor, world.ids["current_b1"])


def test_break_the_glass_on_an_unknown_patient_is_refused(db: Database, world: World) -> None:
    with db.session() as s, pytest.raises(ValueError, match="patient inconnu"):
        break_glass(s, doctor(world), 10**9, MOTIF)


def test_a_long_motif_is_kept_whole_in_the_detail(db: Database, world: World) -> None:
    motif = "Arrêt cardio-respiratoire, " * 20
    with db.session() as s:
        break_glass(s, doctor(world), world.ids["current_b1"], motif)
    with db.session() as s:
        event = s.scalars(select(AuditEvent)).one()
        assert event.reason is not None and len(event.reason) == 200
        assert event.detail["motif"] == motif.strip()
