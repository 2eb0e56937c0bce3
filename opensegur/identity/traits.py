"""INS strict traits ("traits stricts") and their consistency with a matricule INS.

Strict traits: birth name, list of birth first names, birth date, sex, birth place (COG code) — standards
digest §3.2. They are what INSi compares, so they must be captured exactly; the comparison helpers
normalise only what INS rules say is not significant (case, diacritics, separators).
"""

from __future__ import annotations

import datetime
import re
import string
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins


class Sex(StrEnum):
    """Administrative sex as a strict trait.

    INS only knows ``M`` and ``F``. ``I`` (indéterminé) exists because a provisional identity may be
    created from an HL7 feed carrying ``U``/``O`` or for a newborn whose sex is not yet declared; such an
    identity can never be qualified (see :meth:`StrictTraits.check_qualifiable`).
    """

    M = "M"
    F = "F"
    I = "I"  # noqa: E741 - the one-letter code is the business value

    @property
    def label(self) -> str:
        return {"M": "Masculin", "F": "Féminin", "I": "Indéterminé"}[self.value]


# HL7 v2 table 0001 codes that mean "not M/F"; mapped to I so a provisional identity can still be stored.
_INDETERMINATE_CODES = frozenset({"I", "U", "O", "A", "N"})

_COG_RE = re.compile(r"^(?:[0-9]{2}|2A|2B)[0-9]{3}$")
_APOSTROPHES = "'’‘`´ʼ"
_HYPHENS = "-‐‑‒–—"
_SEPARATORS_RE = re.compile(r"[" + re.escape(_APOSTROPHES + _HYPHENS) + r"\s]+")
_LIGATURES = str.maketrans({"Œ": "OE", "œ": "oe", "Æ": "AE", "æ": "ae", "ß": "ss"})
_MIN_BIRTH_YEAR = 1880

_FIELD_LABELS = {
    "birth_name": "nom de naissance",
    "first_names": "prénoms de naissance",
    "birth_date": "date de naissance",
    "sex": "sexe",
    "birth_place": "lieu de naissance",
}


def _strip_accents(s: str) -> str:
    decomposed = unicodedata.normalize("NFD", s.translate(_LIGATURES))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalise_name(s: str) -> str:
    """Comparison form of a name: uppercase, no diacritics, hyphens/apostrophes/space runs -> one space.

    Used only to compare (INSi returns unaccented uppercase); the captured value is kept as typed.
    """
    return _SEPARATORS_RE.sub(" ", _strip_accents(s)).strip().upper()


# Allowed as they are, the common case: checked in a set (decomposing each letter was 2/3 of building traits).
_PLAIN_NAME_CHARS = frozenset(string.ascii_letters + " " + _APOSTROPHES + _HYPHENS)


def _is_allowed_name_char(c: str) -> bool:
    if c in _PLAIN_NAME_CHARS:
        return True
    # Latin letters with any diacritics; other scripts must be transliterated per INS capture rules.
    base = _strip_accents(c)
    return len(base) >= 1 and all("A" <= b <= "Z" or "a" <= b <= "z" for b in base)


def _clean_name(value: str | None, field: str) -> str:
    if value is None or not value.strip():
        raise IdentityError("TRAIT_MISSING", f"Trait strict manquant : {_FIELD_LABELS[field]}", field)
    cleaned = " ".join(value.split())
    for c in cleaned:
        if not _is_allowed_name_char(c):
            raise IdentityError(
                "TRAIT_NAME",
                f"Caractère non autorisé « {c} » dans le {_FIELD_LABELS[field]} « {cleaned} » "
                "(lettres, espace, trait d'union et apostrophe uniquement)",
                field,
            )
    if not any(c.isalpha() for c in cleaned):
        raise IdentityError(
            "TRAIT_NAME", f"Le {_FIELD_LABELS[field]} « {cleaned} » ne contient aucune lettre", field
        )
    return cleaned


def _parse_date(value: datetime.date | str | None, today: datetime.date) -> datetime.date:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise IdentityError("TRAIT_MISSING", "Trait strict manquant : date de naissance", "birth_date")
    if isinstance(value, datetime.datetime):
        # A datetime would silently carry a time and timezone into a date-only trait.
        value = value.date()
    if isinstance(value, datetime.date):
        parsed = value
    else:
        text = value.strip()
        match = re.fullmatch(r"([0-9]{4})-?([0-9]{2})-?([0-9]{2})", text)
        if not match or ("-" in text and text.count("-") != 2):
            raise IdentityError(
                "TRAIT_DATE",
                f"Date de naissance « {text} » illisible (format AAAAMMJJ ou AAAA-MM-JJ attendu)",
                "birth_date",
            )
        try:
            parsed = datetime.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            raise IdentityError(
                "TRAIT_DATE",
                f"Date de naissance « {text} » impossible (jour ou mois inexistant)",
                "birth_date",
            ) from None
    if parsed > today:
        raise IdentityError("TRAIT_DATE", f"Date de naissance {parsed:%d/%m/%Y} dans le futur", "birth_date")
    if parsed.year < _MIN_BIRTH_YEAR:
        raise IdentityError(
            "TRAIT_DATE",
            f"Date de naissance {parsed.isoformat()} invraisemblable (année antérieure à {_MIN_BIRTH_YEAR})",
            "birth_date",
        )
    return parsed


