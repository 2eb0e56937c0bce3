"""HospiConnect identity-maturity self-assessment: figures measured on the platform's accounts, and a short
questionnaire on the programme's two axes, scored into a level a hospital attaches to its funding request.

Axis 1 — the professionals' identities and rights (lifecycle from the HR system, reviews, departures);
axis 2 — authentication (strong authentication, Pro Santé Connect, the hospital's identity provider).
The measured part is the platform's own data; the answered part is the hospital's word, and the page says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from opensegur.store.models import Account
from opensegur.web.readiness import active_accounts, can_be_strong

__all__ = ["AXES", "QUESTIONS", "Assessment", "Measure", "Question", "assess", "measures"]

AXES = {
    "1": "Axe 1 — identités et habilitations des professionnels",
    "2": "Axe 2 — authentification des professionnels",
}
DORMANT_AFTER = timedelta(days=90)
LEVELS = ((75, "Avancé"), (40, "Intermédiaire"), (0, "Initial"))
ANSWERS = {"non": 0, "partiel": 1, "oui": 2}
ANSWER_LABELS = {"non": "Non", "partiel": "En partie", "oui": "Oui"}


@dataclass(frozen=True)
class Question:
    id: str
    axis: str
    text: str


QUESTIONS = (
    Question(
        "sirh",
        "1",
        "Les arrivées, mutations et départs des professionnels alimentent les comptes depuis le SIRH.",
    ),
    Question(
        "revue",
        "1",
        "Les habilitations sont revues au moins une fois par an, par unité, avec les responsables.",
    ),
    Question("depart", "1", "Un départ ferme les accès le jour même (comptes, badges, certificats)."),
    Question(
        "postes", "2", "Les postes de soins exigent une authentification forte (carte, clé FIDO2, TOTP)."
    ),
    Question("psc", "2", "Pro Santé Connect (e-CPS) est accepté pour ouvrir une session dans les logiciels."),
    Question(
        "sso", "2", "Les logiciels de soins sont fédérés sur le fournisseur d'identité de l'établissement."
    ),
)


@dataclass(frozen=True)
class Measure:
    axis: str
    label: str
    value: float  # 0..1, higher is better
    detail: str


@dataclass(frozen=True)
class Assessment:
    measures: list[Measure]
    answers: dict[str, str]
    scores: dict[str, int]  # per axis, 0..100: the measured figures and the answers, weighed equally

    def level(self, axis: str) -> str:
        return next(label for floor, label in LEVELS if self.scores[axis] >= floor)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def measures(s: Session, now: datetime | None = None) -> list[Measure]:
    moment = now or datetime.now(UTC)
    active, keys = active_accounts(s)
    n = len(active)

    def last(a: Account) -> datetime | None:
        at = a.last_login_at
        return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at

    managed = sum(1 for a in active if a.source in ("hr", "scim"))
    dormant = sum(1 for a in active if (seen := last(a)) is None or moment - seen > DORMANT_AFTER)
    departed = sum(1 for a in active if a.departed_at is not None)
    strong = sum(1 for a in active if can_be_strong(a, keys))
    return [
        Measure(
            "1", "Comptes gérés par le SIRH ou SCIM", _ratio(managed, n), f"{managed} sur {n} comptes actifs"
        ),
        Measure(
            "1",
            "Comptes utilisés dans les 90 jours",
            1 - _ratio(dormant, n),
            f"{dormant} compte(s) dormant(s)",
        ),
        Measure(
            "1",
            "Départs dont les accès sont fermés",
            1 - _ratio(departed, n),
            f"{departed} compte(s) actif(s) d'agents partis",
        ),
        Measure("2", "Comptes avec authentification forte", _ratio(strong, n), f"{strong} sur {n}"),
        Measure(
            "2",
            "Comptes reliés à Pro Santé Connect",
            _ratio(sum(1 for a in active if a.psc_sub), n),
            f"{sum(1 for a in active if a.psc_sub)} sur {n}",
        ),
        Measure(
            "2",
            "Comptes reliés au fournisseur d'identité de l'établissement",
            _ratio(sum(1 for a in active if a.sso_sub), n),
            f"{sum(1 for a in active if a.sso_sub)} sur {n}",
        ),
    ]


def assess(found: list[Measure], answers: dict[str, str]) -> Assessment:
    """Scores per axis: the mean of the measured figures and the mean of the answers (non 0, en partie ½, oui 1),
    weighed equally. An unanswered question counts as « non »."""
    known = {q.id: ANSWERS.get(answers.get(q.id, "non"), 0) / 2 for q in QUESTIONS}
    scores = {}
    for axis in AXES:
        measured = [m.value for m in found if m.axis == axis]
        answered = [known[q.id] for q in QUESTIONS if q.axis == axis]
        parts = [sum(measured) / len(measured), sum(answered) / len(answered)]
        scores[axis] = round(100 * sum(parts) / len(parts))
    clean = {q.id: answers[q.id] for q in QUESTIONS if answers.get(q.id) in ANSWERS}
    return Assessment(found, clean, scores)
