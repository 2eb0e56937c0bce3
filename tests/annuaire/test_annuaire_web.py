"""The directory page and JSON API, with the sandbox directory up, down, or not configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.sandbox.annuaire import SANDBOX_API_KEY
from opensegur.security.actor import Actor
from opensegur.web.deps import AccessRefused
from opensegur.web.routes.annuaire import router
from tests.actors import EVERYONE, act_as
from tests.annuaire.conftest import closed_port


def web_app(client: AnnuaireClient | None, actor: Actor | None = EVERYONE) -> FastAPI:
    app = FastAPI()
    app.state.runtime = SimpleNamespace(settings=SimpleNamespace(), annuaire=client)
    app.include_router(router)
    return act_as(app, actor)  # type: ignore[no-any-return]


async def http_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://opensegur.test")


@pytest.fixture
async def web(client: AnnuaireClient) -> AsyncIterator[httpx.AsyncClient]:
    async with await http_for(web_app(client)) as http:
        yield http


@pytest.fixture
async def down() -> AsyncIterator[httpx.AsyncClient]:
    unreachable = AnnuaireClient(f"http://127.0.0.1:{closed_port()}/fhir/v2", SANDBOX_API_KEY, timeout=2.0)
    async with await http_for(web_app(unreachable)) as http:
        yield http
    await unreachable.aclose()


async def test_page_without_criteria_invites_a_search(web: httpx.AsyncClient) -> None:
    r = await web.get("/annuaire")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'lang="fr"' in r.text and "Saisissez au moins un critère" in r.text
    assert "resultats-annuaire" not in r.text


async def test_page_lists_practitioners_with_typed_mailboxes(web: httpx.AsyncClient) -> None:
    r = await web.get("/annuaire", params={"nom": "dupont"})
    assert r.status_code == 200
    page = r.text
    assert "1 professionnel(s) trouvé(s)" in page
    assert "DR Jean DUPONT" in page and "Médecine interne" in page
    assert "CHU-X — site Breteuil (démo)" in page and "PARIS" in page
    for address, label in [
        ("jean.dupont@hopital-A.mssante.fr", "personnelle"),
        ("radiologie@hopitalA.mssante.fr", "organisationnelle"),
        ("dpi@hopitalA.mssante.fr", "applicative"),
    ]:
        assert f'data-mss-address="{address}"' in page
        assert label in page
    assert "Choisir" not in page


async def test_page_by_city_and_by_rpps(web: httpx.AsyncClient) -> None:
    r = await web.get("/annuaire", params={"ville": "saint-étienne"})
    assert "ROUSSEAU" in r.text and "SAINT-ÉTIENNE" in r.text
    r = await web.get("/annuaire", params={"rpps": "01234567897"})
    assert "adam.hoda@test-ci-sis.mssante.fr" in r.text
    r = await web.get("/annuaire", params={"nom": "zzzz-personne"})
    assert "Aucun professionnel ne correspond" in r.text
    r = await web.get("/annuaire", params={"rpps": "123"})
    assert 'role="alert"' in r.text and "RPPS" in r.text and "11 chiffres" in r.text


async def test_pick_link_goes_back_to_a_local_page_only(web: httpx.AsyncClient) -> None:
    r = await web.get("/annuaire", params={"nom": "hoda", "retour": "/messagerie/nouveau?brouillon=3"})
    assert (
        'href="/messagerie/nouveau?brouillon=3&amp;destinataire=adam.hoda%40test-ci-sis.mssante.fr"' in r.text
    )
    for hostile in ("//pirate.example/x", "https://pirate.example/x", "/\\pirate.example"):
        r = await web.get("/annuaire", params={"nom": "hoda", "retour": hostile})
        assert "Choisir" not in r.text and "pirate" not in r.text


async def test_page_says_in_french_when_the_directory_is_down(down: httpx.AsyncClient) -> None:
    r = await down.get("/annuaire", params={"nom": "hoda"})
    assert r.status_code == 200
    assert "Annuaire santé indisponible" in r.text and "injoignable" in r.text
    assert "resultats-annuaire" not in r.text


async def test_page_and_api_when_no_directory_is_configured() -> None:
    async with await http_for(web_app(None)) as http:
        r = await http.get("/annuaire", params={"nom": "hoda"})
        assert "pas configuré sur cette plateforme" in r.text
        r = await http.get("/api/v1/annuaire/practitioners", params={"name": "hoda"})
        assert r.status_code == 503 and "n'est pas configuré" in r.json()["detail"]


async def test_api_search_returns_the_documented_model(web: httpx.AsyncClient) -> None:
    r = await web.get("/api/v1/annuaire/practitioners", params={"city": "lyon", "name": "bernard"})
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 1
    (item,) = body["items"]
    assert item["rpps"] == "10010000189" and item["profession"] == "Médecin"
    assert {o["city"] for o in item["organizations"]} == {"LYON", "PARIS"}
    types = [(m["address"], m["type"], m["type_label"]) for m in item["mailboxes"]]
    assert ("cardio.bellecour@medecin.mssante.fr", "CAB", "cabinet") in types
    assert ("serviceY@chb.mssante.fr", "ORG", "organisationnelle") in types
    schema = (await web.get("/openapi.json")).json()
    op = schema["paths"]["/api/v1/annuaire/practitioners"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchOut")
    assert {"MailboxOut", "EntryOut", "OrganizationOut"} <= set(schema["components"]["schemas"])


async def test_api_errors_map_to_http_statuses(web: httpx.AsyncClient, down: httpx.AsyncClient) -> None:
    r = await web.get("/api/v1/annuaire/practitioners")
    assert r.status_code == 400 and "au moins un critère" in r.json()["detail"]
    r = await web.get("/api/v1/annuaire/practitioners", params={"rpps": "abc"})
    assert r.status_code == 400
    r = await web.get("/api/v1/annuaire/practitioners", params={"name": "x", "limit": 1000})
    assert r.status_code == 422
    r = await down.get("/api/v1/annuaire/practitioners", params={"name": "hoda"})
    assert r.status_code == 503 and "injoignable" in r.json()["detail"]


async def test_api_refuses_nobody_and_answers_a_logged_in_reader(client: AnnuaireClient) -> None:
    app = web_app(client, None)
    app.add_exception_handler(
        AccessRefused, lambda req, exc: JSONResponse({"detail": exc.message}, exc.status)
    )
    async with await http_for(app) as http:
        r = await http.get("/api/v1/annuaire/practitioners", params={"name": "hoda"})
        assert r.status_code == 401 and r.json()["detail"] == "Connexion requise"
    async with await http_for(web_app(client)) as http:
        r = await http.get("/api/v1/annuaire/practitioners", params={"name": "hoda"})
        assert r.status_code == 200 and r.json()["total"] == 1
