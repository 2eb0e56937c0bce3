"""The identity and access lifecycle fed by HR: arrivals, unit moves, departures (and returns).

The HR feed — a CSV file (``security/hr_csv.py``) or a SCIM 2.0 client (``web/routes/scim.py``) — says, for each
person, who they are and which roles they hold where; ``apply_records`` makes the accounts say the same, in the
caller's transaction, and reports in French what changed. Applying the same records twice changes nothing.

Decisions:

- The HR identifier (matricule, SCIM ``userName``) *is* the account's login: hospitals already log their staff in
  with it, and it needs no new column. The feed manages only accounts it created (source ``hr`` or ``scim``): a
  matricule equal to a local or demo account's login is refused, so the feed cannot take over ``admin``.
- An arrival gets no password: the person comes in through Pro Santé Connect or the hospital's SSO, or an
  administrator sets a local password later. The account opens nothing until then.
- A departure (departure date today or past) deactivates the account, ends every session and revokes every
  bearer token the person created (``ApiToken.created_by`` is the creator's login): the person saw each secret
  once and could still use it. Revoked tokens are named in the report so an integration can be given a new one.
- A departed person comes back only when the feed gives an arrival date on or after the departure: a stale line
  of an old extract does not reopen an account.
- People absent from the feed are not touched: a file may be an extract of one service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.connectors.annuaire_client import AnnuaireClient, AnnuaireError
from opensegur.hospital.model import HospitalConfig
from opensegur.identity.errors import IdentityError
from opensegur.identity.professionals import validate_rpps
from opensegur.security import accounts, tokens
from opensegur.security.actor import Actor
from opensegur.security.audit import record_admin
from opensegur.security.clock import as_utc
from opensegur.security.errors import SecurityError
from opensegur.security.matrix import Assignment
from opensegur.store.models import Account, ApiToken, utcnow

__all__ = [
    "HR_SOURCES",
    "Change",
    "HrRecord",
    "ProvisioningError",
    "ProvisioningReport",
    "apply_records",
    "assignment_problem",
    "check_record",
    "depart",
    "hr_today",
    "rpps_problems",
    "rpps_to_check",
    "unknown_rpps",
]

HR_SOURCES = frozenset({"hr", "scim"})
_PARIS = ZoneInfo("Europe/Paris")  # an HR date is a day in France, not in UTC
_IN_CHUNK = 500
_DIRECTORY_CONCURRENCY = 4  # parallel Annuaire Santé look-ups: a large file, without flooding the API

ChangeKind = Literal["arrivée", "mutation", "mise à jour", "départ", "retour", "inchangé", "ignoré"]


def hr_today() -> date:
    return datetime.now(_PARIS).date()


@dataclass(frozen=True)
class HrRecord:
    """One person as the HR feed describes them. ``line`` (CSV) or ``ref`` names the record in messages."""

    login: str
    display_name: str
    rpps: str | None
    assignments: tuple[Assignment, ...]
    arrival: date | None = None
    departure: date | None = None
    ref: str = ""

    def departed(self, today: date) -> bool:
        return self.departure is not None and self.departure <= today


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    login: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} : {self.login}" + (f" — {self.detail}" if self.detail else "")


@dataclass
class ProvisioningReport:
    source: str
    changes: list[Change] = field(default_factory=list)
    dry_run: bool = False

    def count(self, kind: ChangeKind) -> int:
        return sum(1 for c in self.changes if c.kind == kind)

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.kind not in ("inchangé", "ignoré")]

    def summary(self) -> str:
        kinds: tuple[ChangeKind, ...] = (
            "arrivée", "mutation", "mise à jour", "départ", "retour", "inchangé", "ignoré"
        )  # fmt: skip
        head = ("Simulation (rien n'est enregistré) — " if self.dry_run else "") + f"flux RH {self.source} : "
        head += ", ".join(f"{kind} {self.count(kind)}" for kind in kinds)
        return "\n".join([head, *(f"  {c}" for c in self.changes if c.kind != "inchangé")])


class ProvisioningError(SecurityError):
    """The feed is refused as a whole: nothing was applied. ``errors`` are French, one per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


# ---- checks --------------------------------------------------------------------------------------------------


def assignment_problem(config: HospitalConfig, assignment: Assignment) -> str | None:
    """Why the hospital's configuration does not know this role, site or unit; None when it does."""
    if assignment.role not in config.roles:
        return f"rôle « {assignment.role} » inconnu de la configuration (roles.toml)"
    scope = assignment.scope
    if scope.kind == "ght" or scope.site is None:
        return None
    site = config.site(scope.site)
    if site is None:
        return f"site FINESS {scope.site} inconnu de la configuration (sites.toml)"
    if scope.kind == "unit" and all(u.code != scope.unit for u in site.units):
        return f"UF « {scope.unit} » inconnue du site {scope.site} (sites.toml)"
    return None


