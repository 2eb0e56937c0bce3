"""Flow: the DMP tab's search and document viewer, with the consultation rules of the DMP (PDSM4DMP): the first
search on a patient is limited to two years of approved documents, and the page says so and lets the user widen it;
a document is shown only if it is what the registry lists."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from opensegur.content import jdv
from opensegur.documents.metadata import DocumentMetadata
from opensegur.errors import OpenSegurError
from opensegur.flows.dmp_author_actions import AUTHOR_ACTIONS, offered_actions
from opensegur.flows.dmp_consult import EMERGENCY_MODES, Consulter, DmpConsultPort, is_author
from opensegur.flows.dmp_listing import ORIGIN_CONSULTATION, KeptList, Refreshed, refresh
from opensegur.identity.directory import fold
from opensegur.transactions.td02 import Td02Response
from opensegur.transactions.xds import SIGNATURE_CLASS, RetrievedDocument

FIRST_SEARCH_YEARS = 2
DMP_STATUS_LABELS = {
    "OUVERT": "DMP ouvert",
    "FERME": "DMP fermé",
    "INEXISTANT": "Pas de DMP pour ce patient",
}
AUTHORISATION_LABELS = {
    "AUTORISE": "Vous êtes autorisé(e) à consulter ce DMP",
    "NON_AUTORISE": "Aucune autorisation d'accès de votre structure n'est enregistrée dans ce DMP",
    "INTERDIT": "Le patient vous a bloqué l'accès à son DMP",
}


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
    kept: KeptList | None = None  # the kept list this view brought up to date, instead of searching again
    refreshed: Refreshed | None = None  # what changed since the kept list
    to_keep: KeptList | None = None  # the list to keep for this patient and professional

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


def _first_search_bound(now: datetime) -> datetime:
    return now - timedelta(days=365 * FIRST_SEARCH_YEARS)


async def open_dmp(
    port: DmpConsultPort,
    consulter: Consulter,
    cx: str,
    *,
    search: DmpSearch = DmpSearch(),
    last_visit: datetime | None = None,
    kept: KeptList | None = None,
    now: datetime | None = None,
) -> DmpView:
    """TD0.2, then, for an open DMP the professional may read, the documents: approved, on acts of the last two
    years unless the professional widened the search or gave dates, with the replaced versions when asked.

    The default list of a consultation in normal mode is kept (``view.to_keep``); given back as ``kept`` while
    fresh, it is brought up to date by what changed since (``dmp_listing.refresh``) instead of searched again.
    The port's errors reach the caller: a page shows the DMP's answer, never half a list."""
    now = now or datetime.now(UTC)
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
    # Only the default list of a normal consultation is kept: an emergency mode may show what normal hides.
    keeps_list = not (search.whole or search.narrowed or search.versions) and emergency is None
    if search.act_from:
        view.since = datetime.combine(search.act_from, time.min, UTC)
    elif not (search.whole or search.narrowed):
        view.since, view.first_bound = _first_search_bound(now), True
    if keeps_list and kept is not None and kept.fresh(now):
        assert view.since is not None
        refreshed = await refresh(port, consulter, cx, kept, view.since)
        docs, view.kept, view.refreshed = refreshed.documents, kept, refreshed
        searched_at = kept.searched_at
    else:
        until = datetime.combine(search.act_to, time.max, UTC) if search.act_to else None
        # The web layer accepts only the JDV_J07 codes.
        types = [jdv.load_value_set(jdv.JDV_TYPE_CODE).codes[search.type_code]] if search.type_code else None
        docs = await port.find_documents(
            consulter, cx, since=view.since, until=until, type_codes=types, with_deprecated=search.versions
        )
        # A submission set's XAdES signature is an entry of its own in the DMP: technical, not for a clinician.
        docs = [d for d in docs if d.class_code.code != SIGNATURE_CLASS.code]
        searched_at = now
    if keeps_list and view.since is not None:
        view.to_keep = KeptList(now, searched_at, view.since, ORIGIN_CONSULTATION, tuple(docs))
    readable = [d for d in docs if search.keeps(d)]
    view.documents = sorted(readable, key=lambda d: d.act_time or "", reverse=True)  # newest act first
    view.searched = True
    return view


class AlteredDocument(OpenSegurError):
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
