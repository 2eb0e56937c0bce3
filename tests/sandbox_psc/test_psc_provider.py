"""The sandbox Pro Santé Connect on its own, as any relying party (the platform, a DRIMbox) sees it."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import KeySet

from opensegur.identity.professionals import luhn_valid
from opensegur.ops.demo import luhn_complete
from opensegur.sandbox.psc import SANDBOX_PROFESSIONALS, PscSandbox, create_psc_router

ISSUER = "http://bac-a-sable.test/psc"
REDIRECT = "http://127.0.0.1:8000/connexion/psc/retour"
AUTH = "/psc/protocol/openid-connect/auth"


@pytest.fixture
def psc(tmp_path: Path) -> PscSandbox:
    return PscSandbox(tmp_path / "psc", ISSUER)


@pytest.fixture
async def http(psc: PscSandbox) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(create_psc_router(psc), prefix="/psc")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bac-a-sable.test"
    ) as c:
        yield c


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _params(challenge: str | None, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": "opensegur-plateforme",
        "redirect_uri": REDIRECT,
        "scope": "openid scope_all",
        "state": "etat-1",
        "nonce": "nonce-1",
        "acr_values": "eidas1",
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return params | extra


def _hidden(page: str) -> dict[str, str]:
    return {
        unescape(m.group(1)): unescape(m.group(2))
        for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }


async def _code(http: httpx.AsyncClient, challenge: str, login: str = "pierre.reault") -> str:
    form = await http.get(AUTH, params=_params(challenge))
    assert form.status_code == 200 and "Identifiant e-CPS" in form.text
    password = next(p.password for p in SANDBOX_PROFESSIONALS if p.login == login)
    r = await http.post(AUTH, data=_hidden(form.text) | {"login": login, "password": password})
    assert r.status_code == 303
    location = urlsplit(r.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["etat-1"] and query["iss"] == [ISSUER]
    return query["code"][0]


async def _tokens(http: httpx.AsyncClient, psc: PscSandbox, code: str, verifier: str) -> httpx.Response:
    return await http.post(
        "/psc/protocol/openid-connect/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=(psc.client_id, psc.client_secret),
    )


async def test_discovery_and_jwks(http: httpx.AsyncClient, psc: PscSandbox) -> None:
    for path in ("/psc/.well-known/openid-configuration", "/psc/.well-known/wallet-openid-configuration"):
        meta = (await http.get(path)).json()
        assert meta["issuer"] == ISSUER
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert meta["acr_values_supported"] == ["eidas1"]
        assert meta["introspection_endpoint"] == f"{ISSUER}/protocol/openid-connect/token/introspect"
    keys = (await http.get("/psc/protocol/openid-connect/certs")).json()["keys"]
    assert [k["kid"] for k in keys] == [psc.kid] and "d" not in keys[0]


def test_key_generated_once_per_data_dir(tmp_path: Path) -> None:
    first = PscSandbox(tmp_path / "psc", ISSUER)
    assert (tmp_path / "psc" / "psc-signing-key.pem").stat().st_mode & 0o077 == 0
    assert PscSandbox(tmp_path / "psc", ISSUER).kid == first.kid
    assert PscSandbox(tmp_path / "autre", ISSUER).kid != first.kid


def test_endpoints_entry_lists_fictitious_professionals(psc: PscSandbox) -> None:
    entry = psc.endpoints()
    assert entry["issuer"] == ISSUER and entry["client_id"] and entry["client_secret"]
    reault = next(u for u in entry["users"] if u["login"] == "pierre.reault")
    assert reault["rpps"] == luhn_complete("1000000001") and reault["profession"] == "10"
    assert all(luhn_valid(u["rpps"]) and u["password"] for u in entry["users"])


async def test_code_flow_id_token_userinfo_and_introspection(
    http: httpx.AsyncClient, psc: PscSandbox
) -> None:
    verifier, challenge = _pkce()
    r = await _tokens(http, psc, await _code(http, challenge), verifier)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    keys = KeySet.import_key_set((await http.get("/psc/protocol/openid-connect/certs")).json())
    token = jwt.decode(body["id_token"], keys, algorithms=["RS256"])
    assert token.header["alg"] == "RS256"
    claims = token.claims
    assert claims["iss"] == ISSUER and claims["aud"] == psc.client_id and claims["nonce"] == "nonce-1"
    assert claims["acr"] == "eidas1" and claims["exp"] > claims["iat"]

    info = (
        await http.get(
            "/psc/protocol/openid-connect/userinfo",
            headers={"authorization": f"Bearer {body['access_token']}"},
        )
    ).json()
    rpps = luhn_complete("1000000001")
    assert info["sub"] == claims["sub"] and info["SubjectNameID"] == "8" + rpps
    assert (info["given_name"], info["family_name"]) == ("Pierre", "RÉAULT")
    exercise = info["SubjectRefPro"]["exercices"][0]
    assert exercise["codeProfession"] == "10" and exercise["nomDexercice"] == "RÉAULT"
    assert {"identifiant": rpps, "origine": "RPPS", "qualite": 1} in info["otherIds"]

    introspect = "/psc/protocol/openid-connect/token/introspect"
    auth = (psc.client_id, psc.client_secret)
    active = (await http.post(introspect, data={"token": body["access_token"]}, auth=auth)).json()
    assert (
        active["active"] is True and active["sub"] == claims["sub"] and active["client_id"] == psc.client_id
    )
    assert (await http.post(introspect, data={"token": "inconnu"}, auth=auth)).json() == {"active": False}
    assert (await http.post(introspect, data={"token": body["access_token"]})).status_code == 401


async def test_pkce_required(http: httpx.AsyncClient, psc: PscSandbox) -> None:
    for params in (_params(None), _params("x" * 43, code_challenge_method="plain")):
        r = await http.get(AUTH, params=params)
        assert r.status_code == 303
        query = parse_qs(urlsplit(r.headers["location"]).query)
        assert query["error"] == ["invalid_request"] and "PKCE" in query["error_description"][0]
    # A code redeemed without its verifier, or with another one, gives nothing.
    verifier, challenge = _pkce()
    code = await _code(http, challenge)
    assert (await _tokens(http, psc, code, _pkce()[0])).json()["error"] == "invalid_grant"


async def test_code_redeemed_twice_revokes_its_tokens(http: httpx.AsyncClient, psc: PscSandbox) -> None:
    verifier, challenge = _pkce()
    code = await _code(http, challenge)
    access = (await _tokens(http, psc, code, verifier)).json()["access_token"]
    assert (await _tokens(http, psc, code, verifier)).json()["error"] == "invalid_grant"
    r = await http.get("/psc/protocol/openid-connect/userinfo", headers={"authorization": f"Bearer {access}"})
    assert r.status_code == 401


async def test_wrong_password_and_wrong_client(http: httpx.AsyncClient, psc: PscSandbox) -> None:
    _, challenge = _pkce()
    form = await http.get(AUTH, params=_params(challenge))
    r = await http.post(AUTH, data=_hidden(form.text) | {"login": "pierre.reault", "password": "faux"})
    assert r.status_code == 401 and "Identifiant ou mot de passe incorrect" in r.text
    # An unregistered redirect URI is never redirected to: the error is shown by the provider itself.
    r = await http.get(AUTH, params=_params(challenge, redirect_uri="https://attaquant.example/vol"))
    assert r.status_code == 400 and "redirect_uri" in r.text
    r = await http.post(
        "/psc/protocol/openid-connect/token",
        data={"grant_type": "authorization_code", "code": "x", "code_verifier": "y"},
        auth=(psc.client_id, "mauvais-secret"),
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_client_secret_post_accepted(http: httpx.AsyncClient, psc: PscSandbox) -> None:
    verifier, challenge = _pkce()
    code = await _code(http, challenge, "sophie.morel")
    r = await http.post(
        "/psc/protocol/openid-connect/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": psc.client_id,
            "client_secret": psc.client_secret,
        },
    )
    assert r.status_code == 200 and r.json()["token_type"] == "Bearer"
