"""Demo GHT: two sites, their units and professionals, about fifty fictitious patients in mixed statuses.

The GHT itself — sites, units, IPP domains, DPIs, mailboxes, roles — is configuration, not code: the directory
``demo_ght/`` beside this module, applied as a hospital applies its own (``serve --config DIR``). The people
here are data. Every matricule uses the *test* INS OIDs and a key computed by the domain rule. The sandbox INSi
knows part of these people, so the qualification assistant can be tried end to end on them. Deterministic, and
loaded once.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import select

from opensegur.hospital.apply import apply_config
from opensegur.hospital.loader import load_directory
from opensegur.hospital.model import HospitalConfig
from opensegur.identity.ins import OID_NIR_TEST, nir_key
from opensegur.identity.professionals import idnat_ps_from_rpps, luhn_valid
from opensegur.sandbox.dmp.patients import DmpPatient
from opensegur.store.db import Database
from opensegur.store.models import (
    IdentityAlert,
    IdentityEvent,
    Patient,
    PatientIdentifier,
    Professional,
    Structure,
)

DEMO_CONFIG_DIR = Path(__file__).with_name("demo_ght")


@functools.cache
def demo_config() -> HospitalConfig:
    return load_directory(DEMO_CONFIG_DIR)


def luhn_complete(prefix: str) -> str:
    """Append the Luhn digit that makes ``prefix`` + digit valid (FINESS, RPPS)."""
    for d in "0123456789":
        if luhn_valid(prefix + d):
            return prefix + d
    raise AssertionError("unreachable")


FIRST_F = ["MARIE", "CAMILLE", "LÉA", "CHLOÉ", "INÈS", "JEANNE", "LOUISE", "ANNE-SOPHIE", "SARAH", "ZOÉ"]
FIRST_M = ["JEAN", "LUCAS", "HUGO", "MATHIS", "NOÉ", "PAUL", "JEAN-BAPTISTE", "KARIM", "YANN", "ÉLIOTT"]
NAMES = [
    "MARTIN",
    "BERNARD",
    "DUBOIS",
    "THOMAS",
    "ROBERT",
    "RICHARD",
    "PETIT",
    "DURAND",
    "LEROY",
    "MOREAU",
    "SIMON",
    "LAURENT",
    "LEFEBVRE",
    "MICHEL",
    "GARCIA",
    "DAVID",
    "BERTRAND",
    "ROUX",
    "VINCENT",
    "FOURNIER",
    "N'DIAYE",
    "LE GOFF",
    "MARTIN-DUPONT",
    "ÉTIENNE",
    "DE LA TOUR",
]
COGS = ["75056", "69123", "13055", "33063", "59350", "63113", "2A004", "2B033", "99134", "51454"]

# People the sandbox INSi knows (standards digest §3.5): provisional or validated here, to qualify in the demo.
INSI_KNOWN = [
    ("ADRUN", "ZOE", "F", date(1975, 12, 31), "63220", "VALI"),
    ("CORSE", "ANTHONY", "M", date(1980, 3, 2), "2B020", "PROV"),
    ("NESSI", "MICHELANGELO ANTHONY", "M", date(2010, 8, 7), "63220", "VALI"),
    ("TCHITCHI", "CATARINA BELLA", "F", date(1936, 6, 21), "63220", "PROV"),
    ("PROVISOIRE", "MATRICULE", "M", date(2009, 7, 1), "63220", "PROV"),
]


def test_matricule(sex: str, birth: date, cog: str, serial: int) -> str:
    """A NIR consistent with the traits (sex digit, year, month, place of birth), keyed by the domain rule."""
    dept, commune = (cog[:2], cog[2:]) if not cog.startswith("99") else ("99", cog[2:])
    number = f"{'1' if sex == 'M' else '2'}{birth.year % 100:02d}{birth.month:02d}{dept}{commune}{serial:03d}"
    return f"{number}{nir_key(number):02d}"


@dataclass(frozen=True)
class DemoPatient:
    ipp: str
    family: str
    firsts: str
    sex: str
    birth: date
    cog: str
    status: str
    matricule: str | None  # test-OID INS matricule for RECUP and QUAL identities


@functools.cache
def demo_patients() -> tuple[DemoPatient, ...]:
    """The demo's generated patients, site by site alternately; deterministic (seeded)."""
    rng = random.Random(2026)
    statuses = ["QUAL"] * 22 + ["VALI"] * 8 + ["RECUP"] * 6 + ["PROV"] * 8
    rng.shuffle(statuses)
    out = []
    for n, status in enumerate(statuses):
        sex = rng.choice("MF")
        firsts = " ".join(rng.sample(FIRST_M if sex == "M" else FIRST_F, rng.choice([1, 1, 2, 3])))
        birth = date(rng.randint(1930, 2023), rng.randint(1, 12), rng.randint(1, 28))
        cog = rng.choice(COGS)
        matricule = test_matricule(sex, birth, cog, n + 1) if status in ("QUAL", "RECUP") else None
        out.append(
            DemoPatient(f"{900000 + n}", rng.choice(NAMES), firsts, sex, birth, cog, status, matricule)
        )
    return tuple(out)


