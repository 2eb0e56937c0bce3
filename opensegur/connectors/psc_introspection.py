"""Pro Santé Connect token introspection (RFC 7662): whether the bearer token another DRIMbox presents is an
active PSC token, and whose. The DRIMbox authenticates to PSC as a client (client_secret_basic here; mutual TLS
in production through the e-santé proxy, configured on the HTTP client)."""

from __future__ import annotations

import time

import httpx

from opensegur.flows.drimbox_ports import IntrospectionUnavailable

__all__ = ["TokenIntrospector"]

CACHE_S = 30.0  # an answer is reused this long: a series is asked for in several requests within seconds
CACHE_MAX = 1024


class TokenIntrospector:
    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self._http = httpx.AsyncClient(auth=(client_id, client_secret), timeout=timeout, transport=transport)
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def subject(self, token: str) -> str | None:
        """The ``sub`` of an active token, None for an inactive, expired or unknown one."""
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        try:
            resp = await self._http.post(self.url, data={"token": token, "token_type_hint": "access_token"})
            resp.raise_for_status()
            answer = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IntrospectionUnavailable(f"Pro Santé Connect : introspection impossible ({exc})") from exc
        if not isinstance(answer, dict):
            raise IntrospectionUnavailable("Pro Santé Connect : réponse d'introspection illisible")
        sub = (
            answer.get("sub") if answer.get("active") is True and isinstance(answer.get("sub"), str) else None
        )
        exp = answer.get("exp")
        if sub is not None and isinstance(exp, int | float) and exp <= time.time():
            sub = None
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (now, sub)
        return sub

    async def aclose(self) -> None:
        await self._http.aclose()