def _parse_sex(value: str | None) -> Sex:
    if value is None or not value.strip():
        raise IdentityError("TRAIT_MISSING", "Trait strict manquant : sexe", "sex")
    code = value.strip().upper()
    if code in ("M", "F"):
        return Sex(code)
    if code in _INDETERMINATE_CODES:
        return Sex.I
    raise IdentityError("TRAIT_SEX", f"Sexe « {value.strip()} » inconnu (M, F ou I attendu)", "sex")


def _parse_birth_place(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    code = value.strip().upper()
    if not _COG_RE.match(code):
        raise IdentityError(
            "TRAIT_COG",
            f"Lieu de naissance « {value.strip()} » invalide : "
            "code officiel géographique INSEE à 5 caractères attendu "
            "(ex. 63220, 2B020, 99134 pour un pays étranger)",
            "birth_place",
        )
    return code


@dataclass(frozen=True)
class StrictTraits:
    birth_name: str
    first_names: str
    birth_date: datetime.date
    sex: Sex
    birth_place: str | None

    @classmethod
    def build(
        cls,
        birth_name: str | None,
        first_names: str | None,
        birth_date: datetime.date | str | None,
        sex: str | None,
        birth_place: str | None,
        *,
        today: datetime.date | None = None,
    ) -> StrictTraits:
        """Validate raw captured values. ``today`` exists so tests and replays are deterministic."""
        return cls(
            birth_name=_clean_name(birth_name, "birth_name"),
            first_names=_clean_name(first_names, "first_names"),
            birth_date=_parse_date(birth_date, today or datetime.date.today()),
            sex=_parse_sex(sex),
            birth_place=_parse_birth_place(birth_place),
        )

    @property
    def first_name(self) -> str:
        return self.first_names.split(" ", 1)[0]

    @property
    def first_names_list(self) -> list[str]:
        return self.first_names.split()

    def check_qualifiable(self) -> None:
        """Raise if these traits can never back a qualified identity (INS knows only M/F)."""
        if self.sex is Sex.I:
            raise IdentityError(
                "TRAIT_SEX",
                "Sexe indéterminé : l'identité ne peut pas être qualifiée tant que le sexe n'est pas M ou F",
                "sex",
            )

    def differences(self, other: StrictTraits) -> list[str]:
        """Names of the fields that differ once normalised, in a stable display order."""
        diffs: list[str] = []
        if normalise_name(self.birth_name) != normalise_name(other.birth_name):
            diffs.append("birth_name")
        if normalise_name(self.first_names) != normalise_name(other.first_names):
            diffs.append("first_names")
        if self.birth_date != other.birth_date:
            diffs.append("birth_date")
        if self.sex != other.sex:
            diffs.append("sex")
        if (self.birth_place or "").upper() != (other.birth_place or "").upper():
            diffs.append("birth_place")
        return diffs


# Positions 4-5 of a NIR hold the birth month, or a code when the month was unknown at registration.
def _is_unknown_month_code(mm: int) -> bool:
    return mm == 20 or 30 <= mm <= 42 or mm >= 50


# Before the 1968 reform, people born in today's 91-95 were registered under Seine (75) or Seine-et-Oise (78).
_ILE_DE_FRANCE_BEFORE_1968 = frozenset({"75", "78", "91", "92", "93", "94", "95"})


def consistent_with_ins(traits: StrictTraits, ins: Ins) -> list[str]:
    """Cross-check strict traits against the information encoded in the matricule.

    Returns French warnings (empty list when consistent). These are identity-vigilance hints, not proof:
    the INSi answer remains the authority, so callers display them rather than block on them.
    """
    messages: list[str] = []
    number = ins.number
    sex_digit = number[0]
    if traits.sex is Sex.I:
        messages.append("Sexe indéterminé : incompatible avec un INS (M ou F attendu)")
    elif ins.kind == "NIR" and sex_digit in "12":
        # NIA layout and temporary numbers (7/8) are not documented enough to check the sex digit.
        expected = Sex.M if sex_digit == "1" else Sex.F
        if traits.sex is not expected:
            messages.append(
                f"Sexe incohérent avec le matricule INS : le matricule indique {expected.label.lower()} "
                f"({sex_digit}), l'identité indique {traits.sex.label.lower()}"
            )

    yy = number[1:3]
    mm = int(number[3:5])
    if not _is_unknown_month_code(mm):
        if yy != f"{traits.birth_date.year % 100:02d}":
            messages.append(
                f"Année de naissance incohérente avec le matricule INS : {yy} dans le matricule, "
                f"{traits.birth_date.year} dans l'identité"
            )
        if mm != traits.birth_date.month:
            messages.append(
                f"Mois de naissance incohérent avec le matricule INS : {mm:02d} dans le matricule, "
                f"{traits.birth_date.month:02d} dans l'identité"
            )

    place = traits.birth_place
    dept = number[5:7]
    if place and not place.startswith("99") and dept != "99":
        place_dept = place[:2]
        same = place_dept == dept
        # Corsica was department 20 until 1976; NIRs issued before keep it.
        same = same or (dept == "20" and place_dept in ("2A", "2B"))
        same = same or (
            traits.birth_date.year < 1968
            and dept in ("75", "78")
            and place_dept in _ILE_DE_FRANCE_BEFORE_1968
        )
        if not same:
            messages.append(
                f"Département de naissance incohérent avec le matricule INS : {dept} dans le matricule, "
                f"lieu de naissance {place} dans l'identité"
            )
    return messages
