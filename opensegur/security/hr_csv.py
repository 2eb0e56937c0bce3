"""The HR feed as a CSV file: ``opensegur accounts import FILE``.

Format (what HR exports from its payroll or HR software, French spreadsheet conventions)::

    matricule;nom;prenom;rpps;role;perimetre;date_arrivee;date_depart
    m004512;DUPONT;Jean;10100000005;medecin;unit:750000028/6268;2024-09-01;
    m004512;DUPONT;Jean;10100000005;interne;site:750000036;2024-09-01;
    m003108;MARTIN;Léa;;secretaire_medicale;750000028/4010;01/03/2022;30/06/2026

- ``;`` separated, UTF-8 with or without BOM; header names are matched without case or accents (``prénom``).
- One line per assignment: a person with two roles has two lines, whose name, RPPS and dates must agree.
- ``perimetre``: ``ght``, ``site:<FINESS>`` or ``unit:<FINESS>/<UF>``, or the short forms ``<FINESS>`` and
  ``<FINESS>/<UF>``; roles, sites and units must exist in the hospital's configuration.
- Dates ``AAAA-MM-JJ`` or ``JJ/MM/AAAA``; ``date_depart`` today or past is a departure (role may be empty).

The whole file is refused, with every problem and its line number, when any line is wrong: half an HR file
applied leaves accounts in a state nobody asked for.
"""

from __future__ import annotations

import asyncio
import csv
import io
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.errors import OpenSegurError
from opensegur.hospital.model import HospitalConfig
from opensegur.security.actor import Actor
from opensegur.security.matrix import Assignment, Scope
from opensegur.security.provisioning import (
    HrRecord,
    ProvisioningError,
    ProvisioningReport,
    apply_records,
    check_record,
    hr_today,
    rpps_problems,
    rpps_to_check,
)
from opensegur.store.db import Database

__all__ = ["HEADER", "MAX_BYTES", "MAX_ROWS", "import_hr_csv", "parse_hr_csv"]

HEADER = ("matricule", "nom", "prenom", "rpps", "role", "perimetre", "date_arrivee", "date_depart")
MAX_BYTES = 10 * 1024 * 1024  # a GHT's whole staff, one line per assignment, is a few megabytes
MAX_ROWS = 20_000
_MAX_CELL = 200
_MAX_ERRORS = 50  # shown; beyond, a count: a file in the wrong format would otherwise print one per line
# A cell a spreadsheet would run as a formula once the file (or an export of accounts) is opened again.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class _Person:
    """The lines of one matricule, merged."""

    first_line: int
    lines: list[int]
    identity: tuple[str, str, str | None, date | None, date | None]
    assignments: list[Assignment] = field(default_factory=list)


