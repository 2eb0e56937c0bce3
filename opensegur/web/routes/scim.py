"""SCIM 2.0 (RFC 7643/7644) for the HR feed and the hospital's identity provider: Users and Groups.

The subset: discovery (``ServiceProviderConfig``, ``ResourceTypes``, ``Schemas``); Users — list with the filter
``userName eq "…"`` (or ``externalId``), create, read, replace, patch, delete; Groups — list, read, and patch of
their members. Every change goes through ``security.provisioning``, as the CSV import does.

Mapping:

- ``userName`` is the login (the HR matricule); ``externalId``, when given, must be the same (no column of its
  own); ``id`` is the account's number. Only accounts the HR feed manages (source ``hr`` or ``scim``) are seen.
- A Group is a role of the configuration (``roles.toml``, not created through SCIM); a member holds the role in
  the user's scope, ``perimetre`` of the extension ``urn:opensegur:params:scim:schemas:extension:2.0:User``
  (``ght``, ``site:<FINESS>``, ``unit:<FINESS>/<UF>``), which also carries the ``rpps``. A unit move is a new
  ``perimetre``. The core ``roles`` attribute gives the roles at creation.
- ``active: false`` (PATCH or PUT) and DELETE are a departure: sessions and tokens revoked at once. The account
  is kept (the audit trail names it), so after a DELETE it still reads, inactive, instead of 404.

Access: an administrator's system token (bearer ``osg_…``, role with ``admin``), as SCIM clients use; a person
needs a strong session like any administration. Errors are SCIM error messages with ``scimType``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.errors import OpenSegurError
from opensegur.hospital.apply import applied_config
from opensegur.hospital.model import HospitalConfig
from opensegur.security.actor import Actor
from opensegur.security.clock import as_utc
from opensegur.security.errors import SecurityError
from opensegur.security.matrix import Action, Assignment, Scope
from opensegur.security.provisioning import (
    HR_SOURCES,
    HrRecord,
    ProvisioningError,
    apply_records,
    check_record,
    hr_today,
    rpps_problems,
    rpps_to_check,
)
from opensegur.store.models import Account
from opensegur.web.deps import AccessRefused, MaybeActor, Policy, Rt, WebRuntime, allow, matrix_of

SCIM_JSON = "application/scim+json"
BASE = "/scim/v2"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
EXTENSION = "urn:opensegur:params:scim:schemas:extension:2.0:User"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
MAX_RESULTS = 200
Filter = Annotated[str | None, Query(alias="filter", max_length=300)]
StartIndex = Annotated[int, Query(alias="startIndex", ge=-(2**31), le=2**31)]
Count = Annotated[int, Query(alias="count", ge=-(2**31), le=2**31)]
_MAX_BODY = 64 * 1024  # one user or one membership change; a larger body is no SCIM request of ours


class ScimError(OpenSegurError):
    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


def scim_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=SCIM_JSON, headers=headers)


def error_response(status: int, detail: str, scim_type: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"schemas": [ERROR], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return scim_response(body, status, headers)


class ScimRoute(APIRoute):
    """Answers every refusal of these routes as a SCIM error, the guard's included: a SCIM client reads
    ``detail`` and ``scimType``, never a login page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def scim_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ScimError as exc:
                return error_response(exc.status, exc.detail, exc.scim_type)
            except AccessRefused as exc:
                return error_response(exc.status, exc.message)
            except RequestValidationError:
                return error_response(400, "Paramètre de requête invalide", "invalidValue")

        return scim_handler


router = APIRouter(prefix=BASE, route_class=ScimRoute, include_in_schema=False)


def _provisioner() -> Callable[..., Awaitable[Actor]]:
    """``allow(Action.ADMIN)``, where an administrator's system token suffices: a SCIM client has no session to
    make strong, and a 256-bit random bearer secret is no password to guess."""
    admin = allow(Action.ADMIN)

    async def guard(request: Request, runtime: Rt, actor: MaybeActor) -> Actor:
        if (
            actor is not None
            and actor.kind == "system"
            and matrix_of(runtime).grants(actor.assignments, Action.ADMIN)
        ):
            return actor
        return await admin(request, runtime, actor)

    guard.policy = Policy(Action.ADMIN)  # type: ignore[attr-defined]
    return guard


