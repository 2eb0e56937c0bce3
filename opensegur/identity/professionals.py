"""National identifiers of health professionals (idNat_PS) and structures (idNat_Struct).

Prefixes come from the ANS PDSM4DMP models ``PSIdNat.fsh`` / ``StructIdNat.fsh`` (standards digest §2.2):

* idNat_PS (OID 1.2.250.1.71.4.2.1): ``0``+ADELI, ``1``+cabinet ADELI/internal id, ``3``+FINESS/internal,
  ``4``+SIREN/internal, ``5``+SIRET/internal, ``6``+cabinet RPPS/internal, ``8``+RPPS.
* idNat_Struct (OID 1.2.250.1.71.4.2.2): ``0``+cabinet ADELI, ``1``+FINESS, ``2``+SIREN, ``3``+SIRET,
  ``4``+RPPS-rang.

Key checks are separate from format checks (``rpps_key_ok``, ``finess_key_ok``) because many ANS example
and test identifiers are well-formed but do NOT satisfy Luhn (e.g. RPPS ``01234567866`` in the CI-SIS
examples, FINESS ``120456789``); callers handling conformance data accept them with a warning instead of
rejecting the whole message.
"""

from __future__ import annotations

import re

from opensegur.identity.errors import IdentityError

OID_IDNAT_PS = "1.2.250.1.71.4.2.1"
OID_IDNAT_STRUCT = "1.2.250.1.71.4.2.2"

IDNAT_PS_KINDS: dict[str, str] = {
    "0": "ADELI",
    "1": "CABINET_ADELI",
    "3": "FINESS",
    "4": "SIREN",
    "5": "SIRET",
    "6": "CABINET_RPPS",
    "8": "RPPS",
}

# La Poste establishments share SIREN 356000000, too many for Luhn keys: INSEE uses "sum of digits is a
# multiple of 5" for them, except the head office which keeps a Luhn-valid SIRET.
_LA_POSTE_SIREN = "356000000"
_LA_POSTE_HEAD_OFFICE = "35600000000048"
_FINESS_RE = re.compile(r"^(?:[0-9]{2}|2A|2B)[0-9]{7}$")
# ADELI: 2-character department + profession + order number + key. CPS test cards use letters in the
# department part (ANS CDA examples carry ADELI "0B1057294"), so uppercase letters are accepted.
_ADELI_RE = re.compile(r"^[0-9A-Z]{9}$")
_INTERNAL_ID_RE = re.compile(r"^[0-9A-Za-z]+$")


def luhn_valid(digits: str) -> bool:
    """Luhn check over a string of ASCII digits (check digit last). Non-digit input is simply invalid."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _clean(value: str) -> str:
    return "".join(value.split()).upper()


def rpps_key_ok(rpps: str) -> bool:
    return luhn_valid(_clean(rpps))


def validate_rpps(rpps: str, *, check_key: bool = True) -> str:
    """Return the 11-digit RPPS; ``check_key=False`` accepts ANS test data whose Luhn key is wrong."""
    value = _clean(rpps)
    if len(value) != 11 or not value.isascii() or not value.isdigit():
        raise IdentityError(
            "RPPS", f"Numéro RPPS « {rpps.strip()} » mal formé : 11 chiffres attendus", "rpps"
        )
    if check_key and not luhn_valid(value):
        raise IdentityError(
            "RPPS", f"Numéro RPPS « {value} » invalide : clé de contrôle (Luhn) fausse", "rpps"
        )
    return value


def idnat_ps_from_rpps(rpps: str, *, check_key: bool = True) -> str:
    return "8" + validate_rpps(rpps, check_key=check_key)


def validate_adeli(adeli: str) -> str:
    """Return the 9-character ADELI number.

    The 9th character is a control key, but its algorithm is not in any primary source available to us and
    test cards contain letters, so only the format is checked.
    """
    value = _clean(adeli)
    if not _ADELI_RE.match(value):
        raise IdentityError(
            "ADELI", f"Numéro ADELI « {adeli.strip()} » mal formé : 9 caractères attendus", "adeli"
        )
    return value


def parse_idnat_ps(value: str) -> tuple[str, str]:
    """Split an idNat_PS into (kind, identifier), e.g. ``"801234567897"`` -> ``("RPPS", "01234567897")``.

    RPPS and ADELI parts get a format check only (no key check, see module docstring); the other prefixes
    carry structure-internal identifiers whose format is not specified, so any alphanumeric rest is kept.
    """
    raw = _clean(value)
    if len(raw) < 2 or raw[0] not in IDNAT_PS_KINDS or not _INTERNAL_ID_RE.match(raw):
        raise IdentityError(
            "IDNAT_PS",
            f"Identifiant national de professionnel « {value.strip()} » mal formé "
            "(préfixe 0, 1, 3, 4, 5, 6 ou 8 suivi de l'identifiant attendu)",
            "idnat_ps",
        )
    kind, rest = IDNAT_PS_KINDS[raw[0]], raw[1:]
    try:
        if kind == "RPPS":
            rest = validate_rpps(rest, check_key=False)
        elif kind == "ADELI":
            rest = validate_adeli(rest)
    except IdentityError as exc:
        raise IdentityError(
            "IDNAT_PS", f"Identifiant national de professionnel : {exc.message}", "idnat_ps"
        ) from exc
    return kind, rest


def finess_key_ok(finess: str) -> bool | None:
    """Luhn key of a FINESS; None when it cannot be checked (Corsica, see :func:`validate_finess`)."""
    value = _clean(finess)
    if value[:2] in ("2A", "2B"):
        return None
    return luhn_valid(value)


def validate_finess(finess: str, *, check_key: bool = True) -> str:
    """Return the 9-character FINESS (8 characters + Luhn key).

    Corsican FINESS start with 2A/2B; which digits replace them for the key is not documented in our
    sources, so their key is not checked rather than guessed.
    """
    value = _clean(finess)
    if not _FINESS_RE.match(value):
        raise IdentityError(
            "FINESS",
            f"Numéro FINESS « {finess.strip()} » mal formé : "
            "9 caractères attendus (2A/2B admis pour la Corse)",
            "finess",
        )
    if check_key and finess_key_ok(value) is False:
        raise IdentityError(
            "FINESS", f"Numéro FINESS « {value} » invalide : clé de contrôle (Luhn) fausse", "finess"
        )
    return value


def validate_siret(siret: str) -> str:
    value = _clean(siret)
    if len(value) != 14 or not value.isascii() or not value.isdigit():
        raise IdentityError(
            "SIRET", f"Numéro SIRET « {siret.strip()} » mal formé : 14 chiffres attendus", "siret"
        )
    if value.startswith(_LA_POSTE_SIREN) and value != _LA_POSTE_HEAD_OFFICE:
        valid = sum(int(c) for c in value) % 5 == 0
    else:
        valid = luhn_valid(value)
    if not valid:
        raise IdentityError("SIRET", f"Numéro SIRET « {value} » invalide : clé de contrôle fausse", "siret")
    return value


def idnat_struct_from_finess(finess: str, *, check_key: bool = True) -> str:
    return "1" + validate_finess(finess, check_key=check_key)


def idnat_struct_from_siret(siret: str) -> str:
    return "3" + validate_siret(siret)
