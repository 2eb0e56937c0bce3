"""The DICAH conditions of DMP consultation, measured on the platform's own data: what a hospital shows its ARS.

D — homologated software: the homologation identifiers and the structure's certificates are configured;
I — identity: share of active identities with a qualified INS, per site;
C — consent: share of current patients (an open stay) whose consent to consultation is recorded, per site;
A — strong authentication: share of active accounts with a second factor, a FIDO2 key, or Pro Santé Connect/SSO;
H — habilitations: roles granting consultation, units of current stays covered by a unit assignment.
Each indicator comes with what it means and what to do next, in French; nothing here reads a patient's content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.security.matrix import Action, Assignment, Matrix
from opensegur.store.models import Account, Patient, Stay, Structure, WebauthnCredential
from opensegur.web.queries import ins_metrics

if TYPE_CHECKING:
    from opensegur.config import Settings

__all__ = ["Bar", "Indicator", "SANDBOX_IDENTIFIER", "indicators"]

SANDBOX_IDENTIFIER = "OPENSEGUR-SANDBOX"  # the settings' defaults: no homologation number given yet
GOOD, WATCH = 0.9, 0.5


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # 0..1
    detail: str


@dataclass
class Indicator:
    letter: str
    title: str
    value: float  # 0..1
    meaning: str
    next_step: str
    bars: list[Bar] = field(default_factory=list)

    @property
    def level(self) -> str:
        return "bon" if self.value >= GOOD else ("moyen" if self.value >= WATCH else "faible")

    @property
    def level_label(self) -> str:
        return {"bon": "Atteint", "moyen": "À consolider", "faible": "Insuffisant"}[self.level]


def active_accounts(s: Session) -> tuple[list[Account], set[int]]:
    """The active accounts, and the ids of those holding a FIDO2 key not revoked."""
    keys = set(
        s.scalars(select(WebauthnCredential.account_id).where(WebauthnCredential.revoked_at.is_(None)))
    )
    return list(s.scalars(select(Account).where(Account.active.is_(True)))), keys


def can_be_strong(account: Account, keys: set[int]) -> bool:
    """Whether the account can open a strong session: TOTP, a FIDO2 key, Pro Santé Connect or the hospital SSO."""
    return bool(account.totp_secret or account.id in keys or account.psc_sub or account.sso_sub)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _per_site(
    per: dict[int, list[int]], sites: dict[int, Structure], detail: str
) -> tuple[list[Bar], int, int]:
    """One bar per site from ``per`` (site id → [yes, no]), and the totals: yes, all."""
    bars = [
        Bar(sites[i].name, _ratio(yes, yes + no), f"{yes} " + detail.format(whole=yes + no))
        for i, (yes, no) in sorted(per.items())
        if i in sites
    ]
    return bars, sum(yes for yes, _ in per.values()), sum(yes + no for yes, no in per.values())


def _homologation(settings: Settings) -> Indicator:
    checks = [
        ("Numéro d'homologation DMP du logiciel (LPS_ID_HOMOLOGATION_DMP)", settings.dmp_lps_homologation_id),
        ("Numéro d'autorisation INSi (IDAM)", settings.insi_idam),
        ("Certificat de signature de la structure (VIHF, XAdES)", settings.dmp_signing_cert),
        ("Certificat d'authentification de la structure (TLS mutuel DMP)", settings.dmp_tls_cert),
    ]

    def state(value: str | None) -> str:
        if not value:
            return "à renseigner"
        return "valeur du bac à sable, à remplacer" if value == SANDBOX_IDENTIFIER else "renseigné"

    bars = [Bar(label, 1.0 if state(value) == "renseigné" else 0.0, state(value)) for label, value in checks]
    done = sum(b.value == 1.0 for b in bars)
    return Indicator(
        "D",
        "Logiciel homologué (DMP, INSi)",
        _ratio(done, len(bars)),
        f"{done} élément(s) sur {len(bars)} configuré(s) : le DMP et l'INSi n'acceptent qu'un logiciel homologué, "
        "qui se présente avec ses numéros et les certificats de la structure.",
        "Renseigner dmp_lps_homologation_id et insi_idam après l'homologation (CNDA, CNAM), et les certificats "
        "de la structure (IGC Santé) dans la configuration de production.",
        bars,
    )


def _identity(s: Session, sites: dict[int, Structure]) -> Indicator:
    metrics = ins_metrics(s)
    bars = [
        Bar(
            site["name"],
            site["qualified_rate"],
            f"{site['qualified']} qualifiée(s) sur {site['active_identities']}",
        )
        for site in metrics["sites"]
        if site["structure_id"] in sites
    ]
    qualified, total = metrics["qualified"], metrics["active_identities"]
    return Indicator(
        "I",
        "Identité qualifiée (INS)",
        _ratio(qualified, total),
        f"{qualified} identité(s) active(s) sur {total} ont une INS qualifiée : sans elle, le DMP n'est ni "
        "alimenté ni consulté.",
        "Interroger l'INSi et contrôler une pièce d'identité à haut niveau de confiance à l'accueil ; la cellule "
        "d'identitovigilance traite les identités en attente (page Identitovigilance).",
        bars,
    )


def _consent(s: Session, sites: dict[int, Structure]) -> Indicator:
    current = (
        select(Stay.patient_id)
        .where(Stay.ended_at.is_(None), Stay.cancelled.is_(False))
        .distinct()
        .subquery()
    )
    rows = s.execute(
        select(Patient.structure_id, Patient.dmp_consent).where(Patient.id.in_(select(current.c.patient_id)))
    ).all()
    per: dict[int, list[int]] = {}
    for site, consent in rows:
        answered = (consent or {}).get("consultation_consent") in ("IC", "INC")
        per.setdefault(site, [0, 0])[0 if answered else 1] += 1
    bars, recorded, total = _per_site(per, sites, "recueilli(s) sur {whole} patient(s) présent(s)")
    return Indicator(
        "C",
        "Consentement à la consultation recueilli",
        _ratio(recorded, total),
        f"{recorded} patient(s) présent(s) sur {total} ont une réponse enregistrée (accord ou refus) : sans "
        "elle, le DMP ne peut pas être consulté.",
        "Informer le patient à l'admission et transmettre sa réponse par le DPI (PAM FR, segment ZFA) ; le "
        "médecin peut aussi l'enregistrer depuis l'onglet DMP.",
        bars,
    )


def _authentication(s: Session) -> Indicator:
    accounts, keys = active_accounts(s)
    strong = [a for a in accounts if can_be_strong(a, keys)]
    by_kind = {
        "Second facteur TOTP": sum(1 for a in accounts if a.totp_secret),
        "Clé FIDO2 (WebAuthn)": sum(1 for a in accounts if a.id in keys),
        "Pro Santé Connect": sum(1 for a in accounts if a.psc_sub),
        "Fournisseur d'identité de l'établissement": sum(1 for a in accounts if a.sso_sub),
    }
    bars = [
        Bar(k, _ratio(n, len(accounts)), f"{n} compte(s) sur {len(accounts)}") for k, n in by_kind.items()
    ]
    return Indicator(
        "A",
        "Authentification forte des professionnels",
        _ratio(len(strong), len(accounts)),
        f"{len(strong)} compte(s) actif(s) sur {len(accounts)} peuvent ouvrir une session forte, exigée pour "
        "consulter le DMP en mode AIR.",
        "Faire enrôler un second facteur (application TOTP ou clé FIDO2) aux comptes signalés dans « Comptes », "
        "ou les relier à Pro Santé Connect.",
        bars,
    )


def _habilitations(s: Session, matrix: Matrix) -> Indicator:
    consulting = [r for r in matrix.roles.values() if Action.DMP_CONSULT in r.actions]
    units: set[tuple[str, str]] = {
        (site, unit or "")
        for site, unit in s.execute(
            select(Structure.finess, Stay.unit_code)
            .join(Structure, Structure.id == Stay.structure_id)
            .where(Stay.ended_at.is_(None), Stay.cancelled.is_(False), Stay.unit_code.is_not(None))
            .distinct()
        ).all()
    }
    covered: set[tuple[str, str]] = set()
    for a in s.scalars(select(Account).where(Account.active.is_(True))):
        for assignment in (Assignment.from_json(x) for x in a.assignments):
            role = matrix.roles.get(assignment.role)
            if role is None or Action.DMP_CONSULT not in role.actions:
                continue
            if assignment.scope.kind != "unit":
                covered |= {
                    u for u in units if assignment.scope.kind == "ght" or u[0] == assignment.scope.site
                }
            else:
                covered.add((assignment.scope.site or "", assignment.scope.unit or ""))
    reached = len(units & covered)
    bars = [
        Bar(
            "Rôles autorisés à consulter le DMP",
            1.0 if consulting else 0.0,
            ", ".join(r.label for r in consulting),
        ),
        Bar(
            "Unités avec des patients présents couvertes",
            _ratio(reached, len(units)),
            f"{reached} sur {len(units)}",
        ),
    ]
    return Indicator(
        "H",
        "Matrice d'habilitation",
        _ratio(reached, len(units)) if consulting else 0.0,
        "Qui peut consulter le DMP, et pour quels patients : la matrice donne l'action aux rôles, les affectations "
        "la donnent sur une unité (relation de soins), un site ou le GHT.",
        "Compléter roles.toml et les affectations des médecins des unités non couvertes (page Habilitations).",
        bars,
    )


def indicators(s: Session, settings: Settings, matrix: Matrix) -> list[Indicator]:
    sites = {st.id: st for st in s.scalars(select(Structure).where(Structure.kind == "EG"))}
    return [
        _homologation(settings),
        _identity(s, sites),
        _consent(s, sites),
        _authentication(s),
        _habilitations(s, matrix),
    ]
