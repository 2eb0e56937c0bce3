"""Flow: a professional consults a patient's DMP from the patient's record (AIR simplifié) — who consults, and
through what. The search and the viewer (``dmp_search``), the carnet de vaccination (``dmp_vaccinations``) and the
author's actions (``dmp_author_actions``) build on it.

Who may ask is the web layer's business (``dmp.consult`` in the matrix, a strong session, the care relationship).
This flow adds what the DMP itself requires before any call — a qualified INS, the patient's consent to
consultation, an RPPS for the VIHF — and the consultation rules of the DMP (PDSM4DMP): the first search on a
patient is limited to two years of approved documents, and the page says so and lets the user widen it. The DMP is
reached through ``DmpConsultPort``; this module builds no XML.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from opensegur.documents.metadata import Coded, DocumentMetadata, xcn_id, xon_id
from opensegur.errors import OpenSegurError
from opensegur.identity.rniv import IdentityStatus
from opensegur.transactions.td02 import Td02Response
from opensegur.transactions.xds import Association, RetrievedDocument

__all__ = [
    "ACCESS_ACTIONS",
    "CONSENT_LABELS",
    "EMERGENCY_MODES",
    "NEEDS_SPECIALTY",
    "OID_SPECIALTY",
    "PROFESSIONS",
    "ConsultationRefused",
    "Consulter",
    "DmpAccess",
    "DmpConsultPort",
    "SpecialtyLookup",
    "consent_refusal",
    "consulter_for",
    "is_author",
    "patient_cx",
    "with_specialty",
]

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


# What each transaction of the DMP's access history means to a clinician.
ACCESS_ACTIONS = {
    "td02": "Vérification du statut du DMP",
    "iti18": "Recherche de documents",
    "iti43": "Lecture d'un document",
    "iti41": "Alimentation (dépôt d'un document)",
    "iti57": "Modification d'un document (masquage, visibilité, suppression)",
}


class ConsultationRefused(OpenSegurError):
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
        event_codes: Sequence[Coded] | None = None,
        with_deprecated: bool = False,
    ) -> list[DocumentMetadata]: ...

    async def get_document(
        self, consulter: Consulter, patient_cx: str, unique_id: str
    ) -> DocumentMetadata | None: ...

    async def find_submission_sets(
        self, consulter: Consulter, patient_cx: str, *, since: datetime
    ) -> list[str]:
        """The entryUUIDs of the submission sets put in this DMP since ``since`` (ITI-18 FindSubmissionSets)."""
        ...

    async def get_associations(
        self, consulter: Consulter, patient_cx: str, uuids: Sequence[str]
    ) -> list[Association]: ...

    async def get_documents_and_associations(
        self, consulter: Consulter, patient_cx: str, uuids: Sequence[str]
    ) -> tuple[list[DocumentMetadata], list[Association]]: ...

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


def is_author(doc: DocumentMetadata, ids: frozenset[str]) -> bool:
    """One of the document's authors is one of ``ids`` (idNat_PS of the person, idNat_Struct of the institution)."""
    return any(xcn_id(a.person) in ids or any(xon_id(i) in ids for i in a.institutions) for a in doc.authors)


def patient_cx(matricule: str, oid: str) -> str:
    return f"{matricule}^^^&{oid}&ISO^NH"


SpecialtyLookup = Callable[[str], Awaitable[Coded]]
"""The specialty of an RPPS (TRE_R38, from the Annuaire Santé) for the VIHF; raises ConsultationRefused."""


def consulter_for(roles: Sequence[str], rpps: str | None, name: str, patient: Any, mode: str) -> Consulter:
    """The VIHF subject of a consultation of ``patient``'s DMP by this professional in ``mode``, or
    ConsultationRefused with the reason: no qualified INS or consent (``consent_refusal``), no RPPS, a profession
    that does not consult. A physician's specialty is added by ``with_specialty``."""
    refusal = consent_refusal(patient, emergency=mode in EMERGENCY_MODES)
    profession = next((PROFESSIONS[r] for r in roles if r in PROFESSIONS), None)
    if refusal is None and not rpps:
        refusal = "Votre compte n'a pas de numéro RPPS : le DMP ne peut pas être consulté en votre nom"
    if refusal is None and profession is None:
        refusal = "Votre profession ne permet pas la consultation du DMP"
    if refusal is not None:
        raise ConsultationRefused(refusal)
    assert rpps is not None and profession is not None
    site = patient.structure
    return Consulter(
        rpps,
        name,
        (profession,),
        "1" + site.finess,
        (site.settings or {}).get("secteur_activite", "SA01"),
        mode,
    )


async def with_specialty(consulter: Consulter, specialty: SpecialtyLookup) -> Consulter:
    """The consulter with the specialty its profession requires in the VIHF (physicians, pharmacists)."""
    profession = consulter.roles[0]
    if profession.code not in NEEDS_SPECIALTY:
        return consulter
    return replace(consulter, roles=(profession, await specialty(consulter.rpps)))


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
