"""Matricule INS (NIR or NIA) and its authority OID.

Sources: standards digest §3.1 and Appendix B. The key formula was checked against official INSi/CNDA
test data (see tests). The NIR layout used here (sex digit, year, month, department) is the public INSEE
layout; the NIA follows the same layout but its details are not published, hence the permissive checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from opensegur.identity.errors import IdentityError

OID_NIR = "1.2.250.1.213.1.4.8"
OID_NIA = "1.2.250.1.213.1.4.9"
OID_NIR_TEST = "1.2.250.1.213.1.4.10"
# The ".11 = NIA de test" label is inferred from the set of four OIDs (not stated in a primary source).
OID_NIA_TEST = "1.2.250.1.213.1.4.11"

INS_OIDS: dict[str, str] = {
    OID_NIR: "NIR",
    OID_NIA: "NIA",
    OID_NIR_TEST: "NIR de test",
    OID_NIA_TEST: "NIA de test",
}
TEST_OIDS = frozenset({OID_NIR_TEST, OID_NIA_TEST})
_NIA_OIDS = frozenset({OID_NIA, OID_NIA_TEST})

# First digit: 1/2 = sex of a NIR holder; 3/4 = older registrations of people born abroad; 7/8 = temporary
# numbers (NTT) still found in some feeds. INSi only returns 1/2 in practice, but refusing 3/4/7/8 would
# block legitimate legacy identities, so they are accepted and only the other checks apply.
_ALLOWED_FIRST_DIGITS = frozenset("123478")

# Positions 6-7 (1-based) are the department; only there may Corsica's 2A/2B appear.
_NUMBER13_RE = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{6}$")
_CORSICA_SUBSTITUTION = {"2A": "19", "2B": "18"}


def _normalise_number(value: str) -> str:
    # Matricules are often printed grouped ("2 79 03 51 215 189 89") and typed in lowercase ("2b").
    return "".join(value.split()).upper()


def _check_number13(number13: str) -> None:
    if not _NUMBER13_RE.match(number13):
        raise IdentityError(
            "INS_FORMAT",
            f"Matricule INS mal formé : « {number13} » (13 chiffres attendus, "
            "2A ou 2B autorisés seulement en positions 6-7 pour la Corse)",
            "matricule",
        )
    if number13[0] not in _ALLOWED_FIRST_DIGITS:
        raise IdentityError(
            "INS_FORMAT",
            f"Matricule INS mal formé : le premier chiffre « {number13[0]} » n'est pas admis "
            "(1, 2, 3, 4, 7 ou 8 attendu)",
            "matricule",
        )


def nir_key(number13: str) -> int:
    """Return the 2-digit control key of a 13-character NIR/NIA: 97 - (N mod 97).

    Corsica departments are replaced before the modulo (2A -> 19, 2B -> 18), as INSEE does.
    """
    number = _normalise_number(number13)
    _check_number13(number)
    dept = number[5:7]
    numeric = number[:5] + _CORSICA_SUBSTITUTION.get(dept, dept) + number[7:]
    return 97 - int(numeric) % 97


def is_ins_oid(oid: str) -> bool:
    return oid.strip() in INS_OIDS


@dataclass(frozen=True)
class Ins:
    """A matricule INS (13 characters + 2-digit key) with its OID.

    Construction always validates, so any ``Ins`` instance in the system is well-formed; use
    :meth:`parse` or :meth:`from_parts` to accept user or feed input (they normalise spacing and case).
    """

    matricule: str
    oid: str

    def __post_init__(self) -> None:
        if len(self.matricule) != 15:
            raise IdentityError(
                "INS_FORMAT",
                f"Matricule INS mal formé : {len(self.matricule)} caractères au lieu de 15 (13 + clé)",
                "matricule",
            )
        number, key = self.matricule[:13], self.matricule[13:]
        _check_number13(number)
        if not key.isdigit() or not key.isascii():
            raise IdentityError(
                "INS_FORMAT",
                f"Matricule INS mal formé : la clé « {key} » doit comporter 2 chiffres",
                "matricule",
            )
        expected = nir_key(number)
        if int(key) != expected:
            raise IdentityError(
                "INS_KEY", f"Clé NIR invalide : {expected:02d} attendue, {key} reçue", "matricule"
            )
        if self.oid not in INS_OIDS:
            raise IdentityError(
                "INS_OID",
                f"OID « {self.oid} » inconnu pour un INS (attendu : {', '.join(INS_OIDS)})",
                "oid",
            )

    @classmethod
    def parse(cls, matricule: str, oid: str) -> Ins:
        return cls(_normalise_number(matricule), oid.strip())

    @classmethod
    def from_parts(cls, number13: str, key: str, oid: str) -> Ins:
        """Build from INSi's separate ``NumIdentifiant`` and ``Cle``."""
        number = _normalise_number(number13)
        key = key.strip()
        if len(number) != 13:
            raise IdentityError(
                "INS_FORMAT",
                f"Numéro INS mal formé : {len(number)} caractères au lieu de 13",
                "matricule",
            )
        if len(key) != 2:
            raise IdentityError(
                "INS_FORMAT",
                f"Matricule INS mal formé : la clé « {key} » doit comporter 2 chiffres",
                "matricule",
            )
        return cls(number + key, oid.strip())

    @property
    def number(self) -> str:
        return self.matricule[:13]

    @property
    def key(self) -> str:
        return self.matricule[13:]

    @property
    def kind(self) -> Literal["NIR", "NIA"]:
        # The OID, not the digits, tells NIR from NIA: a NIA uses the same layout as a NIR.
        return "NIA" if self.oid in _NIA_OIDS else "NIR"

    @property
    def is_test(self) -> bool:
        return self.oid in TEST_OIDS

    def __str__(self) -> str:
        return self.matricule