Provisioner = Annotated[Actor, Depends(_provisioner())]


# ---- representation -------------------------------------------------------------------------------------------


def _location(rt: WebRuntime, path: str) -> str:
    # From the configured base URL, never from the Host header.
    return (rt.settings.public_base_url or "").rstrip("/") + f"{BASE}/{path}"


def _assignments(account: Account) -> list[Assignment]:
    return [Assignment.from_json(a) for a in account.assignments]


def _perimetre(account: Account) -> str | None:
    scopes = {str(a.scope) for a in _assignments(account)}
    return scopes.pop() if len(scopes) == 1 else None


def user_resource(rt: WebRuntime, account: Account, config: HospitalConfig) -> dict[str, Any]:
    roles = list(dict.fromkeys(a.role for a in _assignments(account)))
    meta = {
        "resourceType": "User",
        "created": as_utc(account.created_at).isoformat(),
        "lastModified": as_utc(account.updated_at).isoformat(),
        "location": _location(rt, f"Users/{account.id}"),
    }
    return {
        "schemas": [USER, EXTENSION],
        "id": str(account.id),
        "externalId": account.login,
        "userName": account.login,
        "displayName": account.display_name,
        "name": {"formatted": account.display_name},
        "active": account.active,
        "roles": [{"value": r} for r in roles],
        "groups": [
            {
                "value": r,
                "display": config.roles[r].label if r in config.roles else r,
                "$ref": _location(rt, f"Groups/{r}"),
            }
            for r in roles
        ],
        EXTENSION: {
            "rpps": account.rpps,
            "perimetre": _perimetre(account),
            "affectations": account.assignments,
        },
        "meta": meta,
    }


def group_resource(
    rt: WebRuntime, role: str, config: HospitalConfig, members: list[Account]
) -> dict[str, Any]:
    return {
        "schemas": [GROUP],
        "id": role,
        "displayName": config.roles[role].label,
        "members": [
            {"value": str(a.id), "display": a.login, "$ref": _location(rt, f"Users/{a.id}")} for a in members
        ],
        "meta": {"resourceType": "Group", "location": _location(rt, f"Groups/{role}")},
    }


