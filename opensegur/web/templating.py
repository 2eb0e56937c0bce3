"""The pages' Jinja2 environment, set up once: globals, filters and the CSRF field of every form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from opensegur.identity.rniv import IdentityStatus, document_label
from opensegur.security.matrix import STRONG_ACTIONS
from opensegur.web.deps import matrix_of
from opensegur.web.documents import author_fr, dtm_fr, heure_fr
from opensegur.web.flash import FLASH_COOKIE, take_message

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))

# What the audit trail's actions mean, for the pages that show who did what.
AUDIT_LABELS = {
    "read_identity": "Consultation de l'identité",
    "list_identities": "Liste des identités",
    "read_document": "Lecture d'un document",
    "read_document_status": "Suivi d'un document",
    "list_documents": "Liste des documents",
    "read_lab_results": "Résultats de biologie",
    "read_mail": "Lecture d'un courriel",
    "break_glass": "Bris de glace",
    "access_denied": "Accès refusé",
    "login": "Connexion",
    "logout": "Déconnexion",
}
ALERT_LABELS = {
    "duplicate": "Doublon probable",
    "trait_conflict": "Conflit de traits",
    "status_conflict": "Statut divergent",
    "insi_unavailable": "INSi injoignable",
    "ins_conflict": "INS et traits discordants",
}


def _csrf_field(context: Any) -> Markup:
    """The hidden input every POST form carries: the session's anti-forgery token."""
    request: Request | None = context.get("request")
    actor = getattr(request.state, "actor", None) if request is not None else None
    token = getattr(actor, "csrf_token", None) or ""
    return Markup(f'<input type="hidden" name="csrf_token" value="{escape(token)}">')


def _page_globals() -> None:
    env = TEMPLATES.env
    env.globals.update(
        ALERT_LABELS=ALERT_LABELS,
        AUDIT_LABELS=AUDIT_LABELS,
        strong_actions=STRONG_ACTIONS,
        Status=IdentityStatus,
        document_label=document_label,
        csrf_field=jinja2.pass_context(_csrf_field),
    )
    env.filters["heure_fr"] = heure_fr
    env.filters["dtm_fr"] = dtm_fr
    env.filters["author_fr"] = author_fr


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A page, with the acting user in its context (the header shows who is logged in) and the one-time message
    the previous form post left (never text from the query string)."""
    actor = context.setdefault("actor", getattr(request.state, "actor", None))
    # The menu offers only what the user may do.
    context["granted"] = (
        {a.value for a in matrix_of(request.app.state.runtime).actions(actor.assignments)} if actor else set()
    )
    context["msg"] = take_message(request)
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)
    if context["msg"]:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


_page_globals()
