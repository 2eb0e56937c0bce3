"""TD0.2 "test d'existence du DMP et conditions d'accès": request and response, both sides (the DMP client and
the sandbox DMP).

The real TD0.2 schema is in the DMP integration guide, which is not public; this is the sandbox's own SOAP body,
shaped after what the digest says TD0.2 returns (DMP status, closing date and reason, PS authorisation status,
"médecin traitant DMP", attachment to Mon espace santé) plus the patient's oppositions. French element names, as
the DMP uses them. The client imports the build/parse functions from here so both sides share one definition.

Request::

    <td02:TestExistenceDMP xmlns:td02="urn:opensegur:sandbox:dmp:td02:1.0">
      <td02:INS>279035121518989^^^&amp;1.2.250.1.213.1.4.10&amp;ISO^NH</td02:INS>
    </td02:TestExistenceDMP>

Response: ``td02:TestExistenceDMPReponse`` with ``Statut`` (OUVERT, FERME, INEXISTANT), optional
``DateFermeture`` (YYYY-MM-DD) and ``MotifFermeture``, ``OppositionAlimentation``, ``OppositionBrisDeGlace``,
``OppositionCentre15``, ``StatutAutorisation`` (AUTORISE, NON_AUTORISE, INTERDIT), ``MedecinTraitantDMP`` and
``RattacheMonEspaceSante`` (xs:boolean).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lxml import etree

from opensegur.errors import OpenSegurError

__all__ = [
    "ACTION_TD02",
    "AUTHORISATIONS",
    "NS_TD02",
    "STATUSES",
    "Td02Error",
    "Td02Request",
    "Td02Response",
    "build_td02_request",
    "build_td02_response",
    "parse_td02_request",
    "parse_td02_response",
]

NS_TD02 = "urn:opensegur:sandbox:dmp:td02:1.0"
ACTION_TD02 = "urn:opensegur:sandbox:dmp:td02:TestExistenceDMP"
STATUSES = frozenset({"OUVERT", "FERME", "INEXISTANT"})
AUTHORISATIONS = frozenset({"AUTORISE", "NON_AUTORISE", "INTERDIT"})
_T = f"{{{NS_TD02}}}"
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class Td02Error(OpenSegurError, ValueError):
    """A TD0.2 message does not follow the schema above."""


@dataclass(frozen=True)
class Td02Request:
    ins_cx: str  # "<matricule>^^^&<INS OID>&ISO^NH"


@dataclass(frozen=True)
class Td02Response:
    status: str  # OUVERT | FERME | INEXISTANT
    closing_date: dt.date | None = None
    closing_reason: str | None = None
    opposition_feeding: bool = False
    opposition_break_glass: bool = False
    opposition_centre_15: bool = False
    authorisation: str = "NON_AUTORISE"
    treating_physician: bool = False  # "médecin traitant DMP"
    mon_espace_sante: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise Td02Error(f"Statut {self.status!r} inconnu")
        if self.authorisation not in AUTHORISATIONS:
            raise Td02Error(f"StatutAutorisation {self.authorisation!r} inconnu")


def _el(tag: str) -> etree._Element:
    return etree.Element(f"{_T}{tag}", nsmap={"td02": NS_TD02})


def _sub(parent: etree._Element, tag: str, text: str) -> None:
    etree.SubElement(parent, f"{_T}{tag}").text = text


def build_td02_request(ins_cx: str) -> etree._Element:
    if not ins_cx.strip():
        raise ValueError("INS required")
    root = _el("TestExistenceDMP")
    _sub(root, "INS", ins_cx.strip())
    return root


def parse_td02_request(el: etree._Element) -> Td02Request:
    if el.tag != f"{_T}TestExistenceDMP":
        raise Td02Error(f"td02:TestExistenceDMP attendu, reçu {el.tag}")
    children = [c for c in el if isinstance(c.tag, str)]
    if len(children) != 1 or children[0].tag != f"{_T}INS" or not (children[0].text or "").strip():
        raise Td02Error("TestExistenceDMP doit contenir exactement un élément td02:INS non vide")
    return Td02Request((children[0].text or "").strip())


def _bool(value: bool) -> str:
    return "true" if value else "false"


def build_td02_response(r: Td02Response) -> etree._Element:
    root = _el("TestExistenceDMPReponse")
    _sub(root, "Statut", r.status)
    if r.closing_date is not None:
        _sub(root, "DateFermeture", r.closing_date.isoformat())
    if r.closing_reason:
        _sub(root, "MotifFermeture", r.closing_reason)
    _sub(root, "OppositionAlimentation", _bool(r.opposition_feeding))
    _sub(root, "OppositionBrisDeGlace", _bool(r.opposition_break_glass))
    _sub(root, "OppositionCentre15", _bool(r.opposition_centre_15))
    _sub(root, "StatutAutorisation", r.authorisation)
    _sub(root, "MedecinTraitantDMP", _bool(r.treating_physician))
    _sub(root, "RattacheMonEspaceSante", _bool(r.mon_espace_sante))
    return root


def parse_td02_response(el: etree._Element) -> Td02Response:
    if el.tag != f"{_T}TestExistenceDMPReponse":
        raise Td02Error(f"td02:TestExistenceDMPReponse attendu, reçu {el.tag}")
    values: dict[str, str] = {}
    for child in el:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname
        if etree.QName(child).namespace != NS_TD02 or name in values:
            raise Td02Error(f"élément inattendu ou répété {child.tag}")
        values[name] = (child.text or "").strip()

    def flag(name: str) -> bool:
        try:
            return _BOOLEANS[values[name]]
        except KeyError:
            raise Td02Error(f"{name} absent ou non booléen") from None

    if "Statut" not in values or "StatutAutorisation" not in values:
        raise Td02Error("Statut et StatutAutorisation sont obligatoires")
    closing = None
    if values.get("DateFermeture"):
        try:
            closing = dt.date.fromisoformat(values["DateFermeture"])
        except ValueError as exc:
            raise Td02Error(f"DateFermeture {values['DateFermeture']!r} invalide") from exc
    return Td02Response(
        status=values["Statut"],
        closing_date=closing,
        closing_reason=values.get("MotifFermeture") or None,
        opposition_feeding=flag("OppositionAlimentation"),
        opposition_break_glass=flag("OppositionBrisDeGlace"),
        opposition_centre_15=flag("OppositionCentre15"),
        authorisation=values["StatutAutorisation"],
        treating_physician=flag("MedecinTraitantDMP"),
        mon_espace_sante=flag("RattacheMonEspaceSante"),
    )