def _list(resources: list[dict[str, Any]], total: int, start: int) -> dict[str, Any]:
    return {
        "schemas": [LIST],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


# ---- reading requests -----------------------------------------------------------------------------------------


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise ScimError(413, f"Requête trop volumineuse : {_MAX_BODY} octets au plus", "tooMany")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ScimError(400, "Corps JSON illisible", "invalidSyntax") from None
    if not isinstance(body, dict):
        raise ScimError(400, "Un objet JSON est attendu", "invalidSyntax")
    return body


def _filter_value(text: str, attributes: tuple[str, ...]) -> tuple[str, str]:
    """``<attribute> eq "<value>"`` for one of ``attributes``; the only filter this server offers."""
    attribute, _, rest = text.strip().partition(" ")
    operator, _, value = rest.strip().partition(" ")
    value = value.strip()
    matched = next((a for a in attributes if a.casefold() == attribute.casefold()), None)
    if (
        matched is None
        or operator.casefold() != "eq"
        or len(value) < 2
        or not (value.startswith('"') and value.endswith('"'))
    ):
        allowed = " ou ".join(attributes)
        raise ScimError(400, f'Filtre non pris en charge : seul {allowed} eq "…" l\'est', "invalidFilter")
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ScimError(400, "Valeur du filtre mal formée", "invalidFilter") from None
    return matched, str(parsed)


def _page(start_index: int, count: int) -> tuple[int, int]:
    return max(start_index, 1), max(0, min(count, MAX_RESULTS))


def _account_id(user_id: str) -> int:
    if not user_id.isascii() or not user_id.isdigit() or len(user_id) > 18:
        raise ScimError(404, "Utilisateur introuvable")
    return int(user_id)


def _config(rt: WebRuntime) -> HospitalConfig:
    config: HospitalConfig | None = getattr(rt, "hospital", None) or applied_config(rt.db)
    if config is None:
        raise ScimError(503, "Aucune configuration d'établissement appliquée : rôles et unités inconnus")
    return config


def _managed(s: Session, account_id: int) -> Account:
    account = s.get(Account, account_id)
    if account is None or account.source not in HR_SOURCES:
        raise ScimError(404, "Utilisateur introuvable")
    return account


def _truth(value: Any) -> bool:
    # Some clients (Entra ID) send booleans as the strings "True" and "False".
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.casefold() in ("true", "false"):
        return value.casefold() == "true"
    raise ScimError(400, "« active » doit valoir true ou false", "invalidValue")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ScimError(400, f"« {what} » doit être une chaîne", "invalidValue")
    return " ".join(value.split())


def _state_of(account: Account) -> dict[str, Any]:
    """What a PATCH changes: the user as the SCIM client sees it."""
    return {
        "userName": account.login,
        "displayName": account.display_name,
        "active": account.active,
        "rpps": account.rpps,
        "perimetre": _perimetre(account),
        "roles": list(dict.fromkeys(a.role for a in _assignments(account))),
        "assignments": _assignments(account),
    }


def _state_from_body(body: dict[str, Any]) -> dict[str, Any]:
    """What a POST or PUT says about the user."""
    extension = body.get(EXTENSION) or {}
    if not isinstance(extension, dict):
        raise ScimError(400, f"« {EXTENSION} » doit être un objet", "invalidValue")
    name = body.get("name") or {}
    display = body.get("displayName")
    if display is None and isinstance(name, dict):
        display = name.get("formatted") or " ".join(
            p for p in (name.get("givenName"), str(name.get("familyName") or "").upper()) if p
        )
    roles = body.get("roles") or []
    if not isinstance(roles, list):
        raise ScimError(400, "« roles » doit être une liste", "invalidValue")
    state = {
        "userName": _text(body.get("userName"), "userName").casefold(),
        "displayName": _text(display or "", "displayName"),
        "active": _truth(body.get("active", True)),
        "rpps": extension.get("rpps") or None,
        "perimetre": extension.get("perimetre") or None,
        "roles": [_role_value(r) for r in roles],
        "assignments": None,
    }
    external = body.get("externalId")
    if external is not None and str(external).casefold() != state["userName"]:
        raise ScimError(
            400,
            "« externalId » doit être le matricule, comme « userName » (pas d'identifiant distinct)",
            "invalidValue",
        )
    return state


def _role_value(item: Any) -> str:
    value = item.get("value") if isinstance(item, dict) else item
    return _text(value, "roles.value")


def _record(state: dict[str, Any], today: date, ref: str) -> HrRecord:
    """The HR record a user's state stands for; the scope is the extension's ``perimetre``, or, when the
    state keeps the assignments it read (a PATCH that changed neither roles nor scope), those."""
    rpps = state["rpps"]
    if rpps is not None and not isinstance(rpps, str):
        raise ScimError(400, "« rpps » doit être une chaîne de 11 chiffres", "invalidValue")
    if state["assignments"] is not None:
        assignments = tuple(state["assignments"])
    elif state["roles"]:
        if not state["perimetre"]:
            raise ScimError(
                400, f"« perimetre » de l'extension {EXTENSION} est requis avec des rôles", "invalidValue"
            )
        try:
            scope = Scope.parse(str(state["perimetre"]))
        except ValueError as exc:
            raise ScimError(400, str(exc), "invalidValue") from None
        assignments = tuple(Assignment(r, scope) for r in dict.fromkeys(state["roles"]))
    else:
        assignments = ()
    return HrRecord(
        login=state["userName"],
        display_name=state["displayName"],
        rpps="".join(rpps.split()) if rpps else None,
        assignments=assignments,
        arrival=today,
        departure=None if state["active"] else today,
        ref=ref,
    )


async def _apply(
    rt: WebRuntime, actor: Actor, record: HrRecord, *, create: bool, account_id: int | None
) -> Account:
    """Check the record (configuration, then the Annuaire Santé for a new or changed RPPS) and apply it."""
    today = hr_today()
    config = await asyncio.to_thread(_config, rt)
    problems = check_record(record, config, today)
    if problems:
        raise ScimError(400, " ; ".join(problems), "invalidValue")
    client: AnnuaireClient | None = getattr(rt, "annuaire", None)
    if client is not None:

        def _pending() -> list[HrRecord]:
            with rt.db.session() as s:
                return rpps_to_check(s, [record], today)

        try:
            unknown = await rpps_problems(client, await asyncio.to_thread(_pending))
        except SecurityError as exc:
            raise ScimError(503, exc.message) from None
        if unknown:
            raise ScimError(400, " ; ".join(unknown), "invalidValue")

    def _do() -> int:
        with rt.db.session() as s:
            taken = s.scalar(select(Account).where(Account.login == record.login))
            if create and taken is not None:
                raise ScimError(409, f"L'identifiant « {record.login} » existe déjà", "uniqueness")
            if account_id is not None:
                current = _managed(s, account_id)
                if current.login != record.login:
                    raise ScimError(
                        400, "« userName » ne peut pas changer (c'est le matricule)", "mutability"
                    )
            try:
                apply_records(s, [record], source="scim", origin="scim", by=actor, today=today)
            except ProvisioningError as exc:
                raise ScimError(409, exc.message, "uniqueness") from None
            except SecurityError as exc:
                raise ScimError(400, exc.message, "invalidValue") from None
            return s.scalars(select(Account.id).where(Account.login == record.login)).one()

    new_id = await asyncio.to_thread(_do)
    return await asyncio.to_thread(_read_user, rt, new_id)


def _read_user(rt: WebRuntime, account_id: int) -> Account:
    with rt.db.session() as s:
        account = _managed(s, account_id)
        s.expunge(account)
        return account


# ---- discovery ------------------------------------------------------------------------------------------------


@router.get("/ServiceProviderConfig")
async def service_provider_config(actor: Provisioner, rt: Rt) -> JSONResponse:
    return scim_response(
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": True},
            "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": True, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": False},
            "sort": {"supported": False},
            "etag": {"supported": False},
            "authenticationSchemes": [
                {
                    "type": "oauthbearertoken",
                    "name": "Jeton d'intégration OpenSégur",
                    "description": "Authorization: Bearer osg_… (opensegur token create --role <rôle admin>)",
                    "primary": True,
                }
            ],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": _location(rt, "ServiceProviderConfig"),
            },
        }
    )


