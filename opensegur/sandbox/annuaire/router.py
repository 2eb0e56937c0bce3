"""Simulator of the Annuaire Santé FHIR API v2 (``https://gateway.api.esante.gouv.fr/fhir/v2``).

What it mirrors from the API guide (``ansforge/annuaire-sante-fhir-documentation``, version 2):

* the ``ESANTE-API-KEY`` header on every call (401 otherwise), JSON ``Bundle`` searchsets, ``OperationOutcome``
  on errors, reads ``[type]/[id]`` and searches on Practitioner, PractitionerRole and Organization;
* search parameters: Practitioner ``_id``, ``identifier`` (RPPS or idNat_PS), ``name``, ``family``, ``given``,
  ``mailbox-mss``, ``active``; PractitionerRole ``_id``, ``practitioner``, ``organization``, ``mailbox-mss``,
  ``active``; Organization ``_id``, ``identifier``, ``name``, ``address-city``, ``address-postalcode``,
  ``mailbox-mss``, ``active``; string parameters accept ``:contains`` and ``:exact``, commas mean « or »;
* ``_include=PractitionerRole:practitioner|PractitionerRole:organization|*``,
  ``_revinclude=PractitionerRole:practitioner`` (on Practitioner) and ``PractitionerRole:organization`` (on
  Organization), ``_count`` (default 50, capped) and paging through ``[base]/_page?id=…`` ``next`` links.

Stricter than needed on purpose: an unknown parameter or modifier is a 400, so a client relying on something
the sandbox does not check finds out here. String search is case- and accent-insensitive, prefix by default.
``/_admin`` injects faults (HTTP status, delay) and lists the calls received.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from opensegur.errors import OpenSegurError
from opensegur.identity.directory import fold
from opensegur.sandbox.annuaire.fixtures import DirectoryData, load_directory

__all__ = ["ANNUAIRE_FHIR_PATH", "SANDBOX_API_KEY", "create_annuaire_router"]

SANDBOX_API_KEY = "opensegur-bac-a-sable-annuaire"
ANNUAIRE_FHIR_PATH = "/fhir/v2"
FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT = 50
_CONTROL = {"_count", "_include", "_revinclude", "_format", "_total"}
_STRING_MODIFIERS = {"", "contains", "exact"}
_CALLS_KEPT = 200


class FaultConfig(BaseModel):
    """Make the next ``count`` calls fail with ``status`` (0: answer normally) after ``delay_s`` seconds."""

    status: int = Field(default=0, ge=0, le=599)
    count: int = Field(default=1, ge=0)
    delay_s: float = Field(default=0.0, ge=0.0, le=60.0)


@dataclass
class _State:
    data: DirectoryData
    max_count: int
    faults: FaultConfig = field(default_factory=lambda: FaultConfig(count=0))
    calls: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_CALLS_KEPT))


class _BadRequest(OpenSegurError):
    pass


def _outcome(status: int, code: str, message: str) -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


# ---- matching --------------------------------------------------------------------------------------------------


def _string_match(values: Iterable[str], wanted: str, modifier: str) -> bool:
    if modifier == "exact":
        return any(v == wanted for v in values)
    target = fold(wanted)
    for value in values:
        folded = fold(value)
        if modifier == "contains" and target in folded:
            return True
        # FHIR string search matches the start of the value; HAPI also matches the start of each word.
        if not modifier and (folded.startswith(target) or any(w.startswith(target) for w in folded.split())):
            return True
    return False


def _names(resource: dict[str, Any], part: str) -> list[str]:
    out: list[str] = []
    for name in resource.get("name") or []:
        family = name.get("family") or ""
        given = list(name.get("given") or [])
        if part in ("name", "family") and family:
            out.append(family)
        if part in ("name", "given"):
            out += given
        if part == "name":
            out += list(name.get("prefix") or []) + list(name.get("suffix") or [])
            out += [" ".join([*given, family]), " ".join([family, *given])]
    return out


def _identifier_match(resource: dict[str, Any], token: str) -> bool:
    system, sep, value = token.rpartition("|")
    for ident in resource.get("identifier") or []:
        if ident.get("value") != value:
            continue
        if not sep or not system or ident.get("system") == system:
            return True
    return False


def _mailboxes(resource: dict[str, Any]) -> list[str]:
    return [t.get("value", "") for t in resource.get("telecom") or [] if t.get("system") == "email"]


def _reference_ids(raw: str, resource_type: str) -> set[str]:
    return {v.strip().removeprefix(f"{resource_type}/") for v in raw.split(",") if v.strip()}


def _match_param(resource: dict[str, Any], name: str, modifier: str, raw: str) -> bool:
    """One search parameter against one resource; comma-separated values are alternatives."""
    values = [v for v in raw.split(",") if v != ""]
    if not values:
        raise _BadRequest(f"Paramètre « {name} » sans valeur")
    kind = resource["resourceType"]
    if name == "_id":
        return resource["id"] in values
    if name == "identifier":
        return any(_identifier_match(resource, v) for v in values)
    if name == "active":
        if any(v not in ("true", "false") for v in values):
            raise _BadRequest("Paramètre « active » : true ou false attendu")
        return str(resource.get("active", True)).lower() in values
    if name == "mailbox-mss":
        return any(_string_match(_mailboxes(resource), v, modifier) for v in values)
    if kind == "Practitioner" and name in ("name", "family", "given"):
        return any(_string_match(_names(resource, name), v, modifier) for v in values)
    if kind == "Organization" and name == "name":
        names = [resource.get("name", ""), *(resource.get("alias") or [])]
        return any(_string_match(names, v, modifier) for v in values)
    if kind == "Organization" and name in ("address-city", "address-postalcode"):
        key = "city" if name == "address-city" else "postalCode"
        found = [a.get(key, "") for a in resource.get("address") or []]
        return any(_string_match(found, v, modifier) for v in values)
    if kind == "PractitionerRole" and name in ("practitioner", "organization"):
        target = "Practitioner" if name == "practitioner" else "Organization"
        ref = (resource.get(name) or {}).get("reference", "")
        return ref.removeprefix(f"{target}/") in _reference_ids(raw, target)
    raise AssertionError(name)


_SEARCH_PARAMS: dict[str, dict[str, str]] = {
    # parameter -> "string" (modifiers allowed) or "token"/"reference"
    "Practitioner": {
        "_id": "token",
        "identifier": "token",
        "active": "token",
        "name": "string",
        "family": "string",
        "given": "string",
        "mailbox-mss": "string",
    },
    "PractitionerRole": {
        "_id": "token",
        "active": "token",
        "practitioner": "reference",
        "organization": "reference",
        "mailbox-mss": "string",
    },
    "Organization": {
        "_id": "token",
        "identifier": "token",
        "active": "token",
        "name": "string",
        "address-city": "string",
        "address-postalcode": "string",
        "mailbox-mss": "string",
    },
}
_INCLUDES = {
    "PractitionerRole": {"PractitionerRole:practitioner", "PractitionerRole:organization", "*"},
}
_REVINCLUDES = {
    "Practitioner": {"PractitionerRole:practitioner"},
    "Organization": {"PractitionerRole:organization"},
}


# ---- search ----------------------------------------------------------------------------------------------------


def _resources(data: DirectoryData, resource_type: str) -> tuple[dict[str, Any], ...]:
    return {
        "Practitioner": data.practitioners,
        "PractitionerRole": data.roles,
        "Organization": data.organizations,
    }[resource_type]


def _parse_count(values: list[str], max_count: int) -> int:
    if len(values) > 1:
        raise _BadRequest("Paramètre « _count » répété")
    try:
        count = int(values[0])
    except ValueError:
        raise _BadRequest(f"Paramètre « _count » : entier attendu, reçu « {values[0][:40]} »") from None
    if count < 0:
        raise _BadRequest("Paramètre « _count » : entier positif attendu")
    return min(count, max_count)


@dataclass(frozen=True)
class _Query:
    resource_type: str
    filters: tuple[tuple[str, str, str], ...]  # (name, modifier, raw value)
    includes: tuple[str, ...]
    revincludes: tuple[str, ...]
    count: int


def _parse_query(resource_type: str, params: list[tuple[str, str]], max_count: int) -> _Query:
    allowed = _SEARCH_PARAMS[resource_type]
    filters: list[tuple[str, str, str]] = []
    includes: list[str] = []
    revincludes: list[str] = []
    counts: list[str] = []
    for key, value in params:
        name, _, modifier = key.partition(":")
        if name in _CONTROL:
            if name == "_count":
                counts.append(value)
            elif name == "_include":
                if value not in _INCLUDES.get(resource_type, set()):
                    raise _BadRequest(f"_include « {value[:80]} » non pris en charge sur {resource_type}")
                includes.append(value)
            elif name == "_revinclude":
                if value not in _REVINCLUDES.get(resource_type, set()):
                    raise _BadRequest(f"_revinclude « {value[:80]} » non pris en charge sur {resource_type}")
                revincludes.append(value)
            elif name == "_format" and value not in ("json", "application/json", FHIR_JSON):
                raise _BadRequest("Seul le format JSON est servi par ce bac à sable")
            elif name == "_total" and value not in ("none", "estimate", "accurate"):
                raise _BadRequest("Paramètre « _total » : none, estimate ou accurate")
            continue
        if name not in allowed:
            raise _BadRequest(f"Paramètre de recherche inconnu pour {resource_type} : « {key[:80]} »")
        if modifier and (allowed[name] != "string" or modifier not in _STRING_MODIFIERS):
            raise _BadRequest(f"Modificateur « :{modifier[:40]} » non pris en charge sur « {name} »")
        if len(value) > 256:
            raise _BadRequest(f"Valeur du paramètre « {name} » trop longue")
        filters.append((name, modifier, value))
    count = _parse_count(counts, max_count) if counts else min(DEFAULT_COUNT, max_count)
    return _Query(resource_type, tuple(filters), tuple(includes), tuple(revincludes), count)


def _encode_page(query: _Query, offset: int) -> str:
    state = {
        "t": query.resource_type,
        "f": query.filters,
        "i": query.includes,
        "r": query.revincludes,
        "c": query.count,
        "o": offset,
    }
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


def _decode_page(token: str) -> tuple[_Query, int]:
    try:
        state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        query = _Query(
            str(state["t"]),
            tuple((str(n), str(m), str(v)) for n, m, v in state["f"]),
            tuple(str(i) for i in state["i"]),
            tuple(str(r) for r in state["r"]),
            int(state["c"]),
        )
        offset = int(state["o"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _BadRequest("Identifiant de page invalide ou expiré") from None
    if query.resource_type not in _SEARCH_PARAMS or offset < 0 or query.count < 0:
        raise _BadRequest("Identifiant de page invalide ou expiré")
    return query, offset


def _search(state: _State, query: _Query, offset: int, base: str) -> dict[str, Any]:
    matches = [
        r
        for r in _resources(state.data, query.resource_type)
        if all(_match_param(r, n, m, v) for n, m, v in query.filters)
    ]
    page = matches[offset : offset + query.count]
    entries = [_entry(base, r, "match") for r in page]
    seen = {(r["resourceType"], r["id"]) for r in page}

    def add(resources: Iterable[dict[str, Any]]) -> None:
        for r in resources:
            if (r["resourceType"], r["id"]) not in seen:
                seen.add((r["resourceType"], r["id"]))
                entries.append(_entry(base, r, "include"))

    ids = {r["id"] for r in page}
    for rev in query.revincludes:
        field_name = rev.split(":")[1]
        prefix = "Practitioner/" if field_name == "practitioner" else "Organization/"
        add(
            role
            for role in state.data.roles
            if (role.get(field_name) or {}).get("reference", "").removeprefix(prefix) in ids
        )
    for inc in query.includes:
        targets = ["practitioner", "organization"] if inc == "*" else [inc.split(":")[1]]
        for target in targets:
            pool = state.data.practitioners if target == "practitioner" else state.data.organizations
            wanted = {(r.get(target) or {}).get("reference", "").split("/")[-1] for r in page}
            add(r for r in pool if r["id"] in wanted)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": secrets.token_hex(16),
        "meta": {"lastUpdated": "2026-01-05T08:00:00.000+01:00"},
        "type": "searchset",
        "total": len(matches),
        "link": [{"relation": "self", "url": f"{base}/_page?id={_encode_page(query, offset)}"}],
        "entry": entries,
    }
    if offset + query.count < len(matches) and query.count > 0:
        nxt = _encode_page(query, offset + query.count)
        bundle["link"].insert(0, {"relation": "next", "url": f"{base}/_page?id={nxt}"})
    return bundle


def _entry(base: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


# ---- router ----------------------------------------------------------------------------------------------------


def create_annuaire_router(*, max_count: int = DEFAULT_COUNT, api_key: str = SANDBOX_API_KEY) -> APIRouter:
    """The simulated API, to mount with prefix ``/annuaire``: base URL ``<sandbox>/annuaire/fhir/v2``."""
    state = _State(load_directory(), max_count)
    router = APIRouter(tags=["sandbox-annuaire"])

    def base_of(request: Request) -> str:
        path = request.url.path
        root = path[: path.index(ANNUAIRE_FHIR_PATH) + len(ANNUAIRE_FHIR_PATH)]
        return f"{request.url.scheme}://{request.url.netloc}{root}"

    async def guard(request: Request) -> Response | None:
        """API key, call log and injected faults, in the order the gateway applies them."""
        state.calls.append(
            {
                "path": request.url.path.split(ANNUAIRE_FHIR_PATH, 1)[-1],
                "params": list(request.query_params.multi_items()),
                "api_key": bool(request.headers.get("esante-api-key")),
            }
        )
        given = request.headers.get("esante-api-key", "")
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            return _outcome(401, "security", "Clé d'API absente ou invalide (en-tête ESANTE-API-KEY)")
        faults = state.faults
        if faults.count > 0 and (faults.status or faults.delay_s):
            faults.count -= 1
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            if faults.status:
                return _outcome(faults.status, "transient", "Panne simulée par le bac à sable")
        return None

    def answer(body: dict[str, Any]) -> JSONResponse:
        return JSONResponse(body, media_type=FHIR_JSON)

    def search_route(resource_type: str) -> Callable[[Request], Any]:
        async def search(request: Request) -> Response:
            if (refused := await guard(request)) is not None:
                return refused
            try:
                query = _parse_query(resource_type, list(request.query_params.multi_items()), state.max_count)
                return answer(_search(state, query, 0, base_of(request)))
            except _BadRequest as exc:
                return _outcome(400, "invalid", str(exc))

        search.__name__ = f"search_{resource_type.lower()}"
        return search

    def read_route(resource_type: str) -> Callable[[Request, str], Any]:
        async def read(request: Request, resource_id: str) -> Response:
            if (refused := await guard(request)) is not None:
                return refused
            for resource in _resources(state.data, resource_type):
                if resource["id"] == resource_id:
                    return answer(resource)
            return _outcome(404, "not-found", f"Ressource {resource_type}/{resource_id[:80]} inconnue")

        read.__name__ = f"read_{resource_type.lower()}"
        return read

    for resource_type in _SEARCH_PARAMS:
        router.add_api_route(
            f"{ANNUAIRE_FHIR_PATH}/{resource_type}", search_route(resource_type), methods=["GET"]
        )
        router.add_api_route(
            f"{ANNUAIRE_FHIR_PATH}/{resource_type}/{{resource_id}}",
            read_route(resource_type),
            methods=["GET"],
        )

    @router.get(f"{ANNUAIRE_FHIR_PATH}/_page")
    async def page(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        try:
            query, offset = _decode_page(request.query_params.get("id", ""))
            return answer(_search(state, query, offset, base_of(request)))
        except _BadRequest as exc:
            return _outcome(400, "invalid", str(exc))

    @router.get(f"{ANNUAIRE_FHIR_PATH}/metadata")
    async def metadata(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        resources = [
            {
                "type": t,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": n, "type": "token" if k != "string" else "string"} for n, k in p.items()
                ],
            }
            for t, p in _SEARCH_PARAMS.items()
        ]
        return answer(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "kind": "instance",
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "software": {"name": "OpenSégur — bac à sable Annuaire Santé"},
                "rest": [{"mode": "server", "resource": resources}],
            }
        )

    @router.post("/_admin/faults")
    async def set_faults(config: FaultConfig) -> dict[str, Any]:
        state.faults = config
        return config.model_dump()

    @router.get("/_admin/calls")
    async def calls() -> list[dict[str, Any]]:
        return list(state.calls)

    @router.post("/_admin/reset")
    async def reset() -> dict[str, str]:
        state.faults = FaultConfig(count=0)
        state.calls.clear()
        return {"status": "ok"}

    return router
