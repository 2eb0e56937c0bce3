"""The service that handles a request is the one of its path, whatever its query string says."""

from __future__ import annotations

import httpx

from opensegur.security.pki import TestPki
from opensegur.transactions import xds
from tests.sandbox_dmp.helpers import PAT_TROIS, post, read, soap


async def test_query_string_cannot_pick_another_service(client: httpx.AsyncClient, pki: TestPki) -> None:
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), pki)
    resp = await post(client, "/dmp/iti18?_name=iti41&transaction=td02", req)
    assert resp.status_code == 200
    assert xds.parse_query_response(read(resp)[0]).status == "Success"
    calls = (await client.get("/dmp/_admin/calls")).json()
    assert calls[-1]["transaction"] == "iti18"
