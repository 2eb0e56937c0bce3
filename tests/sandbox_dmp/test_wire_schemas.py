"""What goes on the wire to and from the DMP is valid against the OASIS ebRS 3.0 and IHE XDS.b schemas.

The platform's own DMP client registers, finds, replaces and deletes against the sandbox, an ITI-43 retrieve and a
refused query follow, and every SOAP body of these exchanges, requests and responses, is validated.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from opensegur.connectors.dmp_client import DmpClient, DmpCredentials, DmpEndpoints, DmpIdentity
from opensegur.flows.dmp_feed import DmpRequest
from opensegur.sandbox.dmp import REPOSITORY_UNIQUE_ID
from opensegur.security.pki import TestPki
from opensegur.transactions import xds
from opensegur.transport.mtom import parse_mtom
from opensegur.transport.soap import parse_envelope
from tests.sandbox_dmp.helpers import PAT_TROIS, cda, cx, metadata, new_oid, post, soap
from tests.schemas import schema_errors

pytestmark = pytest.mark.requirement("XDS-SCHEMAS")

BASE = "http://dmp.test/dmp"


class _Recorder(httpx.AsyncBaseTransport):
    """Keeps each request and response as sent, then hands the response on."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.messages: list[tuple[str, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.messages.append((request.headers["content-type"], await request.aread()))
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        self.messages.append((response.headers["content-type"], content))
        return httpx.Response(response.status_code, headers=response.headers, content=content)


_PREFIXES = {
    "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0": "lcm",
    "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0": "query",
    "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0": "rs",
    "urn:ihe:iti:xds-b:2007": "xdsb",
}


def _prefixed(tag: str) -> str:
    ns, _, local = tag[1:].partition("}")
    return f"{_PREFIXES[ns]}:{local}"


async def test_every_body_exchanged_with_the_dmp_is_schema_valid(app: FastAPI, pki: TestPki) -> None:
    recorder = _Recorder(httpx.ASGITransport(app=app))
    dmp = DmpClient(
        DmpEndpoints(f"{BASE}/iti41", f"{BASE}/iti18", f"{BASE}/iti57", f"{BASE}/iti43"),
        DmpCredentials(pki.signing_cert, pki.signing_key),
        DmpIdentity(oid_root="1.2.250.1.999.88"),
        transport=recorder,
    )
    structure = {"idnat_struct": pki.structure_id, "settings": {"secteur_activite": "SA01"}}
    try:
        uid, new_uid = new_oid(), new_oid()
        await dmp.register(DmpRequest(structure, metadata(uid), cda(uid), "I"), None)
        found = await dmp.find(structure, PAT_TROIS, uid)
        assert found is not None
        await dmp.register(DmpRequest(structure, metadata(new_uid), cda(new_uid), "I", uid), found)
        replacement = await dmp.find(structure, PAT_TROIS, new_uid)
        assert replacement is not None
        await dmp.delete(structure, replacement)
    finally:
        await dmp.aclose()
    async with httpx.AsyncClient(transport=recorder, base_url="http://dmp.test") as client:
        retrieve = xds.build_retrieve_request([xds.RetrieveRequest(REPOSITORY_UNIQUE_ID, uid)])
        assert (await post(client, "/dmp/iti43", soap(xds.ACTION_ITI43, retrieve, pki))).status_code == 200
        stranger = cx(
            "1700133063101"
        )  # a patient the VIHF does not name: the registry answers with its errors
        refused = soap(xds.ACTION_ITI18, xds.build_find_documents(stranger), pki)
        assert (await post(client, "/dmp/iti18", refused)).status_code == 200

    seen: list[str] = []
    for content_type, raw in recorder.messages:
        env, parts = parse_mtom(content_type, raw, 100_000_000)
        _headers, body = parse_envelope(env)
        seen.append(_prefixed(body.tag))
        assert schema_errors(body, parts) == [], _prefixed(body.tag)
    assert sorted(set(seen)) == [
        "lcm:SubmitObjectsRequest",  # ITI-57
        "query:AdhocQueryRequest",
        "query:AdhocQueryResponse",
        "rs:RegistryResponse",
        "xdsb:ProvideAndRegisterDocumentSetRequest",
        "xdsb:RetrieveDocumentSetRequest",
        "xdsb:RetrieveDocumentSetResponse",
    ]
    assert any(
        b"RegistryErrorList" in raw for _, raw in recorder.messages
    )  # the refused query's errors, checked


def test_the_schemas_are_in_force() -> None:
    """A body the schemas must refuse is refused: the check above is not vacuous."""
    body = xds.build_retrieve_request([xds.RetrieveRequest(REPOSITORY_UNIQUE_ID, "1.2.3")])
    for child in list(body[0]):
        if child.tag.endswith("DocumentUniqueId"):
            body[0].remove(child)
    assert any("DocumentUniqueId" in e for e in schema_errors(body))
