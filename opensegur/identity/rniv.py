"""RNIV identity statuses and their transitions.

Sources: standards digest §3.3, FR Core CodeSystem ``fr-core-cs-identity-status``.

The four statuses are the four combinations of two independent criteria:

============ ===================== ==============================
Status       INSi retrieval/check  High-trust document checked
============ ===================== ==============================
PROV         no                    no
RECUP        yes                   no
VALI         no                    yes
QUAL         yes                   yes
============ ===================== ==============================

The state machine is a table (:data:`TRANSITIONS`) keyed by (status, event) so that every pair is explicit
and can be enumerated by tests; the public ``after_*`` functions are thin wrappers around :func:`apply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType

from opensegur.identity.errors import IdentityError


class IdentityStatus(StrEnum):
    PROV = "PROV"
    RECUP = "RECUP"
    VALI = "VALI"
    QUAL = "QUAL"

    @property
    def label(self) -> str:
        return _STATUS_LABELS[self]

    @property
    def insi_verified(self) -> bool:
        return self in (IdentityStatus.RECUP, IdentityStatus.QUAL)

    @property
    def document_checked(self) -> bool:
        return self in (IdentityStatus.VALI, IdentityStatus.QUAL)


_STATUS_LABELS = {
    IdentityStatus.PROV: "Identité provisoire",
    IdentityStatus.RECUP: "Identité récupérée",
    IdentityStatus.VALI: "Identité validée",
    IdentityStatus.QUAL: "Identité qualifiée",
}


def _status_for(insi_verified: bool, document_checked: bool) -> IdentityStatus:
    return {
        (False, False): IdentityStatus.PROV,
        (True, False): IdentityStatus.RECUP,
        (False, True): IdentityStatus.VALI,
        (True, True): IdentityStatus.QUAL,
    }[(insi_verified, document_checked)]


class HighTrustDocument(StrEnum):
    """Identity devices that may validate an identity (RNIV "dispositifs à haut niveau de confiance")."""

    PASSPORT = "PASSEPORT"
    NATIONAL_ID_CARD = "CNI"
    RESIDENCE_PERMIT = "TITRE_SEJOUR"
    ECNI = "ECNI"
    IDN_LAPOSTE = "IDN_LAPOSTE"
    APP_CARTE_VITALE = "APP_CV"
    # Minors without their own ID document: family record book or birth certificate, together with a
    # carte Vitale bearing the child's photo (RNIV special case).
    LIVRET_FAMILLE = "LIVRET_FAMILLE"

    @property
    def label(self) -> str:
        return _HIGH_TRUST_LABELS[self]


_HIGH_TRUST_LABELS = {
    HighTrustDocument.PASSPORT: "Passeport",
    HighTrustDocument.NATIONAL_ID_CARD: "Carte nationale d'identité",
    HighTrustDocument.RESIDENCE_PERMIT: "Titre de séjour",
    HighTrustDocument.ECNI: "Carte nationale d'identité électronique",
    HighTrustDocument.IDN_LAPOSTE: "Identité Numérique La Poste",
    HighTrustDocument.APP_CARTE_VITALE: "Application carte Vitale",
    HighTrustDocument.LIVRET_FAMILLE: "Livret de famille ou acte de naissance avec carte Vitale (mineur)",
}


class LowTrustDocument(StrEnum):
    """Documents commonly presented at admission that can NOT validate an identity."""

    CARTE_VITALE = "CARTE_VITALE"
    DRIVING_LICENCE = "PERMIS_CONDUIRE"
    LIVRET_FAMILLE_ALONE = "LIVRET_FAMILLE_SEUL"
    OTHER = "AUTRE"

    @property
    def label(self) -> str:
        return _LOW_TRUST_LABELS[self]


_LOW_TRUST_LABELS = {
    LowTrustDocument.CARTE_VITALE: "Carte Vitale",
    LowTrustDocument.DRIVING_LICENCE: "Permis de conduire",
    LowTrustDocument.LIVRET_FAMILLE_ALONE: "Livret de famille ou acte de naissance seul",
    LowTrustDocument.OTHER: "Autre document",
}


def is_high_trust(code: str) -> bool:
    return code in HighTrustDocument.__members__.values()


def document_label(code: str) -> str:
    """French label of any known document code, or the code itself."""
    if code in HighTrustDocument.__members__.values():
        return HighTrustDocument(code).label
    if code in LowTrustDocument.__members__.values():
        return LowTrustDocument(code).label
    return code


@dataclass(frozen=True)
class IdentityState:
    """Status plus the criteria it derives from.

    ``insi_verified`` must agree with the status. ``document_checked`` is None when no document was checked,
    and may also be None for VALI/QUAL received from a trusted feed that does not say which document was used.
    """

    status: IdentityStatus
    insi_verified: bool
    document_checked: str | None = None

    def __post_init__(self) -> None:
        if self.insi_verified != self.status.insi_verified:
            raise IdentityError(
                "RNIV_STATE",
                f"État d'identité incohérent : le statut « {self.status.label} » "
                + ("exige" if self.status.insi_verified else "exclut")
                + " une vérification INSi",
                "status",
            )
        if self.document_checked is not None:
            if not self.status.document_checked:
                raise IdentityError(
                    "RNIV_STATE",
                    f"État d'identité incohérent : le statut « {self.status.label} » "
                    "ne peut pas porter de pièce d'identité contrôlée",
                    "status",
                )
            if not is_high_trust(self.document_checked):
                raise _low_trust_error(self.document_checked)


class IdentityEvent(StrEnum):
    INSI_MATCH = "INSI_MATCH"
    INSI_NO_MATCH = "INSI_NO_MATCH"
    DOCUMENT_CHECK = "DOCUMENT_CHECK"
    STRICT_TRAIT_CHANGE = "STRICT_TRAIT_CHANGE"


_P, _R, _V, _Q = IdentityStatus.PROV, IdentityStatus.RECUP, IdentityStatus.VALI, IdentityStatus.QUAL
_E = IdentityEvent

# Every (status, event) pair. A value of None means the event is refused in that status.
# No pair is refused by the RNIV matrix today: the table keeps the slot so that a future rule (e.g. a
# local policy forbidding manual trait edits on QUAL) is a one-line change with an explicit reason.
TRANSITIONS: Mapping[tuple[IdentityStatus, IdentityEvent], IdentityStatus | None] = MappingProxyType(
    {
        (_P, _E.INSI_MATCH): _R,
        (_R, _E.INSI_MATCH): _R,
        (_V, _E.INSI_MATCH): _Q,
        (_Q, _E.INSI_MATCH): _Q,
        (_P, _E.INSI_NO_MATCH): _P,
        (_R, _E.INSI_NO_MATCH): _P,
        (_V, _E.INSI_NO_MATCH): _V,
        (_Q, _E.INSI_NO_MATCH): _V,
        # Re-checking a document on VALI/QUAL is legitimate (renewed ID card); it only refreshes the document.
        (_P, _E.DOCUMENT_CHECK): _V,
        (_R, _E.DOCUMENT_CHECK): _Q,
        (_V, _E.DOCUMENT_CHECK): _V,
        (_Q, _E.DOCUMENT_CHECK): _Q,
        # A strict trait edited locally invalidates both criteria: INSi matched and the document showed
        # the OLD traits. Traits applied FROM an INSi answer go through INSI_MATCH instead.
        (_P, _E.STRICT_TRAIT_CHANGE): _P,
        (_R, _E.STRICT_TRAIT_CHANGE): _P,
        (_V, _E.STRICT_TRAIT_CHANGE): _P,
        (_Q, _E.STRICT_TRAIT_CHANGE): _P,
    }
)
_REFUSAL_REASONS: Mapping[tuple[IdentityStatus, IdentityEvent], str] = MappingProxyType({})


def _low_trust_error(document: str) -> IdentityError:
    return IdentityError(
        "RNIV_DOCUMENT",
        f"Le document « {document_label(document)} » n'est pas un dispositif d'identité à haut niveau de "
        "confiance : il ne permet pas de valider l'identité",
        "document",
    )


def apply(state: IdentityState, event: IdentityEvent | str, document: str | None = None) -> IdentityState:
    """Return the state after ``event``; ``document`` is required for DOCUMENT_CHECK only."""
    try:
        ev = IdentityEvent(event)
    except ValueError:
        raise IdentityError(
            "RNIV_TRANSITION", f"Événement d'identitovigilance inconnu : « {event} »", "event"
        ) from None
    key = (state.status, ev)
    target = TRANSITIONS[key]
    if target is None:
        reason = _REFUSAL_REASONS.get(key, "transition non autorisée")
        raise IdentityError(
            "RNIV_TRANSITION",
            f"Transition refusée depuis « {state.status.label} » ({ev.value}) : {reason}",
            "status",
        )
    if ev is IdentityEvent.DOCUMENT_CHECK:
        if document is None or not document.strip():
            raise IdentityError(
                "RNIV_DOCUMENT", "Contrôle de pièce d'identité sans type de document", "document"
            )
        document = document.strip().upper()
        if not is_high_trust(document):
            raise _low_trust_error(document)
        new_document: str | None = document
    elif target.document_checked:
        new_document = state.document_checked
    else:
        new_document = None
    return replace(state, status=target, insi_verified=target.insi_verified, document_checked=new_document)


def initial_state() -> IdentityState:
    return IdentityState(IdentityStatus.PROV, insi_verified=False, document_checked=None)


def after_insi_match(state: IdentityState) -> IdentityState:
    """INSi returned an INS whose traits match the person (retrieval or verification)."""
    return apply(state, IdentityEvent.INSI_MATCH)


def after_insi_no_match(state: IdentityState) -> IdentityState:
    """INSi answered 01 (not found) or with traits that no longer match: the INS is not verified any more."""
    return apply(state, IdentityEvent.INSI_NO_MATCH)


def after_document_check(state: IdentityState, document: str) -> IdentityState:
    return apply(state, IdentityEvent.DOCUMENT_CHECK, document)


def after_strict_trait_change(state: IdentityState) -> IdentityState:
    """A strict trait was edited by the hospital: back to PROV, document check and INSi call to redo."""
    return apply(state, IdentityEvent.STRICT_TRAIT_CHANGE)


def from_declared(
    status: IdentityStatus | str, insi_verified: bool | None = None, document: str | None = None
) -> IdentityState:
    """State for a status received from a trusted feed (e.g. HL7 PID-32).

    Missing criteria are inferred from the status; explicit criteria that contradict it are refused
    rather than silently corrected, because that would hide an upstream identity-vigilance error.
    """
    try:
        declared = IdentityStatus(status.strip().upper() if isinstance(status, str) else status)
    except ValueError:
        raise IdentityError(
            "RNIV_STATE",
            f"Statut d'identité « {status} » inconnu (PROV, RECUP, VALI ou QUAL attendu)",
            "status",
        ) from None
    if insi_verified is not None and insi_verified != declared.insi_verified:
        raise IdentityError(
            "RNIV_STATE",
            f"Statut déclaré « {declared.label} » incohérent : vérification INSi "
            + ("absente" if declared.insi_verified else "indiquée"),
            "status",
        )
    doc = document.strip().upper() if document and document.strip() else None
    return IdentityState(declared, insi_verified=declared.insi_verified, document_checked=doc)


def may_transmit_ins(status: IdentityStatus | str) -> bool:
    """Only a qualified identity may carry matricule INS + OID in documents and messages."""
    return status == IdentityStatus.QUAL
