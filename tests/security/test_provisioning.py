"""The HR lifecycle on SQLite and PostgreSQL: arrivals, moves, departures (sessions and tokens), returns."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from sqlalchemy import select

from opensegur.ops.demo import demo_config
from opensegur.security import accounts, sessions, tokens
from opensegur.security.matrix import Assignment, Scope
from opensegur.security.provisioning import (
    HrRecord,
    ProvisioningError,
    apply_records,
    check_record,
)
from opensegur.store.db import Database
from opensegur.store.models import Account, ApiToken, AuditEvent, WebSession

TODAY = date(2026, 3, 2)
SITE_1 = "750000028"


def rec(
    login: str = "m1001", scope: str = f"unit:{SITE_1}/6268", role: str = "medecin", **kw: object
) -> HrRecord:
    fields: dict[str, object] = {
        "login": login,
        "display_name": "Jean DUPONT",
        "rpps": "10010000189",
        "assignments": (Assignment(role, Scope.parse(scope)),),
    } | kw
    return HrRecord(**fields)  # type: ignore[arg-type]


def apply(db: Database, *records: HrRecord, today: date = TODAY) -> list[tuple[str, str]]:
    with db.session() as s:
        now = datetime.combine(today, time(12), UTC)
        report = apply_records(
            s, list(records), source="hr", origin="rh.csv", by="cli:rh", today=today, now=now
        )
    return [(c.kind, c.login) for c in report.changes]


def account(db: Database, login: str = "m1001") -> Account:
    with db.session() as s:
        row = s.scalars(select(Account).where(Account.login == login)).one()
        s.expunge(row)
        return row


def test_arrival_move_departure_and_idempotence(db: Database) -> None:
    assert apply(db, rec()) == [("arrivée", "m1001")]
    a = account(db)
    assert (a.source, a.active, a.password_hash, a.rpps) == ("hr", True, None, "10010000189")
    assert a.assignments == [{"role": "medecin", "scope": f"unit:{SITE_1}/6268"}]
    assert apply(db, rec()) == [("inchangé", "m1001")]  # the same feed twice changes nothing

    assert apply(db, rec(scope=f"unit:{SITE_1}/4010")) == [("mutation", "m1001")]
    assert account(db).assignments == [{"role": "medecin", "scope": f"unit:{SITE_1}/4010"}]

    with db.session() as s:
        row = s.get_one(Account, a.id)
        cookie, _ = sessions.open_session(s, row, "psc", True, "10.0.0.1", "test")
        mine = tokens.create_token(s, "script-dupont", "secretaire_medicale", created_by=row.login)
        other = tokens.create_token(s, "dpi-urgences", "secretaire_medicale", created_by="cli:root")
    departed = rec(departure=TODAY, assignments=())
    assert apply(db, departed) == [("départ", "m1001")]
    with db.session() as s:
        assert not s.get_one(Account, a.id).active
        assert sessions.resolve(s, cookie) is None
        assert s.scalars(select(WebSession.revoked_at).where(WebSession.account_id == a.id)).one() is not None
        assert tokens.resolve_token(s, mine) is None  # created by the person: revoked with the departure
        assert tokens.resolve_token(s, other) is not None  # someone else's integration keeps working
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("hr_%"))))
        detail = s.scalars(select(AuditEvent.detail).where(AuditEvent.action == "hr_departure")).one()
    assert actions == ["hr_arrival", "hr_move", "hr_departure"]
    assert detail["source"] == "rh.csv" and detail["tokens"] == ["script-dupont"] and detail["sessions"] == 1
    assert apply(db, departed) == [("inchangé", "m1001")]


def test_a_stale_line_does_not_reopen_a_departed_account_but_a_new_arrival_does(db: Database) -> None:
    apply(db, rec(arrival=date(2020, 1, 6)))
    apply(db, rec(departure=TODAY - timedelta(days=10)))
    assert apply(db, rec(arrival=date(2020, 1, 6))) == [("ignoré", "m1001")]
    assert not account(db).active
    assert apply(db, rec(arrival=TODAY, scope="ght")) == [("retour", "m1001")]
    back = account(db)
    assert (
        back.active and back.departed_at is None and back.assignments == [{"role": "medecin", "scope": "ght"}]
    )


def test_future_arrivals_wait_and_unknown_departures_are_ignored(db: Database) -> None:
    assert apply(db, rec(arrival=TODAY + timedelta(days=3))) == [("ignoré", "m1001")]
    assert apply(db, rec("m2002", departure=TODAY)) == [("ignoré", "m2002")]
    with db.session() as s:
        assert s.scalar(select(Account.id)) is None
    assert apply(db, rec(arrival=TODAY + timedelta(days=3)), today=TODAY + timedelta(days=3)) == [
        ("arrivée", "m1001")
    ]


def test_the_feed_cannot_take_over_a_local_account(db: Database) -> None:
    with db.session() as s:
        accounts.create_account(
            s, "admin", "Admin", [Assignment("admin_technique", Scope.parse("ght"))], "mot-de-passe-long-2026"
        )
    with pytest.raises(ProvisioningError) as refused:
        apply(db, rec("m1001"), rec("admin", role="admin_technique", scope="ght"))
    assert "n'est pas géré par le flux RH" in refused.value.message
    with db.session() as s:  # nothing applied: not even the valid line
        assert s.scalar(select(Account.id).where(Account.login == "m1001")) is None
        assert s.scalar(select(ApiToken.id)) is None


def test_records_are_checked_against_the_configuration() -> None:
    config = demo_config()
    assert check_record(rec(), config, TODAY) == []
    problems = check_record(
        rec(
            "m 1",
            rpps="10010000188",
            assignments=(
                Assignment("chef", Scope("ght")),
                Assignment("medecin", Scope.parse("site:999999999")),
                Assignment("medecin", Scope.parse(f"unit:{SITE_1}/9999")),
            ),
            arrival=TODAY,
            departure=TODAY - timedelta(days=1),
        ),
        config,
        TODAY,
    )
    assert problems == [
        "identifiant (matricule) invalide : entre 1 et 100 caractères, sans espace",
        "Numéro RPPS « 10010000188 » invalide : clé de contrôle (Luhn) fausse",
        "rôle « chef » inconnu de la configuration (roles.toml)",
        "site FINESS 999999999 inconnu de la configuration (sites.toml)",
        f"UF « 9999 » inconnue du site {SITE_1} (sites.toml)",
        "date de départ antérieure à la date d'arrivée",
    ]
    assert check_record(rec(assignments=()), config, TODAY) == ["aucune affectation (rôle et périmètre)"]
    assert check_record(rec(assignments=(), departure=TODAY), config, TODAY) == []
