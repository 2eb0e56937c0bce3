"""Who the web tests act as: dependency overrides of ``web.deps.current_actor`` (never a patched module).

Tests of flows and pages act as ``EVERYONE`` (every demo role over the whole GHT, strong session) unless they test
access control itself, which ``tests/web/test_policies.py`` and ``tests/security`` do with real sessions and tokens.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from opensegur.security.actor import Actor
from opensegur.security.defaults import default_matrix
from opensegur.security.matrix import Assignment, Scope
from opensegur.web.deps import current_actor

# The demo GHT's roles (ops/demo_ght/roles.toml), in the order the file declares them.
DEMO_ROLES = tuple(default_matrix().roles)

EVERYONE = Actor(
    kind="person",
    name="testeur",
    display_name="Testeur Tous-Rôles",
    assignments=tuple(Assignment(role, Scope("ght")) for role in DEMO_ROLES),
    strong=True,
    csrf_token="jeton-de-test",
)


def act_as(app: Any, actor: Actor | None = EVERYONE) -> Any:
    """Makes every request to ``app`` act as ``actor`` (None: nobody logged in). Returns the app."""
    assert isinstance(app, FastAPI)

    async def _actor(request: Request) -> Actor | None:
        request.state.actor = actor
        return actor

    app.dependency_overrides[current_actor] = _actor
    return app
