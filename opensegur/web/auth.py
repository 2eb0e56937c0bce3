"""The API's bearer token, checked the same way for the REST API and the FHIR endpoints."""

from __future__ import annotations

import secrets

from fastapi import Request


def bearer_accepted(request: Request) -> bool | None:
    """None when no ``api_token`` is configured (demo), else whether the request carries it."""
    token = request.app.state.runtime.settings.api_token
    if token is None:
        return None
    given = request.headers.get("authorization", "")
    return secrets.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode())


def demo_user(request: Request) -> str:
    """Who acts when no token protects the API: the name the pages pass along, or the demo user."""
    return request.headers.get("x-opensegur-user", "utilisateur-demo")
