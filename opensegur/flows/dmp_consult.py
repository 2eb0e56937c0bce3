"""Flow: a professional consults a patient's DMP from the patient's record (AIR simplifié).

Who may ask is the web layer's business (``dmp.consult`` in the matrix, a strong session, the care relationship).
This flow adds what the DMP itself requires before any call — a qualified INS, the patient's consent to
consultation, an RPPS for the VIHF — and the consultation rules of the DMP (PDSM4DMP): the first search on a
patient is limited to two years of approved documents, and the page says so and lets the user widen it. The DMP is
reached through ``DmpConsultPort``; this module builds no XML.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from opensegur.content import jdv
from opensegur.content.cda import CdaError, parse_cda
from opensegur.content.vaccination import TYPE_CODES as VACCINATION_TYPES
from opensegur.content.vaccination import Vaccination, vaccinations
from opensegur.documents.metadata import Coded, DocumentMetadata, xcn_id, xon_id
from opensegur.identity.directory import fold
from opensegur.identity.rniv import IdentityStatus
from opensegur.transactions.td02 import Td02Response
from opensegur.transactions.xds import SIGNATURE_CLASS, RetrievedDocument

__all__ = [
    "ACCESS_ACTIONS",
    "AUTHOR_ACTIONS",
    "AuthorAction",
    "AlteredDocument",
    "CONSENT_LABELS",
    "DMP_STATUS_LABELS",
    "EMERGENCY_MODES",
    "FIRST_SEARCH_YEARS",
    "NEEDS_SPECIALTY",
    "OID_SPECIALTY",
    "PROFESSIONS",
    "ConsultationRefused",
    "Consulter",
    "DmpAccess",
    "DmpConsultPort",
    "DmpSearch",
    "DmpView",
    "act_as_author",
    "consent_refusal",
    "is_author",
    "offered_actions",
    "VISIBILITY_CODES",
    "VaccinationRecord",
    "open_dmp",
    "open_document",
    "vaccination_record",
    "patient_cx",
]

FIRST_SEARCH_YEARS = 2
OID_SPECIALTY = "1.2.250.1.71.4.2.5"  # TRE_R38 savoir-faire, the VIHF's second role
NEEDS_SPECIALTY = frozenset({"10", "21"})  # physicians and pharmacists: the VIHF requires their specialty
# G15 professions (TRE_G15-ProfessionSante) the VIHF role carries; the matrix role decides who may consult.
PROFESSIONS = {
    "medecin": Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),
    "interne": Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),
    "dim": Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),
    "regulateur": Coded("10", "1.2.250.1.71.1.2.7", "Médecin"),
    "sage_femme": Coded("50", "1.2.250.1.71.1.2.7", "Sage-Femme"),
}
CONSENT_LABELS = {
    "IC": "Consentement à la consultation recueilli",
    "INC": "Le patient a refusé la consultation de son DMP",
    "NA": "Consentement à la consultation non recueilli",
}
DMP_STATUS_LABELS = {
    "OUVERT": "DMP ouvert",
    "FERME": "DMP fermé",
    "INEXISTANT": "Pas de DMP pour ce patient",
}
# The emergency modes of the VIHF (TRE_R248): the patient cannot be asked, and the DMP does not check the
# professional's authorisation (PDSM4DMP td02); it answers for the patient's opposition to the mode.
EMERGENCY_MODES = {
    "bris_de_glace": (
        "opposition_break_glass",
        "Le patient s'est opposé à l'accès à son DMP en bris de glace",
    ),
    "centre_15": (
        "opposition_centre_15",
        "Le patient s'est opposé à l'accès à son DMP par un centre de régulation (centre 15)",
    ),
}
AUTHORISATION_LABELS = {
    "AUTORISE": "Vous êtes autorisé(e) à consulter ce DMP",
    "NON_AUTORISE": "Aucune autorisation d'accès de votre structure n'est enregistrée dans ce DMP",
    "INTERDIT": "Le patient vous a bloqué l'accès à son DMP",
}


# What each transaction of the DMP's access history means to a clinician.
ACCESS_ACTIONS = {
    "td02": "Vérification du statut du DMP",
    "iti18": "Recherche de documents",
    "iti43": "Lecture d'un document",
    "iti41": "Alimentation (dépôt d'un document)",
    "iti57": "Modification d'un document (masquage, visibilité, suppression)",
}


class ConsultationRefused(Exception):
    """No DMP call may be made: the French reason, shown as is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Consulter:
    """The professional in whose name the DMP is consulted: the VIHF's subject (mode INDIRECTE_RENFORCEE)."""

    rpps: str
    name: str
    roles: tuple[Coded, ...]  # JDV_J65: the profession (TRE_G15), then the specialty (TRE_R38) where required
    structure_id: str  # idNat_Struct: "1" + the site's FINESS
    secteur_activite: str = "SA01"
    purpose_of_use: str = "normal"

    @property
    def idnat_ps(self) -> str:
        return "8" + self.rpps  # idNat_PS of an RPPS professional

    @property
    def author_ids(self) -> frozenset[str]:
        return frozenset({self.idnat_ps, self.structure_id})


