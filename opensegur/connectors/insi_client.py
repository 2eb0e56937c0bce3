"""Async client of the INSi teleservice, with the official first-name / COG re-query strategy."""

from __future__ import annotations

import ssl
import uuid
from dataclasses import replace

import httpx

from opensegur.errors import RetryLater
from opensegur.transactions.insi import (
    ACTION_TRAITS,
    ACTION_VITALE,
    InsiCarteVitaleQuery,
    InsiContext,
    InsiError,
    InsiResult,
    InsiTraitsQuery,
    build_traits_request,
    build_vitale_request,
    fault_to_error,
    parse_response,
)
from opensegur.transport.soap import SoapFaultError, SoapFormatError, SoapTransportError, post_soap

__all__ = ["InsiClient", "InsiError", "InsiUnavailable", "traits_attempts"]


class InsiUnavailable(RetryLater):
    """INSi could not be reached or did not answer in time; the same call may succeed later."""

    def __init__(self, message: str, *, retryable: bool = True, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


def traits_attempts(q: InsiTraitsQuery) -> tuple[list[InsiTraitsQuery], list[InsiTraitsQuery]]:
    """The queries to try, in order: (without COG, with COG for disambiguation).

    Strategy (standards.md §3.4, esante-bretagne + the CNDA-qualified padoa client):
    1. each birth first name alone, first one first — INSi matches a single first name against the birth list,
       so a list containing a usage name or a misspelling ("OLA CATARINA") still finds the person;
    2. then the full list, which discriminates homonyms sharing one first name;
    3. only if the answer was ambiguous (02) and the COG is known: the full list, then the first first name,
       with the COG. The COG is not sent up front because a wrong local birthplace would turn a hit into 01.
    """
    names = [n.strip() for n in q.first_names if n and n.strip()]
    base = replace(q, birth_place=None)
    plain: list[InsiTraitsQuery] = [replace(base, first_names=[n]) for n in names]
    if len(names) != 1:
        plain.append(replace(base, first_names=names))
    with_cog: list[InsiTraitsQuery] = []
    if q.birth_place:
        with_cog.append(replace(q, first_names=names))
        if len(names) > 1:
            with_cog.append(replace(q, first_names=names[:1]))
    return _dedupe(plain), _dedupe(with_cog)


def _dedupe(queries: list[InsiTraitsQuery]) -> list[InsiTraitsQuery]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for query in queries:
        sig = (*query.first_names, "|", query.birth_place or "")
        if sig not in seen:
            seen.add(sig)
            out.append(query)
    return out


class InsiClient:
    def __init__(
        self,
        url: str,
        context: InsiContext,
        *,
        timeout: float = 10.0,
        client_cert: tuple[str, str] | None = None,
        verify: str | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.context = context
        self.timeout = timeout
        if transport is not None:
            self._http = httpx.AsyncClient(transport=transport)
        else:
            self._http = httpx.AsyncClient(verify=_ssl_context(client_cert, verify))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> InsiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, payload: bytes, action: str, request_id: str) -> InsiResult:
        try:
            raw = await post_soap(self._http, self.url, payload, action, self.timeout)
        except SoapTransportError as exc:
            if exc.retryable:
                raise InsiUnavailable(str(exc), status_code=exc.status_code) from exc
            raise InsiError(f"INSi exchange failed: {exc}", code="HTTP_ERROR") from exc
        except SoapFaultError as exc:
            raise fault_to_error(exc) from exc
        except SoapFormatError as exc:
            raise InsiError(f"invalid INSi response: {exc}", code="XML_UNSAFE") from exc
        return parse_response(raw, request_id=request_id)

    async def query_traits_once(self, q: InsiTraitsQuery) -> InsiResult:
        """One rechercherInsAvecTraitsIdentite call, no retry strategy."""
        request_id = str(uuid.uuid4())
        return await self._call(build_traits_request(q, self.context, request_id), ACTION_TRAITS, request_id)

    async def search_by_traits(self, q: InsiTraitsQuery) -> InsiResult:
        """Search with the re-query strategy of :func:`traits_attempts`.

        Returns the first 00; otherwise the last 02 seen (more telling than 01 for the operator),
        else the last 01. A fault or transport error stops the sequence: repeating it would not help.
        """
        plain, with_cog = traits_attempts(q)
        last: InsiResult | None = None
        ambiguous: InsiResult | None = None
        for attempt in plain:
            last = await self.query_traits_once(attempt)
            if last.code == "00":
                return last
            if last.code == "02":
                ambiguous = last
        if ambiguous is not None:
            for attempt in with_cog:
                last = await self.query_traits_once(attempt)
                if last.code == "00":
                    return last
                if last.code == "02":
                    ambiguous = last
            return ambiguous
        if last is None:
            raise ValueError("no query to send")
        return last

    async def search_by_vitale(self, q: InsiCarteVitaleQuery) -> InsiResult:
        request_id = str(uuid.uuid4())
        return await self._call(build_vitale_request(q, self.context, request_id), ACTION_VITALE, request_id)


def _ssl_context(client_cert: tuple[str, str] | None, verify: str | bool) -> ssl.SSLContext | bool:
    if client_cert is None and not isinstance(verify, str):
        return verify
    if isinstance(verify, str):
        ctx = ssl.create_default_context(cafile=verify)
    else:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        # INSi requires an IGC-Santé organisation certificate whose CN is INSI-AUTO or INSI-MANU.
        ctx.load_cert_chain(certfile=client_cert[0], keyfile=client_cert[1])
    return ctx
