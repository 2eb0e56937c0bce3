"""Flow: the author of a document, or their structure, masks it, changes its visibility or deletes it in the DMP
(TD3.3a-c, ITI-57 in the professional's name)."""

from __future__ import annotations

from dataclasses import dataclass

from opensegur.content import jdv
from opensegur.documents.metadata import DocumentMetadata
from opensegur.flows.dmp_consult import ConsultationRefused, Consulter, DmpConsultPort, is_author


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