@dataclass(frozen=True)
class DmpAccess:
    """One line of the DMP's access history: who did what, when, in which mode, with which outcome."""

    at: datetime
    professional: str
    structure: str
    transaction: str
    purpose_of_use: str
    authentication_mode: str
    outcome: str

    @property
    def action_label(self) -> str:
        return ACCESS_ACTIONS.get(self.transaction, self.transaction)

    @property
    def refused(self) -> bool:
        return self.outcome not in ("Success", "OUVERT", "FERME", "INEXISTANT")


class DmpConsultPort(Protocol):
    async def status(self, consulter: Consulter, patient_cx: str) -> Td02Response: ...

    async def find_documents(
        self,
        consulter: Consulter,
        patient_cx: str,
        *,
        since: datetime | None,
        until: datetime | None = None,
        type_codes: Sequence[Coded] | None = None,
        with_deprecated: bool = False,
    ) -> list[DocumentMetadata]: ...

    async def get_document(
        self, consulter: Consulter, patient_cx: str, unique_id: str
    ) -> DocumentMetadata | None: ...

    async def retrieve(
        self, consulter: Consulter, patient_cx: str, repository_unique_id: str, unique_id: str
    ) -> RetrievedDocument: ...

    async def access_history(self, consulter: Consulter, patient_cx: str) -> list[DmpAccess] | None:
        """Newest first; None when this DMP exposes no access history to software."""
        ...

    async def update_confidentiality(
        self, consulter: Consulter, patient_cx: str, entry: DocumentMetadata, codes: Sequence[Coded]
    ) -> None: ...

    async def delete_document(
        self, consulter: Consulter, patient_cx: str, entry: DocumentMetadata
    ) -> None: ...


VISIBILITY_CODES = ("MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX")


@dataclass(frozen=True)
class DmpSearch:
    """What the professional asks of the DMP tab. The type and the act's dates are TD3.1 criteria the DMP filters
    on (ITI-18 FindDocuments); the author or unit and the visibility filter the answer here."""

    whole: bool = False  # the whole DMP instead of the first search's two years
    versions: bool = False  # the replaced versions (Deprecated) too, shown as such
    type_code: str | None = None  # JDV_J07 XdsTypeCode
    act_from: date | None = None  # bounds on the act's date (serviceStartTime)
    act_to: date | None = None
    author: str = ""  # part of an author's name, institution or specialty
    visibility: str = ""  # "", "normale", or one of VISIBILITY_CODES

    @property
    def narrowed(self) -> bool:
        """The professional gave a criterion: the first search's default bound no longer applies."""
        return bool(self.type_code or self.act_from or self.act_to or self.author or self.visibility)

    def keeps(self, doc: DocumentMetadata) -> bool:
        if self.author:
            wanted = fold(self.author)
            said = " ".join(" ".join([a.person or "", *a.institutions, *a.specialties]) for a in doc.authors)
            if wanted not in fold(said):
                return False
        codes = {c.code for c in doc.confidentiality_codes}
        if self.visibility == "normale":
            return not codes & set(VISIBILITY_CODES)
        return not self.visibility or self.visibility in codes


