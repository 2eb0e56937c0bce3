"""Every dependency a route may declare, in one place: the runtime, the acting user, and ``allow(action)``.

Each route carries exactly one policy: ``allow(Action.X)`` (a session or a token whose roles grant X, strong
when X requires it, CSRF-checked when it came from a cookie) or ``public(why)``. ``tests/web/test_policies.py``
walks the application's routes and fails on one without a policy. The decision on *which patient* is taken
inside the route, in its transaction, by ``ensure_patient`` and ``patient_filter``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request
from sqlalchemy import ColumnElement, and_, false, or_, select, true
from sqlalchemy.orm import Session

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.errors import OpenSegurError
from opensegur.flows.dmp_consult import DmpConsultPort
from opensegur.flows.drimbox_consumer import DrimboxConsumer
from opensegur.flows.drimbox_serving import DrimboxServing
from opensegur.security import access, accounts, audit, sessions, tokens
from opensegur.security.actor import Actor
from opensegur.security.defaults import default_matrix
from opensegur.security.matrix import STRONG_ACTIONS, Action, Matrix
from opensegur.security.psc_delegation import PscDelegation
from opensegur.store.models import Document, Patient, Structure

if TYPE_CHECKING:
    from opensegur.config import Settings
    from opensegur.hospital.model import HospitalConfig
    from opensegur.store.db import Database

SESSION_COOKIE = "opensegur_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A session after the password of an account with a second factor: it opens nothing until the code is given.
PENDING_METHOD = "password-pending"


class Workers(Protocol):
    def wake(self) -> None: ...


class WebRuntime(Protocol):
    """What the web layer needs from the running platform (``server.Runtime`` and the tests' offline ones)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def workers(self) -> Workers: ...


class AccessRefused(OpenSegurError):
    """No actor (401), or one the matrix refuses (403). Answered by the app in the caller's protocol: a login
    redirect for a page, JSON for the API, an OperationOutcome for FHIR."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Policy:
    """The declared policy of a route: the action it needs, or why it is public."""

    action: Action | None
    public_reason: str | None = None


def get_runtime(request: Request) -> WebRuntime:
    return request.app.state.runtime


Rt = Annotated[WebRuntime, Depends(get_runtime)]


def get_dmp(request: Request) -> DmpConsultPort | None:
    """The DMP as the consultation pages reach it; None when the platform has no DMP configured."""
    return getattr(request.app.state.runtime, "dmp_consult", None)


Dmp = Annotated[DmpConsultPort | None, Depends(get_dmp)]


def get_directory(request: Request) -> AnnuaireClient | None:
    """The Annuaire Santé client; None when the platform has none configured."""
    return getattr(request.app.state.runtime, "annuaire", None)


Directory = Annotated[AnnuaireClient | None, Depends(get_directory)]


def get_drimbox(request: Request) -> DrimboxServing | None:
    """This DRIMbox's serving side (PACS and PSC introspection); None when no PACS is configured."""
    return getattr(request.app.state.runtime, "drimbox", None)


Drimbox = Annotated[DrimboxServing | None, Depends(get_drimbox)]


def get_client_certificate(request: Request) -> str | None:
    """The subject (RFC 4514) of the certificate the client presented in mutual TLS, as the HTTP listener tells it
    (ASGI TLS extension); None over plain HTTP."""
    tls = request.scope.get("extensions", {}).get("tls") or {}
    name = tls.get("client_cert_name")
    return name if isinstance(name, str) else None


ClientCertificate = Annotated[str | None, Depends(get_client_certificate)]


def get_consumer(request: Request) -> DrimboxConsumer | None:
    """This DRIMbox's consumer (exams of other hospitals); None when no DMP is configured."""
    return getattr(request.app.state.runtime, "drimbox_consumer", None)


Consumer = Annotated[DrimboxConsumer | None, Depends(get_consumer)]


def psc_delegation(request: Request) -> PscDelegation | None:
    """The PSC tokens of the sessions opened through Pro Santé Connect; None on a runtime without them."""
    return getattr(request.app.state.runtime, "psc_delegation", None)


Delegation = Annotated[PscDelegation | None, Depends(psc_delegation)]


def matrix_of(runtime: WebRuntime) -> Matrix:
    hospital: HospitalConfig | None = getattr(runtime, "hospital", None)
    if hospital is not None:
        return hospital.matrix
    return default_matrix()


def grants(runtime: WebRuntime, actor: Actor, action: Action) -> bool:
    """Whether the actor's roles hold ``action`` somewhere: pages offer only the actions the user may do."""
    return matrix_of(runtime).grants(actor.assignments, action)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _resolve(request: Request, runtime: WebRuntime) -> Actor | None:
    """The acting user from the bearer token or the session cookie, never from anything the caller names. A read
    transaction decides; the once-a-minute record of use is a separate short write."""
    now = datetime.now(UTC)
    address = client_address(request)
    authorization = request.headers.get("authorization", "")
    db = runtime.db
    if authorization:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        with db.read_connection() as conn:
            token = tokens.lookup_token(conn, secret.strip(), now)
        if token is None:
            return None
        if tokens.use_due(token, now):
            with db.session() as s:
                tokens.mark_used(s, token.id, now)
        return tokens.actor_for_token(token, address)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with db.read_connection() as conn:
        row = sessions.lookup_row(conn, cookie, now, idle=timedelta(seconds=runtime.settings.session_idle_s))
    if row is None or row.method == PENDING_METHOD:
        return None
    if sessions.touch_due(row, now):
        with db.session() as s:
            sessions.touch(s, row.session_id, now)
    return accounts.actor_for_session_row(row, address)


async def current_actor(request: Request, runtime: Rt) -> Actor | None:
    """Resolved once per request (several dependencies ask)."""
    if "actor" not in request.state._state:
        request.state.actor = await asyncio.to_thread(_resolve, request, runtime)
    actor: Actor | None = request.state.actor
    return actor


MaybeActor = Annotated[Actor | None, Depends(current_actor)]


async def check_csrf(request: Request, actor: Actor) -> None:
    """Cookies ride along with a cross-site form post; the token of the session does not. Bearer tokens are
    never sent by a browser on its own, so they need none."""
    if request.method in SAFE_METHODS or actor.session_id is None:
        return
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        given = str((await request.form()).get(CSRF_FIELD, ""))
    if not given or not actor.csrf_token or not secrets.compare_digest(given, actor.csrf_token):
        raise AccessRefused(403, "Jeton anti-falsification (CSRF) absent ou invalide : rechargez la page")


def _record_refusal(runtime: WebRuntime, actor: Actor, request: Request, why: str) -> None:
    with runtime.db.session() as s:
        audit.record(
            s,
            actor,
            "access_denied",
            None,
            "refus",
            {"path": request.url.path, "method": request.method, "why": why},
        )


def allow(action: Action) -> Callable[..., Awaitable[Actor]]:
    """Route guard: the actor, if a session or token is there, its roles grant ``action`` somewhere and its
    session is strong when ``action`` needs it; else 401/403 with a French message (403s are audited)."""

    async def guard(request: Request, runtime: Rt, actor: MaybeActor) -> Actor:
        if actor is None:
            raise AccessRefused(401, "Connexion requise")
        if not matrix_of(runtime).grants(actor.assignments, action):
            why = f"Votre rôle ne permet pas : {action.sentence}"
            await asyncio.to_thread(_record_refusal, runtime, actor, request, why)
            raise AccessRefused(403, why)
        if action in STRONG_ACTIONS and not actor.strong:
            raise AccessRefused(
                403,
                f"Authentification forte requise pour : {action.sentence} "
                "(Pro Santé Connect, ou second facteur)",
            )
        await check_csrf(request, actor)
        return actor

    guard.policy = Policy(action)  # type: ignore[attr-defined]
    return guard


def public(reason: str) -> Callable[[], None]:
    """Declares a route open to anyone, and why (health probe, login page, assets)."""

    def open_route() -> None:
        return None

    open_route.policy = Policy(None, reason)  # type: ignore[attr-defined]
    return open_route


def policy_of(dependency: Any) -> Policy | None:
    policy = getattr(dependency, "policy", None)
    return policy if isinstance(policy, Policy) else None


# ---- which patients ----------------------------------------------------------------------------------------


def patient_filter(runtime: WebRuntime, actor: Actor, action: Action) -> ColumnElement[bool]:
    """WHERE clause on ``Patient`` keeping the patients this actor may see for ``action``."""
    return access.patient_scope_filter(matrix_of(runtime).scopes(actor.assignments, action))


def structure_filter(runtime: WebRuntime, actor: Actor, action: Action, column: Any) -> ColumnElement[bool]:
    """WHERE clause on a ``structure_id`` column for rows with no patient yet (a document waiting for its
    identity, a mail to triage): only GHT- or site-wide assignments see them, never a unit's care team."""
    scopes = matrix_of(runtime).scopes(actor.assignments, action)
    if any(sc.kind == "ght" for sc in scopes):
        return true()
    sites = [sc.site for sc in scopes if sc.kind == "site"]
    if not sites:
        return false()
    return column.in_(select(Structure.id).where(Structure.finess.in_(sites)))


def document_filter(runtime: WebRuntime, actor: Actor, action: Action) -> ColumnElement[bool]:
    return or_(
        Document.patient_id.in_(select(Patient.id).where(patient_filter(runtime, actor, action))),
        and_(Document.patient_id.is_(None), structure_filter(runtime, actor, action, Document.structure_id)),
    )


def ensure_structure(
    s: Session, runtime: WebRuntime, actor: Actor, action: Action, structure_id: int
) -> None:
    allowed = s.scalar(
        select(Structure.id).where(
            Structure.id == structure_id, structure_filter(runtime, actor, action, Structure.id)
        )
    )
    if allowed is None:
        raise AccessRefused(403, "Hors de votre périmètre : réservé aux équipes du site ou du GHT")


def ensure_document(s: Session, runtime: WebRuntime, actor: Actor, action: Action, document: Any) -> None:
    """A document's patient in scope, or, before its identity is known, its site in a site- or GHT-wide scope."""
    if document.patient_id is not None:
        ensure_patient(s, runtime, actor, action, document.patient_id)
    else:
        ensure_structure(s, runtime, actor, action, document.structure_id)


def ensure_patient(
    s: Session, runtime: WebRuntime, actor: Actor, action: Action, patient_id: int | None, path: str = ""
) -> None:
    """Refuses (403, audited in the same transaction as nothing else) a patient outside the actor's scopes,
    unless the actor broke the glass for this patient recently."""
    if patient_id is None or s.get(Patient, patient_id) is None:
        return  # nothing to protect: the route answers its own 404
    scopes = matrix_of(runtime).scopes(actor.assignments, action)
    if access.patient_allowed(s, scopes, patient_id) or access.glass_broken(
        s, actor, patient_id, datetime.now(UTC)
    ):
        return
    raise PatientRefused(patient_id, action, path)


class PatientRefused(AccessRefused):
    """A patient outside the actor's scope: audited by the exception handler in its own transaction (the
    route's transaction is rolled back with the refusal)."""

    def __init__(self, patient_id: int, action: Action, path: str) -> None:
        super().__init__(
            403,
            "Ce patient n'est pas dans votre périmètre (pas de prise en charge en cours dans vos unités). "
            "En cas d'urgence, le bris de glace est tracé.",
        )
        self.patient_id = patient_id
        self.action = action
        self.path = path
