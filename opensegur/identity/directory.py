"""The national health directory (Annuaire Santé) as the domain sees it: practitioners, their practice places,
organisations and MSSanté mailboxes. Pure data, no I/O: the connector maps the FHIR resources onto these.

Mailbox types are the ANS ``TRE_R257-TypeBAL`` codes carried by the ``as-ext-mailbox-mss-metadata`` extension
(IG ``ans.fhir.fr.annuaire``): PER personal, CAB a private practice's, ORG a service or team's, APP a
software's. Personal and practice mailboxes hang on a Practitioner or PractitionerRole, organisational and
applicative ones on an Organization.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "PROFESSIONS",
    "SPECIALTIES",
    "DirectoryEntry",
    "DirectoryOrganization",
    "DirectoryPractitioner",
    "DirectoryRole",
    "Mailbox",
    "MailboxType",
    "fold",
]

# Code systems of the directory resources (IG ans.fhir.fr.annuaire, API FHIR Annuaire Santé v2 examples).
SYSTEM_IDNAT_PS = "urn:oid:1.2.250.1.71.4.2.1"
SYSTEM_IDNAT_STRUCT = "urn:oid:1.2.250.1.71.4.2.2"
# The IG examples name the RPPS system https://rpps.esante.gouv.fr, the API guide's _elements example
# http://rpps.fr: readers accept both, and the RPPS type code.
SYSTEMS_RPPS = ("https://rpps.esante.gouv.fr", "http://rpps.fr")
SYSTEM_FINESS = "http://finess.sante.gouv.fr"
# The API guide's Ségur use case also filters on https://finess.esante.gouv.fr: readers accept both.
SYSTEMS_FINESS = (SYSTEM_FINESS, "https://finess.esante.gouv.fr")
SYSTEM_ID_TYPE = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
SYSTEM_ORG_TYPE = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-3307"
SYSTEM_SECTEUR_ACTIVITE = (
    "https://mos.esante.gouv.fr/NOS/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite"
)
SYSTEM_PROFESSION = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
SYSTEM_SPECIALTY = "https://mos.esante.gouv.fr/NOS/TRE_R38-SpecialiteOrdinale/FHIR/TRE-R38-SpecialiteOrdinale"
SYSTEM_MESSAGING_TYPE = "https://mos.esante.gouv.fr/NOS/TRE_R256-TypeMessagerie/FHIR/TRE-R256-TypeMessagerie"
SYSTEM_MAILBOX_TYPE = "https://mos.esante.gouv.fr/NOS/TRE_R257-TypeBAL/FHIR/TRE-R257-TypeBAL"
EXT_EMAIL_TYPE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type"
EXT_MAILBOX_METADATA = (
    "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata"
)

# TRE_G15-ProfessionSante (labels as in JDV_J01-XdsAuthorSpecialty-CISIS).
PROFESSIONS = {
    "10": "Médecin",
    "21": "Pharmacien",
    "40": "Chirurgien-dentiste",
    "50": "Sage-femme",
    "60": "Infirmier",
    "70": "Masseur-kinésithérapeute",
}
# TRE_R38-SpecialiteOrdinale, the ones a hospital's correspondents mostly carry (JDV_J107 labels).
SPECIALTIES = {
    "SM02": "Anesthésie-réanimation",
    "SM03": "Biologie médicale",
    "SM04": "Cardiologie et maladies vasculaires",
    "SM14": "Chirurgie viscérale et digestive",
    "SM20": "Gynécologie-obstétrique",
    "SM26": "Qualifié en médecine générale",
    "SM27": "Médecine interne",
    "SM30": "Néphrologie",
    "SM40": "Pédiatrie",
    "SM42": "Psychiatrie",
    "SM44": "Radio-diagnostic",
    "SM53": "Spécialiste en médecine générale",
    "SM54": "Médecine générale",
}


class MailboxType(StrEnum):
    PER = "PER"
    CAB = "CAB"
    ORG = "ORG"
    APP = "APP"

    @property
    def label(self) -> str:
        return _MAILBOX_LABELS[self]


_MAILBOX_LABELS = {
    MailboxType.PER: "personnelle",
    MailboxType.CAB: "cabinet",
    MailboxType.ORG: "organisationnelle",
    MailboxType.APP: "applicative",
}


def fold(text: str) -> str:
    """Case- and accent-insensitive form used to compare names, as FHIR string search does."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


@dataclass(frozen=True)
class Mailbox:
    """An MSSanté mailbox (BAL) and who answers for it: a practitioner (RPPS) or an organisation."""

    address: str
    type: MailboxType
    owner_name: str
    owner_rpps: str | None = None
    owner_finess: str | None = None
    description: str | None = None
    service: str | None = None

    @property
    def type_label(self) -> str:
        return self.type.label


@dataclass(frozen=True)
class DirectoryOrganization:
    """A structure (legal or geographical entity, private practice) with its organisational mailboxes."""

    id: str
    name: str
    finess: str | None = None
    city: str | None = None
    postal_code: str | None = None
    mailboxes: tuple[Mailbox, ...] = ()


@dataclass(frozen=True)
class DirectoryPractitioner:
    """A professional practice (exercice professionnel): identity, profession and speciality."""

    id: str
    rpps: str | None
    family_name: str
    given_name: str
    civility: str | None = None
    profession_code: str | None = None
    profession: str | None = None
    specialty_code: str | None = None
    specialty: str | None = None
    mailboxes: tuple[Mailbox, ...] = ()

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.civility, self.given_name, self.family_name) if p)


@dataclass(frozen=True)
class DirectoryRole:
    """A practice situation (situation d'exercice): where the practitioner works, with its own mailboxes."""

    id: str
    organization: DirectoryOrganization | None
    mailboxes: tuple[Mailbox, ...] = ()


@dataclass(frozen=True)
class DirectoryEntry:
    """One practitioner as a clinician picks a recipient: who, what, where, and every mailbox reaching them."""

    practitioner: DirectoryPractitioner
    roles: tuple[DirectoryRole, ...] = field(default_factory=tuple)

    @property
    def organizations(self) -> tuple[DirectoryOrganization, ...]:
        seen: dict[str, DirectoryOrganization] = {}
        for role in self.roles:
            if role.organization is not None:
                seen.setdefault(role.organization.id, role.organization)
        return tuple(seen.values())

    @property
    def personal_mailboxes(self) -> tuple[Mailbox, ...]:
        """PER/CAB mailboxes of the practitioner and of their practice situations, without repeats."""
        boxes = [*self.practitioner.mailboxes, *(m for r in self.roles for m in r.mailboxes)]
        return _unique(boxes)

    @property
    def mailboxes(self) -> tuple[Mailbox, ...]:
        """Personal mailboxes first, then those of the organisations where the practitioner works."""
        return _unique([*self.personal_mailboxes, *(m for o in self.organizations for m in o.mailboxes)])


def _unique(boxes: list[Mailbox]) -> tuple[Mailbox, ...]:
    seen: dict[str, Mailbox] = {}
    for box in boxes:
        seen.setdefault(box.address.lower(), box)
    return tuple(seen.values())
