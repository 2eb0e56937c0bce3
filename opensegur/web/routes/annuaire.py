"""HTTP edge of the national health directory: a JSON search API and the French page where a clinician finds a
correspondent and picks their MSSanté mailbox.

The directory itself is reached through :class:`~opensegur.connectors.annuaire_client.AnnuaireClient`; this
module maps its errors to HTTP statuses (API) or to a French message on the page.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from opensegur.connectors.annuaire_client import (
    AnnuaireClient,
    AnnuaireError,
    AnnuaireQueryError,
    AnnuaireUnavailable,
)
from opensegur.identity.directory import DirectoryEntry, DirectoryOrganization, Mailbox
from opensegur.security.actor import Actor
from opensegur.security.matrix import Action
from opensegur.web.deps import Rt, WebRuntime, allow
from opensegur.web.safety import local_redirect_target
from opensegur.web.templating import render

router = APIRouter()

NOT_CONFIGURED = "L'Annuaire Santé n'est pas configuré sur cette plateforme (adresse et clé d'API)"


Reader = Annotated[Actor, Depends(allow(Action.DIRECTORY_READ))]


class MailboxOut(BaseModel):
    address: str = Field(description="adresse de la boîte aux lettres MSSanté")
    type: str = Field(description="TRE_R257-TypeBAL : PER, CAB, ORG ou APP")
    type_label: str = Field(description="personnelle, cabinet, organisationnelle ou applicative")
    owner_name: str
    description: str | None = None
    service: str | None = None


class OrganizationOut(BaseModel):
    id: str
    name: str
    finess: str | None = None
    city: str | None = None
    postal_code: str | None = None
    mailboxes: list[MailboxOut]


class EntryOut(BaseModel):
    id: str = Field(description="identifiant technique du Practitioner dans l'annuaire")
    rpps: str | None
    family_name: str
    given_name: str
    display_name: str
    profession: str | None = None
    specialty: str | None = None
    organizations: list[OrganizationOut]
    mailboxes: list[MailboxOut] = Field(
        description="boîtes personnelles puis celles des structures d'exercice"
    )


class SearchOut(BaseModel):
    total: int
    items: list[EntryOut]


def _mailbox(box: Mailbox) -> MailboxOut:
    return MailboxOut(
        address=box.address,
        type=box.type.value,
        type_label=box.type_label,
        owner_name=box.owner_name,
        description=box.description,
        service=box.service,
    )


def _org(org: DirectoryOrganization) -> OrganizationOut:
    return OrganizationOut(
        id=org.id,
        name=org.name,
        finess=org.finess,
        city=org.city,
        postal_code=org.postal_code,
        mailboxes=[_mailbox(m) for m in org.mailboxes],
    )


def entry_out(entry: DirectoryEntry) -> EntryOut:
    p = entry.practitioner
    return EntryOut(
        id=p.id,
        rpps=p.rpps,
        family_name=p.family_name,
        given_name=p.given_name,
        display_name=p.display_name,
        profession=p.profession,
        specialty=p.specialty,
        organizations=[_org(o) for o in entry.organizations],
        mailboxes=[_mailbox(m) for m in entry.mailboxes],
    )


async def search(rt: WebRuntime, name: str, rpps: str, city: str, limit: int) -> list[DirectoryEntry]:
    client: AnnuaireClient | None = getattr(rt, "annuaire", None)
    if client is None:
        raise AnnuaireUnavailable(NOT_CONFIGURED)
    return await client.search_practitioners(
        name=name or None, rpps=rpps or None, city=city or None, limit=limit
    )


@router.get(
    "/api/v1/annuaire/practitioners",
    tags=["directory"],
    response_model=SearchOut,
    responses={
        400: {"description": "aucun critère, ou RPPS mal formé"},
        502: {"description": "l'annuaire a refusé la requête ou répondu une réponse inutilisable"},
        503: {"description": "annuaire injoignable ou non configuré"},
    },
)
async def api_practitioners(
    actor: Reader,
    rt: Rt,
    name: str = Query("", max_length=100, description="nom d'exercice, prénom ou les deux"),
    rpps: str = Query("", max_length=20, description="numéro RPPS (11 chiffres)"),
    city: str = Query("", max_length=100, description="commune d'une structure d'exercice"),
    limit: int = Query(20, ge=1, le=100),
) -> SearchOut:
    """Practitioners of the national directory with their practice places and MSSanté mailboxes."""
    try:
        entries = await search(rt, name.strip(), rpps.strip(), city.strip(), limit)
    except AnnuaireQueryError as exc:
        raise HTTPException(400, exc.message) from exc
    except AnnuaireUnavailable as exc:
        raise HTTPException(503, exc.message) from exc
    except AnnuaireError as exc:
        raise HTTPException(502, exc.message) from exc
    return SearchOut(total=len(entries), items=[entry_out(e) for e in entries])


@router.get("/annuaire", response_class=HTMLResponse, include_in_schema=False)
async def page(
    request: Request,
    actor: Reader,
    rt: Rt,
    nom: str = Query("", max_length=100),
    rpps: str = Query("", max_length=20),
    ville: str = Query("", max_length=100),
    retour: str = Query("", max_length=300),
) -> HTMLResponse:
    ctx: dict[str, Any] = {
        "nom": nom,
        "rpps": rpps,
        "ville": ville,
        "retour": local_redirect_target(retour, "") or None,
        "entries": None,
        "erreur": None,
        "indisponible": False,
    }
    if nom.strip() or rpps.strip() or ville.strip():
        try:
            ctx["entries"] = [
                entry_out(e) for e in await search(rt, nom.strip(), rpps.strip(), ville.strip(), 50)
            ]
        except AnnuaireQueryError as exc:
            ctx["erreur"] = exc.message
        except AnnuaireUnavailable as exc:
            ctx["erreur"], ctx["indisponible"] = exc.message, True
        except AnnuaireError as exc:
            ctx["erreur"] = exc.message
    ctx["request"] = request
    return render(request, "annuaire.html", ctx)
