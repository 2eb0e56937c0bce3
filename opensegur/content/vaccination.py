"""The vaccinations of a CI-SIS vaccination document (volet VAC "Historique des vaccinations", 11369-6, and
VAC-NOTE "Note de vaccination", 87273-9): the FR-Vaccination entries (templateId 1.2.250.1.213.1.1.3.45) read into
rows a carnet de vaccination can show — date, vaccine, what it protects against (its ATC class), rank, lot,
vaccinator, whether it was given, reactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from opensegur.content.cda import NS

__all__ = ["TEMPLATE_VACCINATION", "TYPE_CODES", "Vaccination", "vaccinations"]

TEMPLATE_VACCINATION = "1.2.250.1.213.1.1.3.45"
TYPE_CODES = ("11369-6", "87273-9")  # Historique des vaccinations, Note de vaccination (LOINC)
_OID_ATC = "2.16.840.1.113883.6.73"
_LOINC_RANK = "30973-2"


@dataclass(frozen=True)
class Vaccination:
    date: str  # TS as written: YYYY[MM[DD[hhmm[ss]]]][+zzzz]
    vaccine: str
    protects_against: str  # the ATC class's label, e.g. "Vaccin antituberculeux"
    given: bool
    rank: str = ""
    lot: str = ""
    vaccinator: str = ""
    reactions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def sort_key(self) -> str:
        return self.date[:14]


def _text(el: etree._Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def _name(person: etree._Element | None) -> str:
    if person is None:
        return ""
    name = person.find("cda:name", NS)
    parts = [_text(name.find(f"cda:{p}", NS)) if name is not None else "" for p in ("given", "family")]
    return " ".join(p for p in parts if p)


def _vaccinator(sa: etree._Element) -> str:
    entity = sa.find("cda:performer/cda:assignedEntity", NS)
    if entity is None:
        return ""
    who = _name(entity.find("cda:assignedPerson", NS))
    where = _text(entity.find("cda:representedOrganization/cda:name", NS))
    return f"{who} ({where})" if who and where else who or where


def _rank(sa: etree._Element) -> str:
    """FR-Rang-de-la-vaccination: the observation coded LOINC 30973-2, its INT value."""
    for obs in sa.findall("cda:entryRelationship/cda:observation", NS):
        code, value = obs.find("cda:code", NS), obs.find("cda:value", NS)
        if code is not None and code.get("code") == _LOINC_RANK and value is not None:
            return value.get("value") or ""
    return ""


def _one(sa: etree._Element) -> Vaccination:
    material = sa.find("cda:consumable/cda:manufacturedProduct/cda:manufacturedMaterial", NS)
    code = material.find("cda:code", NS) if material is not None else None
    atc = (
        next((t for t in code.findall("cda:translation", NS) if t.get("codeSystem") == _OID_ATC), None)
        if code is not None
        else None
    )
    vaccine = _text(material.find("cda:name", NS)) if material is not None else ""
    reactions = tuple(
        (v.get("displayName") or v.get("code") or "")
        for o in sa.findall("cda:entryRelationship[@typeCode='CAUS']/cda:observation", NS)
        if (v := o.find("cda:value", NS)) is not None
    )
    time = sa.find("cda:effectiveTime", NS)
    return Vaccination(
        date=(time.get("value") or "") if time is not None else "",
        vaccine=vaccine or ((code.get("displayName") or code.get("code") or "") if code is not None else ""),
        protects_against=(atc.get("displayName") or atc.get("code") or "") if atc is not None else "",
        given=sa.get("negationInd") != "true",
        rank=_rank(sa),
        lot=_text(material.find("cda:lotNumberText", NS)) if material is not None else "",
        vaccinator=_vaccinator(sa),
        reactions=tuple(r for r in reactions if r),
    )


def vaccinations(root: etree._Element) -> list[Vaccination]:
    """The document's FR-Vaccination entries, in document order."""
    return [
        _one(sa)
        for sa in root.iter(f"{{{NS['cda']}}}substanceAdministration")
        if any(t.get("root") == TEMPLATE_VACCINATION for t in sa.findall("cda:templateId", NS))
    ]