def demo_dmp_patients() -> list[DmpPatient]:
    """An open DMP for each demo patient with an INS, as the DMP test platform holds one for a hospital's test
    patients; the sandbox registers them when the platform runs the demo."""
    return [
        DmpPatient(p.matricule, OID_NIR_TEST, f"{p.family} {p.firsts}")
        for p in demo_patients()
        if p.matricule is not None
    ]


def load_demo(db: Database) -> bool:
    """Apply the demo GHT's configuration, then insert its people once; returns False when they are already
    there."""
    config = demo_config()
    apply_config(db, config, applied_by="démo", source=str(DEMO_CONFIG_DIR))
    with db.session() as s:
        if s.scalar(select(IdentityEvent.id).where(IdentityEvent.kind == "demo").limit(1)) is not None:
            return False
        sites = [
            s.scalars(select(Structure).where(Structure.finess == site.finess)).one() for site in config.sites
        ]
        for i, (family, given, prof) in enumerate(
            [
                ("RÉAULT", "Pierre", "Médecin — chirurgie viscérale"),
                ("AGNÈS", "Isabelle", "Médecin généraliste"),
                ("LEBRUN", "Claire", "Médecin — imagerie"),
                ("OKAFOR", "Daniel", "Sage-femme"),
                ("MOREL", "Sophie", "Infirmière"),
                ("BRUNET", "Alain", "Médecin — cardiologie"),
            ]
        ):
            rpps = luhn_complete(f"1000{i + 1:06d}")
            s.add(
                Professional(
                    structure_id=sites[i % 2].id,
                    idnat_ps=idnat_ps_from_rpps(rpps),
                    id_kind="RPPS",
                    family_name=family,
                    given_name=given,
                    profession=prof,
                )
            )

        def add(
            site: Structure,
            ipp: str,
            family: str,
            firsts: str,
            sex: str,
            birth: date,
            cog: str,
            status: str,
            matricule: str | None,
            consent: dict[str, str] | None = None,
        ) -> Patient:
            p = Patient(
                structure_id=site.id,
                birth_name=family,
                first_names=firsts,
                sex=sex,
                birth_date=birth,
                birth_place=cog,
                status=status,
                insi_verified=status in ("RECUP", "QUAL"),
                document_checked="CNI" if status in ("VALI", "QUAL") else None,
                ins_matricule=matricule,
                ins_oid=OID_NIR_TEST if matricule else None,
                dmp_consent=consent or {},
                insi_state={},
            )
            p.identifiers.append(
                PatientIdentifier(authority=site.ipp_authority_oid or site.finess, value=ipp)
            )
            s.add(p)
            s.flush()
            s.add(
                IdentityEvent(
                    patient_id=p.id,
                    kind="demo",
                    actor="demo",
                    status_before=None,
                    status_after=status,
                    detail={},
                )
            )
            return p

        for n, p in enumerate(demo_patients()):
            # The consent to DMP consultation, as PAM FR ZFA-11 would bring it: given by the patients with an INS,
            # except one in six, not yet asked, so the DMP tab shows both cases.
            consent = {"consultation_consent": "NA" if n % 6 == 5 else "IC"} if p.matricule else None
            add(
                sites[n % 2], p.ipp, p.family, p.firsts, p.sex, p.birth, p.cog, p.status, p.matricule, consent
            )
        for n, (family, firsts, sex, birth, cog, status) in enumerate(INSI_KNOWN):
            add(sites[0], f"{800000 + n}", family, firsts, sex, birth, cog, status, None)
        # A probable duplicate for the alerts panel: same person created twice under two IPPs.
        dup = add(sites[1], "900999", "LEROY", "JEANNE", "F", date(1961, 4, 9), "59350", "PROV", None)
        twin = add(sites[1], "901000", "LEROY", "JEANNE MARIE", "F", date(1961, 4, 9), "59350", "VALI", None)
        s.add(
            IdentityAlert(
                patient_id=dup.id,
                other_patient_id=twin.id,
                kind="duplicate",
                message="Mêmes traits (nom, prénom, date de naissance, sexe) qu'une autre identité",
            )
        )
    return True