def _attribute(name: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "multiValued": False,
        "required": False,
        "caseExact": False,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none",
    } | extra


SCHEMAS: tuple[dict[str, Any], ...] = (
    {
        "id": USER,
        "name": "User",
        "description": "Compte d'un professionnel, alimenté par le flux RH",
        "attributes": [
            _attribute("userName", required=True, uniqueness="server", mutability="immutable"),
            _attribute("displayName", required=True),
            _attribute("active", "boolean"),
            _attribute("roles", "complex", multiValued=True),
            _attribute("groups", "complex", multiValued=True, mutability="readOnly"),
        ],
    },
    {
        "id": GROUP,
        "name": "Group",
        "description": "Rôle de la matrice d'habilitation (roles.toml) ; membres = comptes qui le détiennent",
        "attributes": [
            _attribute("displayName", mutability="readOnly"),
            _attribute("members", "complex", multiValued=True),
        ],
    },
    {
        "id": EXTENSION,
        "name": "Habilitation OpenSégur",
        "description": "RPPS et périmètre (ght, site:<FINESS>, unit:<FINESS>/<UF>) des rôles de la personne",
        "attributes": [
            _attribute("rpps"),
            _attribute("perimetre"),
            _attribute("affectations", "complex", multiValued=True, mutability="readOnly"),
        ],
    },
)


