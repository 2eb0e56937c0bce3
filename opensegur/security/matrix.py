"""The authorisation matrix ("matrice d'habilitation", DICAH condition H): roles × scopes × actions.

The catalogue of actions is code (each route names one); which role may do which action is the hospital's
configuration (``roles.toml`` of the configuration directory). A person holds assignments: a role in a scope —
the whole GHT, one site, or one unit, where unit scope means the care relationship (a current stay of the
patient in that unit). Pure: no database, no web; ``security/access.py`` turns scopes into patient filters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class Action(StrEnum):
    IDENTITY_READ = "identity.read"
    IDENTITY_QUALIFY = "identity.qualify"
    IDENTITY_MERGE = "identity.merge"
    DOCUMENTS_READ = "documents.read"
    DOCUMENTS_SEND = "documents.send"
    DOCUMENTS_CONTROL = "documents.control"  # hold, release, retry
    MAIL_TRIAGE = "mail.triage"
    RESULTS_READ = "results.read"
    DMP_CONSULT = "dmp.consult"
    DMP_REGULATION = "dmp.regulation"  # centre 15: consultation in the regulation mode of the DMP
    BREAK_GLASS = "break_glass"
    DIRECTORY_READ = "directory.read"
    OPS_READ = "ops.read"  # jobs, metrics, flows: no patient content
    ADMIN = "admin"
    AUDIT_READ = "audit.read"

    @property
    def label(self) -> str:
        return ACTION_LABELS[self]

    @property
    def sentence(self) -> str:
        """The label inside a sentence: its first letter lowered, acronyms (DMP) kept."""
        label = ACTION_LABELS[self]
        return label[:1].lower() + label[1:]


ACTION_LABELS: dict[Action, str] = {
    Action.IDENTITY_READ: "Voir les identités",
    Action.IDENTITY_QUALIFY: "Qualifier les identités (INSi, pièce, traits)",
    Action.IDENTITY_MERGE: "Fusionner des identités",
    Action.DOCUMENTS_READ: "Lire les documents locaux",
    Action.DOCUMENTS_SEND: "Envoyer des documents (DMP, MSSanté)",
    Action.DOCUMENTS_CONTROL: "Retenir, libérer, relancer un envoi",
    Action.MAIL_TRIAGE: "Trier la messagerie MSSanté",
    Action.RESULTS_READ: "Lire les résultats de biologie",
    Action.DMP_CONSULT: "Consulter le DMP",
    Action.DMP_REGULATION: "Consulter le DMP en régulation médicale (centre 15)",
    Action.BREAK_GLASS: "Bris de glace",
    Action.DIRECTORY_READ: "Consulter l'annuaire santé",
    Action.OPS_READ: "Suivre l'exploitation (travaux, indicateurs)",
    Action.ADMIN: "Administrer la plateforme",
    Action.AUDIT_READ: "Lire la trace d'audit",
}

# Actions that concern one patient: the scope of the assignment decides which patients.
PATIENT_ACTIONS = frozenset(
    {
        Action.IDENTITY_READ,
        Action.IDENTITY_QUALIFY,
        Action.IDENTITY_MERGE,
        Action.DOCUMENTS_READ,
        Action.DOCUMENTS_SEND,
        Action.DOCUMENTS_CONTROL,
        Action.RESULTS_READ,
        Action.DMP_CONSULT,
        Action.DMP_REGULATION,
    }
)

# A session must be strong (PSC eidas1, SSO with MFA, or a local second factor) for these, whatever the role:
# the list — identity merges, triage decisions, administration, DMP consultation — and breaking the glass.
STRONG_ACTIONS = frozenset(
    {
        Action.IDENTITY_MERGE,
        Action.MAIL_TRIAGE,
        Action.ADMIN,
        Action.DMP_CONSULT,
        Action.DMP_REGULATION,
        Action.BREAK_GLASS,
    }
)

ScopeKind = Literal["ght", "site", "unit"]


@dataclass(frozen=True)
class Scope:
    """``ght``, ``site:<FINESS géographique>`` or ``unit:<FINESS géographique>/<UF code>``."""

    kind: ScopeKind
    site: str | None = None
    unit: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, _, rest = text.strip().partition(":")
        if kind == "ght" and not rest:
            return cls("ght")
        if kind == "site" and rest.isdigit() and len(rest) == 9:
            return cls("site", rest)
        if kind == "unit":
            site, _, unit = rest.partition("/")
            if site.isdigit() and len(site) == 9 and unit:
                return cls("unit", site, unit)
        raise ValueError(
            f"Périmètre « {text} » invalide : attendu ght, site:<FINESS> ou unit:<FINESS>/<code UF>"
        )

    def __str__(self) -> str:
        if self.kind == "ght":
            return "ght"
        if self.kind == "site":
            return f"site:{self.site}"
        return f"unit:{self.site}/{self.unit}"

    @property
    def label(self) -> str:
        if self.kind == "ght":
            return "tout le GHT"
        if self.kind == "site":
            return f"site {self.site}"
        return f"UF {self.unit} (site {self.site}), patients pris en charge"


@dataclass(frozen=True)
class Role:
    id: str
    label: str
    actions: frozenset[Action]


@dataclass(frozen=True)
class Assignment:
    role: str
    scope: Scope

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Assignment:
        return cls(data["role"], Scope.parse(data.get("scope", "ght")))

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "scope": str(self.scope)}


@dataclass(frozen=True)
class Matrix:
    roles: Mapping[str, Role] = field(default_factory=dict)

    def actions(self, assignments: Iterable[Assignment]) -> frozenset[Action]:
        out: set[Action] = set()
        for a in assignments:
            role = self.roles.get(a.role)
            if role is not None:
                out |= role.actions
        return frozenset(out)

    def scopes(self, assignments: Iterable[Assignment], action: Action) -> tuple[Scope, ...]:
        """The scopes in which these assignments grant ``action`` (empty: not granted at all)."""
        return tuple(
            a.scope for a in assignments if a.role in self.roles and action in self.roles[a.role].actions
        )

    def grants(self, assignments: Iterable[Assignment], action: Action) -> bool:
        return bool(self.scopes(assignments, action))

    def table(self) -> list[tuple[Role, list[bool]]]:
        """Rows for the French admin page: each role and, per action in catalogue order, whether it holds it."""
        return [(r, [a in r.actions for a in Action]) for r in self.roles.values()]


def matrix_from_config(roles: Mapping[str, tuple[str, Iterable[str]]]) -> Matrix:
    """Build the matrix from ``{role id: (label, action names)}``; an unknown action name is a ValueError."""
    built: dict[str, Role] = {}
    for role_id, (label, names) in roles.items():
        actions = set()
        for name in names:
            try:
                actions.add(Action(name))
            except ValueError:
                raise ValueError(f"Rôle « {role_id} » : action inconnue « {name} »") from None
        built[role_id] = Role(role_id, label, frozenset(actions))
    return Matrix(built)
