"""Patients known to the DMP sandbox and the state of their DMP (open, closed, absent, opposition).

A fixture list decides: an INS has a DMP only when it is listed — the fixtures below (the ANS examples' patient,
the sandbox INSi's people, one closed DMP, one opposition), the demo GHT's patients when the platform runs the
demo, and whatever a test or another editor's CI declares with ``PUT /dmp/_admin/patients``. Any other INS, under
a test OID or not, gets ``XDSUnknownPatientId``, as the real DMP answers for a patient who has no DMP.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum

from opensegur.errors import OpenSegurError
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import OID_NIA, OID_NIA_TEST, OID_NIR, OID_NIR_TEST, TEST_OIDS, Ins, nir_key
from opensegur.sandbox.insi import DEFAULT_IDENTITIES

__all__ = [
    "CLOSED_NUMBER",
    "INS_CX_RE",
    "NO_DMP_NUMBER",
    "OPPOSED_NUMBER",
    "DmpPatient",
    "DmpStatus",
    "PatientIdError",
    "PatientRegistry",
    "default_patients",
    "parse_patient_cx",
    "to_test_oid",
]

# CX of an INS as the DMP receives it: "<matricule 15>^^^&<INS OID>&ISO^NH".
INS_CX_RE = re.compile(r"^(?P<matricule>[0-9A-Za-z]{15})\^\^\^&(?P<oid>[0-9.]+)&ISO\^NH$")

# Fixture numbers (13 characters, keys computed below): fictitious people under the test OID.
CLOSED_NUMBER = "2450175056101"  # F, born 1945-01, Paris: DMP closed at the patient's request
NO_DMP_NUMBER = "1920692050202"  # M, born 1992-06, Hauts-de-Seine: no DMP ever created
OPPOSED_NUMBER = "2011233063303"  # F, born 2001-12, Gironde: opposed to the feeding of her DMP


class DmpStatus(StrEnum):
    OUVERT = "OUVERT"
    FERME = "FERME"
    INEXISTANT = "INEXISTANT"


class PatientIdError(OpenSegurError, ValueError):
    """The patientId is not an INS CX with a valid key and an INS OID (a metadata error, not an unknown patient)."""


@dataclass(frozen=True)
class DmpPatient:
    matricule: str  # 15 characters (13 + key)
    oid: str
    name: str
    status: DmpStatus = DmpStatus.OUVERT
    closing_date: dt.date | None = None
    closing_reason: str | None = None
    opposition_feeding: bool = False
    opposition_break_glass: bool = False
    opposition_centre_15: bool = False
    # Structures (idNat_Struct) or professionals (idNat_PS) the patient blocked: TD0.2 answers INTERDIT and
    # every consultation is refused, even in bris de glace.
    blocked: frozenset[str] = field(default_factory=frozenset)
    # Structures holding the patient's authorisation (TD0.3, not simulated); None: every structure, so that
    # TD0.2 → ITI-18 works out of the box. A structure outside the list consults only in bris de glace or centre 15.
    authorised: frozenset[str] | None = None
    listed: bool = True  # False for an INS the fixture list does not name (no DMP)

    @property
    def cx(self) -> str:
        return f"{self.matricule}^^^&{self.oid}&ISO^NH"


def to_test_oid(oid: str) -> str:
    """The test-platform OID of an INS OID (.8 → .10, .9 → .11); test OIDs map to themselves."""
    return {OID_NIR: OID_NIR_TEST, OID_NIA: OID_NIA_TEST}.get(oid, oid)


def _matricule(number13: str) -> str:
    return f"{number13}{nir_key(number13):02d}"


def parse_patient_cx(cx: str) -> Ins:
    """Validate an INS CX (format, INS OID, NIR key) and return the INS."""
    m = INS_CX_RE.match(cx.strip())
    if m is None:
        raise PatientIdError(f"patientId {cx!r} n'est pas un INS au format CX <matricule>^^^&<OID>&ISO^NH")
    try:
        return Ins.parse(m["matricule"], m["oid"])
    except IdentityError as exc:
        raise PatientIdError(f"patientId {cx!r} : {exc.message}") from exc


def default_patients() -> list[DmpPatient]:
    patients = [
        # The patient of the ANS CI-SIS examples.
        DmpPatient("279035121518989", OID_NIR_TEST, "PAT-TROIS DOMINIQUE"),
    ]
    for ident in DEFAULT_IDENTITIES:
        matricule = ident.number13 + ident.key
        name = f"{ident.birth_name} {' '.join(ident.first_names)}"
        # The DMP test platform addresses everybody under the test OIDs, the INSi qualification service under
        # the production ones: both spellings reach the same DMP.
        for oid in dict.fromkeys((ident.oid, to_test_oid(ident.oid))):
            patients.append(DmpPatient(matricule, oid, name))
    patients += [
        DmpPatient(
            _matricule(CLOSED_NUMBER),
            OID_NIR_TEST,
            "FERMETURE ODILE",
            status=DmpStatus.FERME,
            closing_date=dt.date(2024, 3, 15),
            closing_reason="Fermeture à la demande du patient",
        ),
        DmpPatient(_matricule(NO_DMP_NUMBER), OID_NIR_TEST, "SANSDMP PAUL", status=DmpStatus.INEXISTANT),
        DmpPatient(
            _matricule(OPPOSED_NUMBER),
            OID_NIR_TEST,
            "OPPOSANTE JULIE",
            opposition_feeding=True,
            opposition_break_glass=True,
            opposition_centre_15=True,
        ),
    ]
    return patients


class PatientRegistry:
    """Lookup of a patient's DMP by INS (matricule + OID)."""

    def __init__(self, patients: list[DmpPatient] | None = None) -> None:
        self._by_key: dict[tuple[str, str], DmpPatient] = {}
        for p in default_patients() if patients is None else patients:
            self._by_key[(p.matricule, p.oid)] = p

    def add(self, patient: DmpPatient) -> None:
        self._by_key[(patient.matricule, patient.oid)] = patient

    def listed(self) -> list[DmpPatient]:
        return list(self._by_key.values())

    def lookup(self, ins: Ins) -> DmpPatient:
        """The patient's DMP state; INEXISTANT for an INS the DMP does not know."""
        found = self._by_key.get((ins.matricule, ins.oid))
        if found is not None:
            return found
        # A fixture is the same person whatever test OID spelling is used.
        for oid in TEST_OIDS if ins.oid in TEST_OIDS else ():
            other = self._by_key.get((ins.matricule, oid))
            if other is not None:
                return replace(other, oid=ins.oid)
        return DmpPatient(ins.matricule, ins.oid, "", status=DmpStatus.INEXISTANT, listed=False)

    def by_matricule(self, matricule: str) -> DmpPatient | None:
        return next((p for (m, _oid), p in self._by_key.items() if m == matricule), None)
