"""Demo accounts, one per role of the demo matrix, created by ``serve --demo`` only (never an open mode).

Passwords and TOTP secrets are fixed and published in the README so that anyone can try each role; they are
fictitious people of the demo GHT. Unit-scoped roles see the patients with a current stay in their unit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from opensegur.ops.demo import demo_config, luhn_complete
from opensegur.security import accounts
from opensegur.security.matrix import Assignment, Scope
from opensegur.store.db import Database
from opensegur.store.models import Account

SITE_1, SITE_2 = (site.finess for site in demo_config().sites)  # CHU-X — site Breteuil, Hôpital Saint-Vincent


@dataclass(frozen=True)
class DemoAccount:
    login: str
    name: str
    role: str
    scope: str
    totp_secret: str | None  # base32; None: password only (a weak session)
    # The RPPS of the demo professionals the sandbox Pro Santé Connect knows: their e-CPS logs them in too.
    rpps: str | None = None

    @property
    def password(self) -> str:
        return f"demo-{self.login}-2026"


DEMO_ACCOUNTS = (
    DemoAccount(
        "dr.reault",
        "Dr Pierre RÉAULT",
        "medecin",
        f"unit:{SITE_1}/6268",
        "JBSWY3DPEHPK3PXPMEDECIN2",
        luhn_complete("1000000001"),
    ),
    DemoAccount("interne.lebrun", "Claire LEBRUN (interne)", "interne", f"unit:{SITE_1}/2201", None),
    DemoAccount(
        "sf.okafor",
        "Daniel OKAFOR",
        "sage_femme",
        f"unit:{SITE_2}/1202",
        "JBSWY3DPEHPK3PXPSAGEFEM2",
        luhn_complete("1000000004"),
    ),
    DemoAccount("ide.morel", "Sophie MOREL", "ide", f"unit:{SITE_2}/1303", None, luhn_complete("1000000005")),
    DemoAccount("manip.girard", "Luc GIRARD", "manipulateur", f"unit:{SITE_1}/2201", None),
    DemoAccount(
        "secretariat", "Nadia BENALI", "secretaire_medicale", f"site:{SITE_1}", "JBSWY3DPEHPK3PXPSECRETA2"
    ),
    DemoAccount("dim", "Dr Marc DUVAL (DIM)", "dim", "ght", "JBSWY3DPEHPK3PXPDIMDIMD2"),
    DemoAccount(
        "idv", "Hélène ROCHE (identitovigilance)", "identitovigilant", "ght", "JBSWY3DPEHPK3PXPIDENTIV2"
    ),
    DemoAccount("admin", "Administrateur technique", "admin_technique", "ght", "JBSWY3DPEHPK3PXPADMINI2"),
    DemoAccount(
        "dr.brunet",
        "Dr Alain BRUNET (SAMU, régulation)",
        "regulateur",
        "ght",
        "JBSWY3DPEHPK3PXPREGULAT2",
        luhn_complete("1000000006"),
    ),
)


def load_demo_accounts(db: Database) -> int:
    """Create the demo accounts that do not exist yet; returns how many were created."""
    created = 0
    with db.session() as s:
        for demo in DEMO_ACCOUNTS:
            if s.scalar(select(Account.id).where(Account.login == demo.login)) is not None:
                continue
            account, _ = accounts.create_account(
                s,
                demo.login,
                demo.name,
                [Assignment(demo.role, Scope.parse(demo.scope))],
                demo.password,
                rpps=demo.rpps,
                source="demo",
                by="demo",
            )
            if demo.totp_secret:
                account.totp_secret = demo.totp_secret
            created += 1
    return created