@dataclass
class DmpView:
    """What the DMP tab shows: the TD0.2 answer and, when it may be consulted, the documents."""

    status: Td02Response
    search: DmpSearch = DmpSearch()
    documents: list[DocumentMetadata] = field(default_factory=list)
    since: datetime | None = None  # the search's lower bound; None: the whole DMP
    first_bound: bool = False  # since is the first search's two years, not the professional's date
    searched: bool = False
    last_visit: datetime | None = None  # this professional's previous consultation of this DMP
    refusal: str | None = None  # why the DMP, open, was not searched in this mode
    author_ids: frozenset[str] = frozenset()  # the professional's idNat_PS and their structure's idNat_Struct

    def author_actions(self, doc: DocumentMetadata) -> list[tuple[str, str]]:
        """(action, button label) this professional may take on the document: none unless they or their
        structure wrote it and it is the current version."""
        if (doc.availability_status or "Approved") != "Approved" or not is_author(doc, self.author_ids):
            return []
        return [(key, AUTHOR_ACTIONS[key].label) for key in offered_actions(doc)]

    def is_new(self, doc: DocumentMetadata) -> bool:
        """Created after the professional's previous consultation (creationTime is UTC, ITI TF-3 §4.2.3.1.7)."""
        if self.last_visit is None or not doc.creation_time or not doc.creation_time[:8].isdigit():
            return False
        digits = (doc.creation_time + "000000")[:14]
        return datetime.strptime(digits, "%Y%m%d%H%M%S").replace(tzinfo=UTC) > self.last_visit

    @property
    def status_label(self) -> str:
        return DMP_STATUS_LABELS[self.status.status]

    @property
    def authorisation_label(self) -> str:
        return AUTHORISATION_LABELS[self.status.authorisation]


def is_author(doc: DocumentMetadata, ids: frozenset[str]) -> bool:
    """One of the document's authors is one of ``ids`` (idNat_PS of the person, idNat_Struct of the institution)."""
    return any(xcn_id(a.person) in ids or any(xon_id(i) in ids for i in a.institutions) for a in doc.authors)


def patient_cx(matricule: str, oid: str) -> str:
    return f"{matricule}^^^&{oid}&ISO^NH"


def consent_refusal(patient: Any, *, emergency: bool = False) -> str | None:
    """Why the patient's DMP may not be consulted whatever the professional, or None.

    ``patient`` is a stored Patient: RNIV status, INS and the consent recorded from PAM FR (ZFA-11) or the page.
    In an emergency (bris de glace, centre 15) the patient cannot be asked: only the qualified INS is required,
    and the DMP answers for the patient's opposition to that mode.
    """
    if patient.status != IdentityStatus.QUAL.value or not patient.ins_matricule or not patient.ins_oid:
        return "Identité non qualifiée : le DMP n'est consultable qu'avec une INS qualifiée"
    if emergency:
        return None
    consent = (patient.dmp_consent or {}).get("consultation_consent") or "NA"
    if consent != "IC":
        return CONSENT_LABELS.get(consent, CONSENT_LABELS["NA"])
    return None


def _first_search_bound(now: datetime) -> datetime:
    return now - timedelta(days=365 * FIRST_SEARCH_YEARS)