def check_record(record: HrRecord, config: HospitalConfig, today: date) -> list[str]:
    """The problems of one record, French, without the database (the CSV and SCIM parsers call it)."""
    problems = []
    login = record.login
    if not login or len(login) > 100 or any(ch.isspace() or not ch.isprintable() for ch in login):
        problems.append("identifiant (matricule) invalide : entre 1 et 100 caractères, sans espace")
    if not record.display_name or len(record.display_name) > 200:
        problems.append("nom invalide : entre 1 et 200 caractères")
    if record.rpps is not None:
        try:
            validate_rpps(record.rpps)
        except IdentityError as exc:
            problems.append(exc.message)
    if not record.assignments and not record.departed(today):
        problems.append("aucune affectation (rôle et périmètre)")
    problems += [p for a in record.assignments if (p := assignment_problem(config, a)) is not None]
    if record.arrival and record.departure and record.departure < record.arrival:
        problems.append("date de départ antérieure à la date d'arrivée")
    return problems


async def unknown_rpps(client: AnnuaireClient, numbers: Iterable[str]) -> list[str]:
    """The RPPS numbers the Annuaire Santé does not know, in the order given. SecurityError (French) when the
    directory cannot answer: an unverifiable RPPS is not taken as a known one."""
    wanted = list(dict.fromkeys(numbers))
    gate = asyncio.Semaphore(_DIRECTORY_CONCURRENCY)

    async def known(rpps: str) -> bool:
        async with gate:
            entries = await client.search_practitioners(rpps=rpps, limit=1)
        return any(e.practitioner.rpps == rpps for e in entries)

    try:
        found = await asyncio.gather(*(known(n) for n in wanted))
    except AnnuaireError as exc:
        raise SecurityError(f"Annuaire Santé injoignable, RPPS non vérifiés : {exc.message}") from exc
    return [n for n, ok in zip(wanted, found, strict=True) if not ok]


def rpps_to_check(session: Session, records: Sequence[HrRecord], today: date) -> list[HrRecord]:
    """The records whose RPPS the directory must confirm: new or changed ones (those already on an account were
    checked when they came in; a large file does not ask the Annuaire again for each of its people)."""
    stored = _accounts_by_login(session, [r.login for r in records])

    def changed(r: HrRecord) -> bool:
        account = stored.get(r.login)
        return account is None or account.rpps != r.rpps

    return [r for r in records if r.rpps is not None and not r.departed(today) and changed(r)]


async def rpps_problems(client: AnnuaireClient, records: Sequence[HrRecord]) -> list[str]:
    """French problems, one per record whose RPPS the Annuaire Santé does not know."""
    unknown = set(await unknown_rpps(client, [r.rpps for r in records if r.rpps is not None]))
    return [
        f"{r.ref or r.login} : RPPS {r.rpps} inconnu de l'Annuaire Santé"
        for r in records
        if r.rpps in unknown
    ]


# ---- the lifecycle --------------------------------------------------------------------------------------------


def _scopes_text(assignments: Iterable[dict[str, str] | Assignment]) -> str:
    items = [a if isinstance(a, Assignment) else Assignment.from_json(a) for a in assignments]
    return ", ".join(f"{a.role} ({a.scope.label})" for a in items) or "aucune affectation"


def depart(
    session: Session,
    account: Account,
    reason: str,
    *,
    by: Actor | str | None,
    now: datetime | None = None,
) -> tuple[int, list[str]]:
    """A departure, at once: the account deactivated, its sessions ended, the tokens it created revoked.
    Returns the number of sessions ended and the names of the tokens revoked."""
    now = now or utcnow()
    ended = accounts.deactivate(session, account, reason, by=by, now=now)
    names = list(
        session.scalars(
            select(ApiToken.name).where(ApiToken.created_by == account.login, ApiToken.revoked_at.is_(None))
        )
    )
    for name in names:
        tokens.revoke_token(session, name, by=by, now=now)
    return ended, names


