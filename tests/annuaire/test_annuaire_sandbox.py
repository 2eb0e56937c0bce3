"""The simulated Annuaire Santé API: key, FHIR shapes, search semantics, paging, errors, fixtures."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from opensegur.identity.directory import (
    EXT_EMAIL_TYPE,
    EXT_MAILBOX_METADATA,
    SYSTEM_IDNAT_PS,
    SYSTEM_MAILBOX_TYPE,
)
from opensegur.identity.professionals import luhn_valid
from opensegur.ops.demo import demo_config, luhn_complete
from opensegur.sandbox.annuaire import SANDBOX_API_KEY, directory_mailboxes
from opensegur.sandbox.annuaire.fixtures import load_directory
from tests.annuaire.conftest import BASE, sandbox_app

KEY = {"ESANTE-API-KEY": SANDBOX_API_KEY}
ANS_EXAMPLE_RECIPIENTS = [
    "adam.hoda@test-ci-sis.mssante.fr",
    "thomas.eric@medecin.mssante.fr",
    "janet.blanc@medecin.mssante.fr",
    "jean.dupont@hopital-A.mssante.fr",
    "appliExemple@hopitalB.mssante.fr",
    "serviceY@chb.mssante.fr",
    "serviceY_auto@chb.mssante.fr",
    "radiologie@hopitalA.mssante.fr",
    "dpi@hopitalA.mssante.fr",
]


async def search(c: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    # httpx would drop a query string already in ``path`` (page links) when given an empty params dict.
    r = await c.get(path, params=params or None, headers=KEY)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return dict(body)


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def families(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["name"][0]["family"] for e in bundle["entry"] if e["search"]["mode"] == "match"]


# ---- fixtures ---------------------------------------------------------------------------------------------------


def test_fixtures_cover_the_ans_recipients_and_the_demo_ght() -> None:
    boxes = directory_mailboxes()
    assert set(ANS_EXAMPLE_RECIPIENTS) <= set(boxes)
    assert len(boxes) == len(set(boxes))
    data = load_directory()
    assert len(data.practitioners) >= 25
    rpps = [
        i["value"]
        for p in data.practitioners
        for i in p["identifier"]
        if i["type"]["coding"][0]["code"] == "RPPS"
    ]
    assert len(rpps) == len(set(rpps)) == len(data.practitioners)
    assert all(luhn_valid(r) for r in rpps)
    finess = {
        i["value"]
        for o in data.organizations
        for i in o["identifier"]
        if i["system"].endswith("finess.sante.gouv.fr")
    }
    assert {site.finess for site in demo_config().sites} <= finess
    # The six hospital professionals of the demo GHT keep the RPPS ops.demo gives them.
    assert {luhn_complete(f"1000{i:06d}") for i in range(1, 7)} <= set(rpps)


# ---- API key, errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"ESANTE-API-KEY": "mauvaise-cle"}])
async def test_missing_or_wrong_api_key_is_a_401_operation_outcome(
    sandbox: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    r = await sandbox.get("/Practitioner", params={"name": "hoda"}, headers=headers)
    assert r.status_code == 401
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "security"
    assert "ESANTE-API-KEY" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("path", "params", "fragment"),
    [
        ("/Practitioner", {"address-city": "Lyon"}, "inconnu"),
        ("/Practitioner", {"_count": "beaucoup"}, "_count"),
        ("/Practitioner", {"_count": "-1"}, "_count"),
        ("/Practitioner", {"identifier:contains": "1"}, "Modificateur"),
        ("/Practitioner", {"name:sounds": "hoda"}, "Modificateur"),
        ("/Practitioner", {"_include": "PractitionerRole:organization"}, "_include"),
        ("/Organization", {"_revinclude": "Device:organization"}, "_revinclude"),
        ("/Practitioner", {"active": "peut-etre"}, "active"),
        ("/Practitioner", {"name": ""}, "sans valeur"),
        ("/Practitioner", {"_format": "xml"}, "JSON"),
        ("/_page", {"id": "pas-une-page"}, "page"),
    ],
)
async def test_bad_parameters_are_a_400_operation_outcome(
    sandbox: httpx.AsyncClient, path: str, params: dict[str, str], fragment: str
) -> None:
    r = await sandbox.get(path, params=params, headers=KEY)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert fragment in r.json()["issue"][0]["diagnostics"]


async def test_read_by_id_and_404(sandbox: httpx.AsyncClient) -> None:
    r = await sandbox.get("/Practitioner/003-01234567897", headers=KEY)
    assert r.status_code == 200 and r.json()["name"][0]["family"] == "HODA"
    r = await sandbox.get("/Practitioner/003-00000000000", headers=KEY)
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found"
    r = await sandbox.get("/Organization/001-breteuil", headers=KEY)
    assert r.status_code == 200 and r.json()["name"].startswith("CHU-X")


async def test_metadata_needs_the_key_and_lists_the_resources(sandbox: httpx.AsyncClient) -> None:
    assert (await sandbox.get("/metadata")).status_code == 401
    r = await sandbox.get("/metadata", headers=KEY)
    types = {res["type"] for res in r.json()["rest"][0]["resource"]}
    assert types == {"Practitioner", "PractitionerRole", "Organization"}


# ---- search semantics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fevrier", "FÉVRIER", "Février", "hélène", "HELENE FEVRIER", "fev"])
async def test_name_search_ignores_case_and_accents(sandbox: httpx.AsyncClient, name: str) -> None:
    assert families(await search(sandbox, "/Practitioner", name=name)) == ["FÉVRIER"]


async def test_family_given_contains_and_exact(sandbox: httpx.AsyncClient) -> None:
    assert sorted(families(await search(sandbox, "/Practitioner", family="martin"))) == ["MARTIN", "MARTIN"]
    assert families(await search(sandbox, "/Practitioner", family="martin", given="paul")) == ["MARTIN"]
    assert families(await search(sandbox, "/Practitioner", **{"name:contains": "breto"})) == ["LE BRETON"]
    assert families(await search(sandbox, "/Practitioner", **{"family:exact": "martin"})) == []
    assert len(families(await search(sandbox, "/Practitioner", name="hoda,eric"))) == 2


async def test_identifier_by_rpps_idnat_ps_and_system(sandbox: httpx.AsyncClient) -> None:
    for token in ["01234567897", "801234567897", f"{SYSTEM_IDNAT_PS}|801234567897"]:
        assert families(await search(sandbox, "/Practitioner", identifier=token)) == ["HODA"], token
    assert families(await search(sandbox, "/Practitioner", identifier="http://autre|01234567897")) == []


async def test_revinclude_roles_then_include_organizations(sandbox: httpx.AsyncClient) -> None:
    bundle = await search(
        sandbox, "/Practitioner", identifier="10010000189", _revinclude="PractitionerRole:practitioner"
    )
    (bernard,) = ids(bundle)
    roles = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert {r["resourceType"] for r in roles} == {"PractitionerRole"} and len(roles) == 2
    assert all(r["practitioner"]["reference"] == f"Practitioner/{bernard}" for r in roles)
    bundle = await search(sandbox, "/PractitionerRole", practitioner=bernard, _include="*")
    included = {e["resource"]["resourceType"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert included == {"Practitioner", "Organization"}
    assert bundle["entry"][0]["fullUrl"].startswith(f"{BASE}/PractitionerRole/")


async def test_organization_by_city_accent_insensitive_with_roles(sandbox: httpx.AsyncClient) -> None:
    bundle = await search(
        sandbox,
        "/Organization",
        **{"address-city": "saint-etienne", "_revinclude": "PractitionerRole:organization"},
    )
    assert ids(bundle) == ["001-cab-rousseau"]
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Organization", "PractitionerRole"]
    assert len(ids(await search(sandbox, "/Organization", **{"address-postalcode": "750"}))) == 6


async def test_mailboxes_carry_the_mss_extensions_and_type(sandbox: httpx.AsyncClient) -> None:
    bundle = await search(sandbox, "/Organization", **{"mailbox-mss:contains": "hopitalA"})
    (breteuil,) = [e["resource"] for e in bundle["entry"]]
    kinds = {}
    for t in breteuil["telecom"]:
        exts = {e["url"]: e for e in t["extension"]}
        assert exts[EXT_EMAIL_TYPE]["valueCoding"]["code"] == "MSSANTE"
        meta = {e["url"]: e for e in exts[EXT_MAILBOX_METADATA]["extension"]}
        coding = meta["type"]["valueCodeableConcept"]["coding"][0]
        assert coding["system"] == SYSTEM_MAILBOX_TYPE
        kinds[t["value"]] = coding["code"]
    assert kinds == {"radiologie@hopitalA.mssante.fr": "ORG", "dpi@hopitalA.mssante.fr": "APP"}


# ---- paging ---------------------------------------------------------------------------------------------------


async def test_count_is_capped_and_next_links_walk_every_result() -> None:
    app = sandbox_app(max_count=5)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        bundle = await search(c, "/Practitioner", _count="1000")
        assert bundle["total"] == 25 and len(ids(bundle)) == 5
        seen = ids(bundle)
        while nxt := next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None):
            assert nxt.startswith(f"{BASE}/_page?id=")
            bundle = await search(c, nxt)
            seen += ids(bundle)
        assert len(seen) == len(set(seen)) == 25
        # Without the key, a page link is refused like any other call.
        assert (await c.get(f"{BASE}/Practitioner", params={"_count": "2"})).status_code == 401


async def test_admin_faults_and_call_log(sandbox: httpx.AsyncClient) -> None:
    admin = "http://annuaire.test/annuaire/_admin"
    assert (await sandbox.post(f"{admin}/faults", json={"status": 503, "count": 1})).status_code == 200
    r = await sandbox.get("/Practitioner", params={"name": "hoda"}, headers=KEY)
    assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome"
    assert (await sandbox.get("/Practitioner", params={"name": "hoda"}, headers=KEY)).status_code == 200
    calls = (await sandbox.get(f"{admin}/calls")).json()
    assert [c["path"] for c in calls] == ["/Practitioner", "/Practitioner"]
    assert (await sandbox.post(f"{admin}/reset")).json() == {"status": "ok"}
    assert (await sandbox.get(f"{admin}/calls")).json() == []