@router.get("/Schemas")
async def schemas(actor: Provisioner, rt: Rt) -> JSONResponse:
    resources = [
        s
        | {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "meta": {"resourceType": "Schema", "location": _location(rt, f"Schemas/{s['id']}")},
        }
        for s in SCHEMAS
    ]
    return scim_response(_list(resources, len(resources), 1))


@router.get("/ResourceTypes")
async def resource_types(actor: Provisioner, rt: Rt) -> JSONResponse:
    types: list[dict[str, Any]] = [
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "schema": USER,
            "schemaExtensions": [{"schema": EXTENSION, "required": False}],
            "meta": {"resourceType": "ResourceType", "location": _location(rt, "ResourceTypes/User")},
        },
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "schema": GROUP,
            "meta": {"resourceType": "ResourceType", "location": _location(rt, "ResourceTypes/Group")},
        },
    ]
    return scim_response(_list(types, len(types), 1))


# ---- Users ----------------------------------------------------------------------------------------------------


@router.get("/Users")
async def list_users(
    actor: Provisioner, rt: Rt, query: Filter = None, start_index: StartIndex = 1, count: Count = MAX_RESULTS
) -> JSONResponse:
    start, size = _page(start_index, count)
    wanted = _filter_value(query, ("userName", "externalId"))[1].casefold() if query is not None else None

    def _q() -> tuple[list[Account], int]:
        with rt.db.session() as s:
            users = select(Account).where(Account.source.in_(HR_SOURCES))
            if wanted is not None:
                users = users.where(Account.login == wanted)
            rows = list(s.scalars(users.order_by(Account.id)))
            page = rows[start - 1 : start - 1 + size]
            s.expunge_all()
            return page, len(rows)

    (page, total), config = await asyncio.to_thread(_q), await asyncio.to_thread(_config, rt)
    return scim_response(_list([user_resource(rt, a, config) for a in page], total, start))


@router.post("/Users")
async def create_user(actor: Provisioner, rt: Rt, request: Request) -> JSONResponse:
    state = _state_from_body(await _body(request))
    if not state["active"]:
        raise ScimError(
            400,
            "Un compte se crée actif : un départ ne se déclare que pour un compte existant",
            "invalidValue",
        )
    account = await _apply(rt, actor, _record(state, hr_today(), "scim"), create=True, account_id=None)
    resource = user_resource(rt, account, await asyncio.to_thread(_config, rt))
    return scim_response(resource, 201, {"location": resource["meta"]["location"]})


@router.get("/Users/{user_id}")
async def get_user(user_id: str, actor: Provisioner, rt: Rt) -> JSONResponse:
    account = await asyncio.to_thread(_read_user, rt, _account_id(user_id))
    return scim_response(user_resource(rt, account, await asyncio.to_thread(_config, rt)))


@router.put("/Users/{user_id}")
async def replace_user(user_id: str, actor: Provisioner, rt: Rt, request: Request) -> JSONResponse:
    account_id = _account_id(user_id)
    state = _state_from_body(await _body(request))
    account = await _apply(rt, actor, _record(state, hr_today(), "scim"), create=False, account_id=account_id)
    return scim_response(user_resource(rt, account, await asyncio.to_thread(_config, rt)))