async def open_dmp(
    port: DmpConsultPort,
    consulter: Consulter,
    cx: str,
    *,
    search: DmpSearch = DmpSearch(),
    last_visit: datetime | None = None,
    now: datetime | None = None,
) -> DmpView:
    """TD0.2, then, for an open DMP the professional may read, FindDocuments: approved documents, on acts of the
    last two years unless the professional widened the search or gave dates, with the replaced versions when
    asked. The port's errors reach the caller: a page shows the DMP's answer, never half a list."""
    status = await port.status(consulter, cx)
    view = DmpView(status, search, last_visit=last_visit, author_ids=consulter.author_ids)
    if status.status != "OUVERT" or status.authorisation == "INTERDIT":
        return view
    emergency = EMERGENCY_MODES.get(consulter.purpose_of_use)
    if emergency is not None:
        opposition, refusal = emergency
        if getattr(status, opposition):
            view.refusal = refusal
            return view
    elif status.authorisation != "AUTORISE":
        return view
    if search.act_from:
        view.since = datetime.combine(search.act_from, time.min, UTC)
    elif not (search.whole or search.narrowed):
        view.since, view.first_bound = _first_search_bound(now or datetime.now(UTC)), True
    until = datetime.combine(search.act_to, time.max, UTC) if search.act_to else None
    # The web layer accepts only the JDV_J07 codes.
    types = [jdv.load_value_set(jdv.JDV_TYPE_CODE).codes[search.type_code]] if search.type_code else None
    docs = await port.find_documents(
        consulter, cx, since=view.since, until=until, type_codes=types, with_deprecated=search.versions
    )
    # A submission set's XAdES signature is an entry of its own in the DMP: technical, not for a clinician.
    readable = [d for d in docs if d.class_code.code != SIGNATURE_CLASS.code and search.keeps(d)]
    view.documents = sorted(readable, key=lambda d: d.creation_time or "", reverse=True)
    view.searched = True
    return view


class AlteredDocument(Exception):
    """What ITI-43 returned is not what the registry lists: shown to nobody, named to the professional."""


async def open_document(
    port: DmpConsultPort, consulter: Consulter, cx: str, unique_id: str
) -> RetrievedDocument:
    """The registry's entry (ITI-18 GetDocuments), then the content (ITI-43), checked against the entry's size and
    SHA-1 before anyone reads it. DmpRejectedError-like errors of the port reach the caller."""
    entry = await port.get_document(consulter, cx, unique_id)
    if entry is None or not entry.repository_unique_id:
        raise AlteredDocument(f"Le document {unique_id} n'est pas, ou plus, dans le DMP de ce patient")
    doc = await port.retrieve(consulter, cx, entry.repository_unique_id, unique_id)
    if entry.size is not None and entry.size != len(doc.content):
        raise AlteredDocument(
            f"Document non affiché : {len(doc.content)} octets reçus, {entry.size} enregistrés dans le DMP"
        )
    if entry.hash_sha1 and entry.hash_sha1.lower() != hashlib.sha1(doc.content).hexdigest():
        raise AlteredDocument(
            "Document non affiché : son empreinte SHA-1 diffère de celle enregistrée dans le DMP"
        )
    return doc


@dataclass
class VaccinationRecord:
    """The carnet de vaccination: every vaccination of the patient's vaccination documents, newest first."""

    vaccinations: list[Vaccination] = field(default_factory=list)
    sources: list[DocumentMetadata] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # titles of the documents that could not be read