def apply_records(
    session: Session,
    records: Sequence[HrRecord],
    *,
    source: Literal["hr", "scim"],
    origin: str,
    by: Actor | str | None,
    today: date | None = None,
    now: datetime | None = None,
) -> ProvisioningReport:
    """Make the accounts say what ``records`` say, in the caller's transaction (roll it back to undo); each
    change audited with ``origin`` (the file's name, ``scim``). ProvisioningError, nothing changed, when a record
    names an account the feed does not manage. Records are checked beforehand (``check_record``)."""
    today = today or hr_today()
    now = now or utcnow()
    existing = _accounts_by_login(session, [r.login for r in records])
    foreign = [
        f"{r.ref or r.login} : le compte « {r.login} » n'est pas géré par le flux RH (source {a.source})"
        for r in records
        if (a := existing.get(r.login)) is not None and a.source not in HR_SOURCES
    ]
    if foreign:
        raise ProvisioningError(foreign)
    report = ProvisioningReport(origin)
    for record in records:
        report.changes.append(
            _apply_one(session, record, existing.get(record.login), source, origin, by, today, now)
        )
    return report


def _apply_one(
    session: Session,
    record: HrRecord,
    account: Account | None,
    source: str,
    origin: str,
    by: Actor | str | None,
    today: date,
    now: datetime,
) -> Change:
    login = record.login
    audit = {"login": login, "source": origin}
    if record.departed(today):
        if account is None:
            return Change("ignoré", login, "départ d'une personne sans compte")
        if not account.active:
            return Change("inchangé", login)
        ended, revoked = depart(session, account, f"départ RH ({origin})", by=by, now=now)
        record_admin(session, by, "hr_departure", audit | {"sessions": ended, "tokens": revoked})
        detail = f"compte désactivé, {ended} session(s) fermée(s)"
        if revoked:
            detail += ", jeton(s) révoqué(s) : " + ", ".join(revoked)
        return Change("départ", login, detail)
    if account is None:
        if record.arrival is not None and record.arrival > today:
            return Change(
                "ignoré",
                login,
                f"arrivée prévue le {record.arrival:%d/%m/%Y} : compte créé par un import à partir de ce jour",
            )
        account, _ = accounts.create_account(
            session,
            login,
            record.display_name,
            record.assignments,
            None,
            rpps=record.rpps,
            source=source,
            by=by,
        )
        record_admin(session, by, "hr_arrival", audit | {"assignments": account.assignments})
        return Change("arrivée", login, f"{record.display_name}, {_scopes_text(record.assignments)}")
    wanted = [a.to_json() for a in record.assignments]
    if not account.active:
        departed_on = as_utc(account.departed_at).astimezone(_PARIS).date() if account.departed_at else None
        if record.arrival is not None and record.arrival > today:
            return Change("ignoré", login, f"retour prévu le {record.arrival:%d/%m/%Y}")
        if record.arrival is None or (departed_on is not None and record.arrival < departed_on):
            return Change(
                "ignoré",
                login,
                "compte désactivé par un départ : pour un retour, indiquez une date d'arrivée "
                "postérieure au départ",
            )
        account.active = True
        account.departed_at = None
        account.assignments = wanted
        account.display_name = record.display_name
        account.rpps = record.rpps
        session.flush()
        record_admin(session, by, "hr_return", audit | {"assignments": wanted})
        return Change("retour", login, _scopes_text(wanted))
    changes: list[Change] = []
    if _assignment_set(account.assignments) != _assignment_set(wanted):
        before = account.assignments
        account.assignments = wanted
        record_admin(session, by, "hr_move", audit | {"before": before, "after": wanted})
        changes.append(Change("mutation", login, f"{_scopes_text(before)} → {_scopes_text(wanted)}"))
    if (account.display_name, account.rpps) != (record.display_name, record.rpps):
        before_id = {"display_name": account.display_name, "rpps": account.rpps}
        account.display_name = record.display_name
        account.rpps = record.rpps
        record_admin(session, by, "hr_update", audit | {"before": before_id, "rpps": record.rpps})
        changes.append(Change("mise à jour", login, "nom ou RPPS"))
    session.flush()
    if not changes:
        return Change("inchangé", login)
    # A move is the change that matters to access: it names the record even when the name changed too.
    return (
        changes[0] if len(changes) == 1 else Change("mutation", login, changes[0].detail + " ; nom ou RPPS")
    )


def _accounts_by_login(session: Session, logins: Sequence[str]) -> dict[str, Account]:
    found: dict[str, Account] = {}
    # In chunks: SQLite bounds the number of parameters of one statement.
    for i in range(0, len(logins), _IN_CHUNK):
        chunk = logins[i : i + _IN_CHUNK]
        found.update((a.login, a) for a in session.scalars(select(Account).where(Account.login.in_(chunk))))
    return found


def _assignment_set(assignments: Iterable[dict[str, str]]) -> frozenset[tuple[str, str]]:
    return frozenset((a["role"], a.get("scope", "ght")) for a in assignments)