class _DryRun(OpenSegurError):
    """Raised inside the transaction of a simulation so that it is rolled back with everything it did."""

    def __init__(self, report: ProvisioningReport) -> None:
        super().__init__("simulation")
        self.report = report


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _decode(data: bytes) -> str:
    if len(data) > MAX_BYTES:
        raise ProvisioningError(
            [f"Fichier trop volumineux : {len(data)} octets, {MAX_BYTES} au plus (découpez l'extraction)"]
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ProvisioningError(
            [f"ligne {line} : fichier non UTF-8 (octet invalide) — enregistrez-le en « CSV UTF-8 »"]
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ProvisioningError([f"ligne {line} : caractère nul — ce n'est pas un fichier texte"])
    return text


def _date(text: str, column: str) -> date | None:
    if not text:
        return None
    for pattern in ("%Y-%m-%d", "%d/%m/%Y"):
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    raise ValueError(f"{column} « {text} » invalide : AAAA-MM-JJ ou JJ/MM/AAAA attendu")


def _scope(text: str) -> Scope:
    if text and text[0].isdigit():
        # Short forms: what an HR export of FINESS and UF codes gives without rewriting.
        text = f"unit:{text}" if "/" in text else f"site:{text}"
    return Scope.parse(text)


def _cell_problem(cell: str) -> str | None:
    if cell.startswith(_FORMULA_START) or cell.strip().startswith(_FORMULA_START):
        return "cellule commençant par =, +, -, @ ou une tabulation refusée (formule de tableur)"
    if any(not ch.isprintable() for ch in cell):
        return "caractère de contrôle dans une cellule"
    if len(cell) > _MAX_CELL:
        return f"cellule de plus de {_MAX_CELL} caractères"
    return None


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the data lines, once the header has been checked."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";", strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if len(rows) > MAX_ROWS:
                raise ProvisioningError([f"Trop de lignes : {MAX_ROWS} au plus (découpez l'extraction)"])
            rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise ProvisioningError([f"ligne {reader.line_num} : CSV mal formé ({exc})"]) from None
    rows = [(n, cells) for n, cells in rows if any(c.strip() for c in cells)]
    if not rows:
        raise ProvisioningError(["Fichier vide : la ligne d'en-tête est attendue"])
    header = [_fold(c) for c in rows[0][1]]
    if tuple(header) != HEADER:
        raise ProvisioningError(
            [f"ligne {rows[0][0]} : en-tête attendu « {';'.join(HEADER)} » (séparateur « ; »)"]
        )
    if len(rows) == 1:
        raise ProvisioningError(["Aucune ligne de données après l'en-tête"])
    return rows[1:]


def parse_hr_csv(data: bytes, config: HospitalConfig, today: date | None = None) -> list[HrRecord]:
    """The people of the file, one record per matricule; ProvisioningError with every problem (French, line
    numbers) when any line is wrong, before anything is looked up or applied."""
    today = today or hr_today()
    errors: list[str] = []
    people: dict[str, _Person] = {}
    seen: set[tuple[str, str, str]] = set()
    for line, cells in _rows(_decode(data)):
        if len(cells) != len(HEADER):
            errors.append(f"ligne {line} : {len(cells)} colonnes au lieu de {len(HEADER)}")
            continue
        bad = [f"{HEADER[i]} : {p}" for i, c in enumerate(cells) if (p := _cell_problem(c)) is not None]
        if bad:
            errors += [f"ligne {line} : {p}" for p in bad]
            continue
        matricule, family, given, rpps, role, perimetre, arrival_text, departure_text = (
            c.strip() for c in cells
        )
        login = matricule.casefold()
        try:
            arrival = _date(arrival_text, "date_arrivee")
            departure = _date(departure_text, "date_depart")
            assignment = Assignment(role, _scope(perimetre)) if role or perimetre else None
        except ValueError as exc:
            errors.append(f"ligne {line} : {exc}")
            continue
        if not family or not given:
            errors.append(f"ligne {line} : nom et prénom sont obligatoires")
            continue
        identity = (family, given, "".join(rpps.split()) or None, arrival, departure)
        person = people.setdefault(login, _Person(line, [], identity))
        if person.identity != identity:
            errors.append(
                f"ligne {line} : matricule « {matricule} » déjà vu ligne {person.first_line} avec d'autres "
                "nom, prénom, RPPS ou dates"
            )
            continue
        person.lines.append(line)
        if assignment is not None:
            key = (login, assignment.role, str(assignment.scope))
            if key in seen:
                errors.append(f"ligne {line} : affectation en double pour « {matricule} »")
                continue
            seen.add(key)
            person.assignments.append(assignment)
    records = []
    for login, person in people.items():
        family, given, rpps_number, arrival, departure = person.identity
        where = "ligne" if len(person.lines) == 1 else "lignes"
        record = HrRecord(
            login=login,
            display_name=f"{given} {family.upper()}",
            rpps=rpps_number,
            assignments=tuple(person.assignments),
            arrival=arrival,
            departure=departure,
            ref=f"{where} {', '.join(map(str, person.lines))} ({login})",
        )
        errors += [f"{record.ref} : {p}" for p in check_record(record, config, today)]
        records.append(record)
    if errors:
        raise ProvisioningError(_capped(errors))
    return records


def _capped(errors: list[str]) -> list[str]:
    if len(errors) <= _MAX_ERRORS:
        return errors
    return [*errors[:_MAX_ERRORS], f"… et {len(errors) - _MAX_ERRORS} autre(s) erreur(s)"]


async def import_hr_csv(
    db: Database,
    data: bytes,
    *,
    origin: str,
    config: HospitalConfig,
    annuaire: AnnuaireClient | None,
    by: Actor | str | None,
    dry_run: bool = False,
    today: date | None = None,
) -> ProvisioningReport:
    """Parse, check (configuration, then the Annuaire Santé for new or changed RPPS when a client is given),
    apply in one transaction; a simulation (``dry_run``) does all of it and rolls back. ProvisioningError,
    nothing applied, on any problem."""
    today = today or hr_today()
    records = parse_hr_csv(data, config, today)
    if annuaire is not None:

        def _pending() -> list[HrRecord]:
            with db.session() as s:
                return rpps_to_check(s, records, today)

        problems = await rpps_problems(annuaire, await asyncio.to_thread(_pending))
        if problems:
            raise ProvisioningError(_capped(problems))

    def _apply() -> ProvisioningReport:
        try:
            with db.session() as s:
                report = apply_records(s, records, source="hr", origin=origin, by=by, today=today)
                if dry_run:
                    report.dry_run = True
                    raise _DryRun(report)
                return report
        except _DryRun as rolled_back:
            return rolled_back.report

    return await asyncio.to_thread(_apply)