async def vaccination_record(port: DmpConsultPort, consulter: Consulter, cx: str) -> VaccinationRecord:
    """FindDocuments on the vaccination types without a date bound (an "Historique des vaccinations" often has an
    old date, PDSM4DMP), then each document retrieved and read. The same vaccination written in two documents (the
    history and a note) is shown once."""
    types = [jdv.load_value_set(jdv.JDV_TYPE_CODE).codes[code] for code in VACCINATION_TYPES]
    record = VaccinationRecord()
    record.sources = await port.find_documents(consulter, cx, since=None, type_codes=types)
    seen: set[tuple[str, str]] = set()
    for doc in record.sources:
        if not doc.repository_unique_id:
            continue
        retrieved = await port.retrieve(consulter, cx, doc.repository_unique_id, doc.unique_id)
        try:
            if doc.hash_sha1 and doc.hash_sha1.lower() != hashlib.sha1(retrieved.content).hexdigest():
                raise CdaError("DMP_HASH", "empreinte différente de celle enregistrée dans le DMP")
            root, _header = await asyncio.to_thread(parse_cda, retrieved.content)
        except CdaError:
            record.unreadable.append(doc.title or doc.unique_id)
            continue
        for v in vaccinations(root):
            # One injection: its day and its lot (the vaccine's name differs between a history and a note).
            key = (v.date[:8], v.lot or v.vaccine.casefold())
            if key not in seen:
                seen.add(key)
                record.vaccinations.append(v)
    record.vaccinations.sort(key=lambda v: v.sort_key, reverse=True)
    return record


@dataclass(frozen=True)
class AuthorAction:
    """What the author of a document may do to it in the DMP (TD3.3a-c): a confidentiality code added or
    removed (ITI-57 metadata update), or the document deleted (ITI-57 status change)."""

    label: str  # the button
    done: str  # the confirmation
    add: str | None = None
    remove: str | None = None


AUTHOR_ACTIONS = {
    "masquer": AuthorAction(
        "Masquer aux professionnels", "Document masqué aux professionnels", add="MASQUE_PS"
    ),
    "demasquer": AuthorAction(
        "Rendre visible aux professionnels",
        "Document de nouveau visible des professionnels",
        remove="MASQUE_PS",
    ),
    "invisible_patient": AuthorAction(
        "Rendre invisible au patient", "Document invisible au patient", add="INVISIBLE_PATIENT"
    ),
    "visible_patient": AuthorAction(
        "Rendre visible au patient", "Document de nouveau visible du patient", remove="INVISIBLE_PATIENT"
    ),
    "invisible_representants": AuthorAction(
        "Rendre invisible aux représentants légaux",
        "Document invisible aux représentants légaux",
        add="INVISIBLE_REPRESENTANTS_LEGAUX",
    ),
    "visible_representants": AuthorAction(
        "Rendre visible aux représentants légaux",
        "Document de nouveau visible des représentants légaux",
        remove="INVISIBLE_REPRESENTANTS_LEGAUX",
    ),
    "supprimer": AuthorAction("Supprimer du DMP", "Document supprimé du DMP"),
}


def offered_actions(doc: DocumentMetadata) -> list[str]:
    """The actions that would change this document: a code it lacks to add, one it has to remove, deletion."""
    codes = {c.code for c in doc.confidentiality_codes}
    return [
        key
        for key, a in AUTHOR_ACTIONS.items()
        if (a.add and a.add not in codes) or (a.remove and a.remove in codes) or key == "supprimer"
    ]


async def act_as_author(
    port: DmpConsultPort, consulter: Consulter, cx: str, unique_id: str, action: str
) -> AuthorAction:
    """One author action on the document's current version, or ConsultationRefused (French) when the document is
    gone or not the professional's; the DMP's own refusal (DmpRejectedError) reaches the caller."""
    what = AUTHOR_ACTIONS[action]
    entry = await port.get_document(consulter, cx, unique_id)
    if entry is None or (entry.availability_status or "Approved") != "Approved":
        raise ConsultationRefused("Ce document n'est pas, ou plus, une version en vigueur dans le DMP")
    if not is_author(entry, consulter.author_ids):
        raise ConsultationRefused("Seul l'auteur du document, ou sa structure, peut en changer la visibilité")
    if what.add is None and what.remove is None:
        await port.delete_document(consulter, cx, entry)
        return what
    codes = [c for c in entry.confidentiality_codes if c.code != what.remove]
    if what.add and what.add not in {c.code for c in codes}:
        codes.append(jdv.load_value_set(jdv.JDV_CONFIDENTIALITY).codes[what.add])
    await port.update_confidentiality(consulter, cx, entry, codes)
    return what
