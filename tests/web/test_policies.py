"""Every route has a declared policy, and each demo role gets exactly what the matrix gives it.

The first test walks the application's routes and fails on one that declares neither ``allow(action)`` nor
``public(why)``; the second calls every guarded route as each demo role (and as nobody) and checks the answer
against the matrix: 403 where the role lacks the action, never 401/403 where it holds it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from opensegur.flows.qualification import InsiUnavailableError
from opensegur.security.matrix import STRONG_ACTIONS, Action, Assignment, Scope
from opensegur.web.app import create_app
from opensegur.web.deps import Policy, matrix_of, policy_of
from tests.actors import DEMO_ROLES, EVERYONE, act_as
from tests.web.test_rest_intake import Offline

# The one route FastAPI adds itself, open by design: the API's description (no data).
FRAMEWORK_ROUTES = {"/openapi.json"}


def _policies(dependant: Dependant) -> Iterator[Policy]:
    for dep in dependant.dependencies:
        policy = policy_of(dep.call)
        if policy is not None:
            yield policy
        yield from _policies(dep)


def _flat(routes: list[Any]) -> Iterator[Any]:
    """The application's routes, through the routers it includes (FastAPI ≥ 0.16x keeps them as included
    routers)."""
    for r in routes:
        original = getattr(r, "original_router", None)
        if original is not None:
            yield from _flat(original.routes)
        else:
            yield r


def _routes(app: FastAPI) -> list[tuple[APIRoute, list[Policy]]]:
    return [(r, list(_policies(r.dependant))) for r in _flat(app.routes) if isinstance(r, APIRoute)]


def test_every_route_declares_exactly_one_policy(offline: Offline) -> None:
    app = create_app(offline)
    missing, several = [], []
    for route, policies in _routes(app):
        if not policies:
            missing.append(f"{sorted(route.methods)} {route.path}")
        elif len({(p.action, p.public_reason) for p in policies}) > 1:
            several.append(f"{route.path}: {policies}")
    others = {getattr(r, "path", "") for r in _flat(app.routes) if not isinstance(r, APIRoute)}
    assert not missing, f"routes sans politique d'accès : {missing}"
    assert not several, f"routes à plusieurs politiques : {several}"
    assert others == FRAMEWORK_ROUTES, others - FRAMEWORK_ROUTES
    public = sorted(r.path for r, p in _routes(app) if p and p[0].action is None)
    # The open routes, reviewed: a change here is a security decision.
    assert public == [
        "/",
        "/api/moi/cles",
        "/api/moi/cles/options",
        # The OHIF viewer's configuration (no patient data; its DICOMweb needs dmp.consult).
        "/app-config.js",
        "/connexion",
        "/connexion",
        "/connexion/cle/options",
        "/connexion/cle/verifier",
        "/connexion/psc",
        "/connexion/psc/retour",
        "/connexion/second-facteur",
        "/connexion/sso",
        "/connexion/sso/retour",
        "/deconnexion",
        # Another DRIMbox, with a Pro Santé Connect token and a published manifest checked by the route.
        "/dicom-web/studies/{study}/series/{series}",
        "/docs",
        "/docs-assets/{name}",
        "/fhir/metadata",
        "/healthz",
        # The viewer's code; no service worker is installed.
        "/init-service-worker.js",
        "/moi/cles",
        "/moi/cles/{key_id}/renommer",
        "/moi/cles/{key_id}/revoquer",
        "/sandbox/endpoints",
        "/static/{name}",
        # Last route: the OHIF viewer's files at the site's root, and only them.
        "/{name:path}",
    ], public


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


class _InsiDown:
    """Every guarded route is really called: INSi answers as it does during an outage."""

    async def search_by_traits(self, query: Any) -> Any:
        raise InsiUnavailableError("INSi indisponible (test)")


@pytest.fixture
async def app(offline: Offline) -> AsyncIterator[FastAPI]:
    offline.insi = _InsiDown()
    yield create_app(offline)


async def _call(app: FastAPI, route: APIRoute) -> httpx.Response:
    method = sorted(route.methods - {"HEAD"})[0]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://opensegur.test") as c:
        return await c.request(method, _concrete(route.path), headers={"x-csrf-token": "jeton-de-test"})


@pytest.mark.parametrize("role", DEMO_ROLES)
async def test_each_role_gets_what_the_matrix_gives(app: FastAPI, role: str) -> None:
    actor = dataclasses.replace(EVERYONE, assignments=(Assignment(role, Scope("ght")),), name=f"role-{role}")
    act_as(app, actor)
    matrix = matrix_of(app.state.runtime)
    granted = matrix.actions(actor.assignments)
    checked: dict[str, Any] = {}
    for route, policies in _routes(app):
        action = policies[0].action
        if action is None:
            continue
        r = await _call(app, route)
        checked[f"{route.path} {r.status_code}"] = action
        if action in granted:
            assert r.status_code not in (401, 403), (role, route.path, r.status_code, r.text[:200])
        else:
            assert r.status_code == 403, (role, route.path, r.status_code)
            if not route.path.startswith("/fhir"):
                assert "Votre rôle ne permet pas" in r.text
    assert checked


async def test_nobody_is_sent_to_login_or_refused(app: FastAPI) -> None:
    act_as(app, None)
    for route, policies in _routes(app):
        if policies[0].action is None:
            continue
        r = await _call(app, route)
        page = not route.path.startswith(("/api/", "/fhir", "/scim"))
        if page and "GET" in route.methods:
            assert r.status_code == 303 and r.headers["location"].startswith("/connexion?retour="), route.path
        else:
            assert r.status_code == 401, (route.path, r.status_code)


async def test_a_weak_session_cannot_do_what_needs_a_strong_one(app: FastAPI) -> None:
    weak = dataclasses.replace(EVERYONE, strong=False)
    act_as(app, weak)
    seen = 0
    for route, policies in _routes(app):
        if policies[0].action in STRONG_ACTIONS:
            r = await _call(app, route)
            assert r.status_code == 403 and "Authentification forte requise" in r.text, route.path
            seen += 1
    assert seen >= 4  # merge, triage (API and pages), break the glass


def test_every_action_is_held_by_some_demo_role(offline: Offline) -> None:
    matrix = matrix_of(offline)
    held = matrix.actions([Assignment(r, Scope("ght")) for r in DEMO_ROLES])
    assert held == frozenset(Action)
