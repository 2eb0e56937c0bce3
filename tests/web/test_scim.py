"""SCIM 2.0 through the real application with real tokens and cookies: users and groups, refusals, SCIM error
shapes, the RPPS checked against the sandbox directory, and the attack: a departed employee's session and token
refused on the very next request after the HR feed says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.sandbox.annuaire import SANDBOX_API_KEY
from opensegur.security import sessions, tokens
from opensegur.store.models import Account
from opensegur.web.app import create_app
from opensegur.web.deps import SESSION_COOKIE
from opensegur.web.routes import scim
from tests.annuaire.conftest import BASE, sandbox_app
from tests.web.test_rest_intake import Offline

EXT = scim.EXTENSION
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


@dataclass
class ScimRuntime(Offline):
    annuaire: AnnuaireClient | None = None


@pytest.fixture
async def runtime(offline: Offline) -> AsyncIterator[ScimRuntime]:
    client = AnnuaireClient(BASE, SANDBOX_API_KEY, transport=httpx.ASGITransport(app=sandbox_app()))
    yield ScimRuntime(offline.settings, offline.db, offline.intake, annuaire=client)
    await client.aclose()


@pytest.fixture
async def web(runtime: ScimRuntime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime)
    app.include_router(scim.router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test"
    ) as c:
        yield c


def bearer(runtime: ScimRuntime, name: str, role: str) -> dict[str, str]:
    with runtime.db.session() as s:
        return {"authorization": f"Bearer {tokens.create_token(s, name, role, created_by='test')}"}


@pytest.fixture
def admin(runtime: ScimRuntime) -> dict[str, str]:
    return bearer(runtime, "scim-rh", "admin_technique")


def user(
    login: str = "M1001", role: str = "medecin", perimetre: str = "unit:750000028/6268", **kw: Any
) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", EXT],
        "userName": login,
        "name": {"givenName": "Jean", "familyName": "Dupont"},
        "roles": [{"value": role}],
        EXT: {"rpps": "10010000189", "perimetre": perimetre},
    } | kw


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": list(operations)}


def is_error(r: httpx.Response, status: int, scim_type: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = r.json()
    assert r.status_code == status and r.headers["content-type"].startswith("application/scim+json"), r.text
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    assert body.get("scimType") == scim_type
    return body


async def test_create_read_list_filter_and_move(web: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await web.post("/scim/v2/Users", json=user(), headers=admin)
    assert r.status_code == 201 and r.headers["content-type"].startswith("application/scim+json")
    created = r.json()
    assert (created["userName"], created["displayName"], created["active"]) == ("m1001", "Jean DUPONT", True)
    assert created[EXT]["affectations"] == [{"role": "medecin", "scope": "unit:750000028/6268"}]
    assert r.headers["location"].endswith(f"/scim/v2/Users/{created['id']}")
    assert (await web.get(f"/scim/v2/Users/{created['id']}", headers=admin)).json()["userName"] == "m1001"

    await web.post("/scim/v2/Users", json=user("m2002", "ide", "unit:750000036/1303"), headers=admin)
    listed = (await web.get("/scim/v2/Users", headers=admin)).json()
    assert listed["totalResults"] == 2 and listed["schemas"] == [
        "urn:ietf:params:scim:api:messages:2.0:ListResponse"
    ]
    found = (await web.get("/scim/v2/Users", params={"filter": 'userName eq "M1001"'}, headers=admin)).json()
    assert [u["id"] for u in found["Resources"]] == [created["id"]]
    is_error(
        await web.get("/scim/v2/Users", params={"filter": 'name co "x"'}, headers=admin), 400, "invalidFilter"
    )

    # A unit move: a new perimetre.
    r = await web.patch(
        f"/scim/v2/Users/{created['id']}",
        json=patch({"op": "replace", "path": f"{EXT}:perimetre", "value": "unit:750000028/4010"}),
        headers=admin,
    )
    assert r.status_code == 200 and r.json()[EXT]["perimetre"] == "unit:750000028/4010"

    # Groups are the roles: adding a member gives the role in the user's perimetre.
    r = await web.patch(
        "/scim/v2/Groups/interne",
        json=patch({"op": "add", "path": "members", "value": [{"value": created["id"]}]}),
        headers=admin,
    )
    assert r.status_code == 200 and [m["display"] for m in r.json()["members"]] == ["m1001"]
    assert {
        g["value"] for g in (await web.get(f"/scim/v2/Users/{created['id']}", headers=admin)).json()["groups"]
    } == {
        "medecin",
        "interne",
    }
    r = await web.patch(
        "/scim/v2/Groups/interne",
        json=patch({"op": "remove", "path": f'members[value eq "{created["id"]}"]'}),
        headers=admin,
    )
    assert r.json()["members"] == []
    groups = (
        await web.get("/scim/v2/Groups", params={"filter": 'displayName eq "Médecin"'}, headers=admin)
    ).json()
    assert [g["id"] for g in groups["Resources"]] == ["medecin"]
    for path in ("ServiceProviderConfig", "ResourceTypes", "Schemas"):
        assert (await web.get(f"/scim/v2/{path}", headers=admin)).status_code == 200


async def test_errors_are_scim_errors(
    web: httpx.AsyncClient, admin: dict[str, str], runtime: ScimRuntime
) -> None:
    await web.post("/scim/v2/Users", json=user(), headers=admin)
    is_error(await web.post("/scim/v2/Users", json=user(), headers=admin), 409, "uniqueness")
    is_error(await web.post("/scim/v2/Users", content=b"{pas du json", headers=admin), 400, "invalidSyntax")
    body = is_error(
        await web.post("/scim/v2/Users", json=user("m3", role="chef"), headers=admin), 400, "invalidValue"
    )
    assert "rôle « chef » inconnu" in body["detail"]
    is_error(
        await web.post("/scim/v2/Users", json=user("m4", perimetre="unit:750000028/9999"), headers=admin),
        400,
        "invalidValue",
    )
    is_error(
        await web.post("/scim/v2/Users", json=user("m5", externalId="autre"), headers=admin),
        400,
        "invalidValue",
    )
    is_error(await web.get("/scim/v2/Users/999999", headers=admin), 404)
    is_error(await web.get("/scim/v2/Users/abc", headers=admin), 404)
    is_error(await web.get("/scim/v2/Groups/chef", headers=admin), 404)
    is_error(
        await web.patch("/scim/v2/Users/1", json={"Operations": []}, headers=admin), 400, "invalidSyntax"
    )
    # An account the HR feed did not create is out of SCIM's reach.
    with runtime.db.session() as s:
        from opensegur.security import accounts
        from opensegur.security.matrix import Assignment, Scope

        local, _ = accounts.create_account(
            s, "admin", "Admin", [Assignment("admin_technique", Scope("ght"))], None
        )
        local_id = local.id
    is_error(await web.delete(f"/scim/v2/Users/{local_id}", headers=admin), 404)
    is_error(await web.post("/scim/v2/Users", json=user("admin"), headers=admin), 409, "uniqueness")


async def test_rpps_unknown_to_the_sandbox_directory_is_refused(
    web: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = user("m7") | {EXT: {"rpps": "10019999993", "perimetre": "ght"}}
    detail = is_error(await web.post("/scim/v2/Users", json=body, headers=admin), 400, "invalidValue")[
        "detail"
    ]
    assert "RPPS 10019999993 inconnu de l'Annuaire Santé" in detail
    bad_key = user("m8") | {EXT: {"rpps": "10019999990", "perimetre": "ght"}}
    detail = is_error(await web.post("/scim/v2/Users", json=bad_key, headers=admin), 400, "invalidValue")[
        "detail"
    ]
    assert "clé de contrôle (Luhn) fausse" in detail


async def test_refused_without_token_or_without_the_admin_role(
    web: httpx.AsyncClient, runtime: ScimRuntime
) -> None:
    for path in ("/scim/v2/Users", "/scim/v2/Groups", "/scim/v2/ServiceProviderConfig"):
        r = await web.get(path)
        assert is_error(r, 401) and r.headers["www-authenticate"] == "Bearer"
        is_error(await web.get(path, headers={"authorization": "Bearer osg_faux"}), 401)
    doctor = bearer(runtime, "integration-dpi", "medecin")
    assert (
        "Votre rôle ne permet pas"
        in is_error(await web.post("/scim/v2/Users", json=user(), headers=doctor), 403)["detail"]
    )
    with runtime.db.session() as s:
        assert s.query(Account).count() == 0


async def test_a_departed_employee_is_refused_on_the_very_next_request(
    web: httpx.AsyncClient, admin: dict[str, str], runtime: ScimRuntime
) -> None:
    created = (await web.post("/scim/v2/Users", json=user(perimetre="ght"), headers=admin)).json()
    leaver = (await web.post("/scim/v2/Users", json=user("m2002", perimetre="ght"), headers=admin)).json()
    with runtime.db.session() as s:
        sessions_and_tokens = []
        for login in ("m1001", "m2002"):
            account = s.query(Account).filter_by(login=login).one()
            cookie, _ = sessions.open_session(s, account, "psc", True, "127.0.0.1", "test")
            token = tokens.create_token(s, f"script-{login}", "medecin", created_by=login)
            sessions_and_tokens.append((cookie, token))

    async def calls(cookie: str, token: str) -> tuple[int, int]:
        web.cookies.set(SESSION_COOKIE, cookie)
        by_cookie = await web.get("/api/v1/documents")
        web.cookies.clear()
        by_token = await web.get("/api/v1/documents", headers={"authorization": f"Bearer {token}"})
        return by_cookie.status_code, by_token.status_code

    for pair in sessions_and_tokens:
        assert await calls(*pair) == (200, 200)
    # The HR feed says: departure (PATCH active false, as Entra ID sends it: a string).
    r = await web.patch(
        f"/scim/v2/Users/{created['id']}",
        json=patch({"op": "Replace", "value": {"active": "False"}}),
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["active"] is False
    assert await calls(*sessions_and_tokens[0]) == (401, 401)
    # DELETE is a departure too; the account stays for the audit trail, inactive.
    assert (await web.delete(f"/scim/v2/Users/{leaver['id']}", headers=admin)).status_code == 204
    assert await calls(*sessions_and_tokens[1]) == (401, 401)
    assert (await web.get(f"/scim/v2/Users/{leaver['id']}", headers=admin)).json()["active"] is False
    # Coming back is explicit.
    r = await web.patch(
        f"/scim/v2/Users/{created['id']}",
        json=patch({"op": "replace", "path": "active", "value": True}),
        headers=admin,
    )
    assert r.json()["active"] is True