def _patch_user(state: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply PATCH operations (add, replace, remove) to the user's state."""
    simple = {
        "username": "userName",
        "displayname": "displayName",
        "active": "active",
        "name.formatted": "displayName",
    }
    extension_fields = {
        f"{EXTENSION}:rpps".casefold(): "rpps",
        f"{EXTENSION}:perimetre".casefold(): "perimetre",
    }
    for op in operations:
        kind = str(op.get("op", "")).casefold()
        path = str(op.get("path") or "").strip()
        value = op.get("value")
        if kind not in ("add", "replace", "remove"):
            raise ScimError(
                400, f"Opération « {op.get('op')} » inconnue : add, replace ou remove", "invalidSyntax"
            )
        if not path:
            if kind == "remove" or not isinstance(value, dict):
                raise ScimError(400, "Sans « path », « value » doit être un objet", "noTarget")
            # {"active": false} or a partial user: each key is an operation of its own.
            expanded = []
            for key, sub in value.items():
                if key == EXTENSION and isinstance(sub, dict):
                    expanded += [{"op": kind, "path": f"{EXTENSION}:{k}", "value": v} for k, v in sub.items()]
                else:
                    expanded.append({"op": kind, "path": key, "value": sub})
            state = _patch_user(state, expanded)
            continue
        key = path.casefold()
        if key in simple or key in extension_fields:
            target = simple.get(key) or extension_fields[key]
            if kind == "remove":
                if target not in ("rpps", "perimetre"):
                    raise ScimError(
                        400, f"« {path} » est obligatoire : il ne peut pas être retiré", "mutability"
                    )
                value = None
            if target == "active":
                state["active"] = _truth(value)
            elif target in ("userName", "displayName"):
                state[target] = _text(value, target)
            else:
                state[target] = _text(value, target) if value is not None else None
                if target == "perimetre":
                    state["assignments"] = None
        elif key == "roles" or key.startswith("roles["):
            state["roles"] = _patched_roles(state["roles"], kind, key, value)
            state["assignments"] = None
        else:
            raise ScimError(400, f"Attribut « {path} » non modifiable ici", "invalidPath")
    return state


def _patched_roles(roles: list[str], kind: str, key: str, value: Any) -> list[str]:
    given = [
        _role_value(v) for v in (value if isinstance(value, list) else [value] if value is not None else [])
    ]
    if key.startswith("roles["):
        _, chosen = _filter_value(key[len("roles[") :].rstrip("]"), ("value",))
        given = [chosen]
    if kind == "replace" and not key.startswith("roles["):
        return given
    if kind == "remove":
        return [r for r in roles if r not in given] if given else []
    return list(dict.fromkeys([*roles, *given]))


def _patch_operations(body: dict[str, Any]) -> list[dict[str, Any]]:
    operations = body.get("Operations")
    if PATCH_OP not in (body.get("schemas") or []) or not isinstance(operations, list) or not operations:
        raise ScimError(400, f"Requête PATCH attendue : schemas [{PATCH_OP}] et Operations", "invalidSyntax")
    if not all(isinstance(op, dict) for op in operations):
        raise ScimError(400, "Chaque opération doit être un objet", "invalidSyntax")
    return operations


@router.patch("/Users/{user_id}")
async def patch_user(user_id: str, actor: Provisioner, rt: Rt, request: Request) -> JSONResponse:
    account_id = _account_id(user_id)
    operations = _patch_operations(await _body(request))
    current = await asyncio.to_thread(_read_user, rt, account_id)
    state = _patch_user(_state_of(current), operations)
    account = await _apply(rt, actor, _record(state, hr_today(), "scim"), create=False, account_id=account_id)
    return scim_response(user_resource(rt, account, await asyncio.to_thread(_config, rt)))


@router.delete("/Users/{user_id}")
async def delete_user(user_id: str, actor: Provisioner, rt: Rt) -> Response:
    account_id = _account_id(user_id)
    current = await asyncio.to_thread(_read_user, rt, account_id)
    state = _state_of(current) | {"active": False}
    await _apply(rt, actor, _record(state, hr_today(), "scim"), create=False, account_id=account_id)
    return Response(status_code=204)


# ---- Groups ---------------------------------------------------------------------------------------------------


def _members(s: Session, role: str) -> list[Account]:
    rows = s.scalars(select(Account).where(Account.source.in_(HR_SOURCES)).order_by(Account.id))
    return [a for a in rows if any(x.get("role") == role for x in a.assignments)]


def _group(rt: WebRuntime, role: str) -> dict[str, Any]:
    config = _config(rt)
    if role not in config.roles:
        raise ScimError(404, "Groupe (rôle) introuvable")
    with rt.db.session() as s:
        return group_resource(rt, role, config, _members(s, role))


@router.get("/Groups")
async def list_groups(
    actor: Provisioner, rt: Rt, query: Filter = None, start_index: StartIndex = 1, count: Count = MAX_RESULTS
) -> JSONResponse:
    start, size = _page(start_index, count)
    config = await asyncio.to_thread(_config, rt)
    roles = list(config.roles)
    if query is not None:
        attribute, value = _filter_value(query, ("displayName", "id"))
        roles = [r for r in roles if (config.roles[r].label if attribute == "displayName" else r) == value]
    chosen = roles[start - 1 : start - 1 + size]
    groups: list[dict[str, Any]] = [await asyncio.to_thread(_group, rt, r) for r in chosen]
    return scim_response(_list(groups, len(roles), start))


@router.get("/Groups/{group_id}")
async def get_group(group_id: str, actor: Provisioner, rt: Rt) -> JSONResponse:
    return scim_response(await asyncio.to_thread(_group, rt, group_id))


def _member_ids(key: str, value: Any) -> list[int]:
    if key.startswith("members["):
        _, chosen = _filter_value(key[len("members[") :].rstrip("]"), ("value",))
        items: list[Any] = [chosen]
    else:
        items = value if isinstance(value, list) else [value]
        items = [i.get("value") if isinstance(i, dict) else i for i in items]
    ids = []
    for item in items:
        if not isinstance(item, str | int) or not str(item).isdigit():
            raise ScimError(
                400, "Membre invalide : l'« id » SCIM d'un utilisateur est attendu", "invalidValue"
            )
        ids.append(int(item))
    return ids


@router.patch("/Groups/{group_id}")
async def patch_group(group_id: str, actor: Provisioner, rt: Rt, request: Request) -> JSONResponse:
    """Members added hold the role in their ``perimetre``; members removed lose it wherever they held it."""
    operations = _patch_operations(await _body(request))
    await asyncio.to_thread(_group, rt, group_id)  # 404 on an unknown role, before anything changes
    changes: dict[int, str] = {}
    for op in operations:
        kind = str(op.get("op", "")).casefold()
        key = str(op.get("path") or "").strip().casefold()
        if kind not in ("add", "remove", "replace") or not (key == "members" or key.startswith("members[")):
            raise ScimError(
                400, "Seuls les membres d'un groupe se modifient (path « members »)", "invalidPath"
            )
        if kind == "replace":
            raise ScimError(
                400, "Remplacer tous les membres n'est pas pris en charge : add ou remove", "invalidPath"
            )
        changes.update((i, kind) for i in _member_ids(key, op.get("value")))
    for account_id, kind in changes.items():
        current = await asyncio.to_thread(_read_user, rt, account_id)
        state = _state_of(current)
        assignments: list[Assignment] = state["assignments"]
        if kind == "remove":
            state["assignments"] = [a for a in assignments if a.role != group_id]
        elif all(a.role != group_id for a in assignments):
            scope = _perimetre(current)
            if scope is None:
                raise ScimError(
                    400,
                    f"« {current.login} » a plusieurs périmètres : indiquez « perimetre » (extension {EXTENSION})",
                    "invalidValue",
                )
            state["assignments"] = [*assignments, Assignment(group_id, Scope.parse(scope))]
        record = replace(_record(state, hr_today(), "scim"), arrival=None)
        await _apply(rt, actor, record, create=False, account_id=account_id)
    return scim_response(await asyncio.to_thread(_group, rt, group_id))
