"""The Annuaire Santé connector against the sandbox (real HTTP and in process) and against hostile servers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from opensegur.connectors.annuaire_client import (
    AnnuaireClient,
    AnnuaireError,
    AnnuaireQueryError,
    AnnuaireUnavailable,
)
from opensegur.identity.directory import EXT_EMAIL_TYPE, EXT_MAILBOX_METADATA, MailboxType
from opensegur.ops.demo import luhn_complete
from opensegur.sandbox.annuaire import SANDBOX_API_KEY
from tests.annuaire.conftest import BASE, closed_port, sandbox_app

BERNARD_RPPS = "10010000189"


def by_family(entries: list[Any]) -> dict[str, Any]:
    return {e.practitioner.family_name: e for e in entries}


# ---- against the sandbox over a real socket ----------------------------------------------------------------------


async def test_real_http_name_rpps_city_and_paging(live: str) -> None:
    client = AnnuaireClient(live, SANDBOX_API_KEY, timeout=5.0)
    try:
        (fevrier,) = await client.search_practitioners(name="fevrier")
        p = fevrier.practitioner
        assert (p.family_name, p.given_name, p.civility) == ("FÉVRIER", "Hélène", "DR")
        assert (p.profession, p.specialty) == ("Médecin", "Médecine générale")
        assert [(o.name, o.city) for o in fevrier.organizations] == [
            ("Cabinet médical Croix-Rousse (démo)", "LYON")
        ]
        assert [(m.address, m.type) for m in fevrier.mailboxes] == [
            ("helene.fevrier@medecin.mssante.fr", MailboxType.PER)
        ]

        (hoda,) = await client.search_practitioners(rpps="012 3456 7897")
        assert hoda.practitioner.rpps == "01234567897"
        assert {m.address for m in hoda.mailboxes} == {
            "adam.hoda@test-ci-sis.mssante.fr",
            "adam.hoda@medecin.mssante.fr",
        }

        # The sandbox pages every 5 results: 14 practitioners work in Paris, found across pages.
        paris = await client.search_practitioners(city="paris", limit=100)
        assert len(paris) == len({e.practitioner.id for e in paris}) == 14
        assert {"HODA", "DUPONT", "BERNARD", "OKAFOR"} <= set(by_family(paris))
        assert len(await client.search_practitioners(city="paris", limit=3)) == 3
    finally:
        await client.aclose()


# ---- against the sandbox in process ------------------------------------------------------------------------------


async def test_city_search_resolves_every_practice_place(client: AnnuaireClient) -> None:
    lyon = by_family(await client.search_practitioners(city="Lyon"))
    assert set(lyon) == {"FÉVRIER", "BERNARD", "GARNIER", "PETIT"}
    bernard = lyon["BERNARD"]
    assert {o.city for o in bernard.organizations} == {"LYON", "PARIS"}
    assert [(m.address, m.type.label) for m in bernard.personal_mailboxes] == [
        ("julien.bernard@medecin.mssante.fr", "personnelle"),
        ("cardio.bellecour@medecin.mssante.fr", "cabinet"),
        ("julien.bernard@chb.mssante.fr", "personnelle"),
    ]
    garnier = lyon["GARNIER"]
    assert garnier.practitioner.specialty == "Radio-diagnostic"
    assert [(m.address, m.type) for m in garnier.mailboxes][-1] == (
        "secretariat@radiologie-du-parc.mssante.fr",
        MailboxType.ORG,
    )


async def test_name_and_city_together(client: AnnuaireClient) -> None:
    (martin,) = await client.search_practitioners(name="martin", city="bordeaux")
    assert martin.practitioner.given_name == "Paul"
    assert await client.search_practitioners(name="martin", city="marseille") == []
    assert await client.search_practitioners(name="personne-inconnue") == []


async def test_hospital_practitioner_reaches_personal_organisational_and_applicative_boxes(
    client: AnnuaireClient,
) -> None:
    (dupont,) = await client.search_practitioners(name="jean dupont")
    kinds = [(m.address, m.type_label) for m in dupont.mailboxes]
    assert kinds == [
        ("jean.dupont@hopital-A.mssante.fr", "personnelle"),
        ("radiologie@hopitalA.mssante.fr", "organisationnelle"),
        ("dpi@hopitalA.mssante.fr", "applicative"),
    ]
    dpi = dupont.mailboxes[2]
    assert dpi.owner_finess == "750000028" and dpi.owner_rpps is None and dpi.description


async def test_mailboxes_of_and_search_mailboxes(client: AnnuaireClient) -> None:
    assert [m.type for m in await client.mailboxes_of(BERNARD_RPPS)] == [
        MailboxType.PER,
        MailboxType.CAB,
        MailboxType.PER,
    ]
    assert await client.mailboxes_of("10010009999") == []
    service_y = {m.address: m for m in await client.search_mailboxes("serviceY")}
    assert set(service_y) == {"serviceY@chb.mssante.fr", "serviceY_auto@chb.mssante.fr"}
    assert service_y["serviceY@chb.mssante.fr"].type is MailboxType.ORG
    assert service_y["serviceY_auto@chb.mssante.fr"].owner_name == "Hôpital Saint-Vincent (démo)"
    (eric,) = await client.search_mailboxes("thomas.eric@")
    assert (eric.type, eric.owner_rpps) == (MailboxType.PER, "10010000015")
    (jd,) = await client.search_mailboxes("jean.dupont")
    assert jd.owner_finess == "750000028"
    with pytest.raises(AnnuaireQueryError, match="au moins 3 caractères"):
        await client.search_mailboxes("ab")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({}, "au moins un critère"), ({"name": "  "}, "au moins un critère"), ({"rpps": "12AB"}, "RPPS")],
)
async def test_unusable_criteria(client: AnnuaireClient, kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(AnnuaireQueryError, match=fragment):
        await client.search_practitioners(**kwargs)


async def test_wrong_api_key_is_a_clear_error() -> None:
    from tests.annuaire.conftest import sandbox_app

    client = AnnuaireClient(BASE, "cle-perimee", transport=httpx.ASGITransport(app=sandbox_app()))
    with pytest.raises(AnnuaireError, match="clé d'API") as err:
        await client.search_practitioners(name="hoda")
    assert err.value.status_code == 401 and not isinstance(err.value, AnnuaireUnavailable)
    await client.aclose()


async def test_unreachable_and_injected_outage_are_unavailable(live: str) -> None:
    down = AnnuaireClient(f"http://127.0.0.1:{closed_port()}/fhir/v2", SANDBOX_API_KEY, timeout=2.0)
    with pytest.raises(AnnuaireUnavailable, match="injoignable"):
        await down.search_practitioners(name="hoda")
    await down.aclose()
    client = AnnuaireClient(live, SANDBOX_API_KEY, timeout=0.5)
    admin = live.replace("/fhir/v2", "/_admin")
    async with httpx.AsyncClient() as http:
        await http.post(f"{admin}/faults", json={"status": 503, "count": 1})
        with pytest.raises(AnnuaireUnavailable, match="HTTP 503") as err:
            await client.search_practitioners(name="hoda")
        assert err.value.status_code == 503
        await http.post(f"{admin}/faults", json={"delay_s": 2, "count": 1})
        with pytest.raises(AnnuaireUnavailable, match="à temps"):
            await client.search_practitioners(name="hoda")
    assert len(await client.search_practitioners(name="hoda")) == 1
    await client.aclose()


async def test_logs_carry_no_name_rpps_or_address(
    client: AnnuaireClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="opensegur.annuaire"):
        await client.search_practitioners(name="Février", rpps="10010000106")
        await client.search_mailboxes("helene.fevrier")
    assert caplog.records
    text = caplog.text.casefold()
    for secret in ("février", "fevrier", "hélène", "10010000106", "mssante"):
        assert secret not in text


# ---- against hostile or broken servers ---------------------------------------------------------------------------


def fake(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> AnnuaireClient:
    return AnnuaireClient(BASE, "k", transport=httpx.MockTransport(handler), **kwargs)


def bundle(entries: list[dict[str, Any]], links: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries, "link": links or []}


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>maintenance</html>"),
        httpx.Response(200, json={"resourceType": "OperationOutcome"}),
        httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction", "entry": []}),
        httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": {"a": 1}}),
        httpx.Response(200, json=bundle([{"resource": {"resourceType": "Practitioner"}}])),
        httpx.Response(200, json=bundle([{"resource": {"resourceType": "Patient", "id": "x"}}])),
        httpx.Response(200, json=bundle([], [{"relation": "next", "url": "javascript:alert(1)"}])),
        httpx.Response(200, json=[1, 2, 3]),
    ],
)
async def test_malformed_bundle_is_a_clear_error(response: httpx.Response) -> None:
    client = fake(lambda request: response)
    with pytest.raises(AnnuaireError, match="mal formée") as err:
        await client.search_practitioners(name="hoda")
    assert not isinstance(err.value, AnnuaireUnavailable)
    await client.aclose()


async def test_oversized_answer_is_refused_declared_or_streamed() -> None:
    big = json.dumps(bundle([])).encode() + b" " * 5000

    async def stream() -> Any:
        for _ in range(10):
            yield b" " * 1000

    for response in (
        httpx.Response(200, content=big),  # Content-Length announced
        httpx.Response(200, content=stream()),  # chunked: counted while reading
    ):
        client = fake(lambda request, r=response: r, max_response_bytes=4096)
        with pytest.raises(AnnuaireError, match="trop volumineuse"):
            await client.search_practitioners(name="hoda")
        await client.aclose()


async def test_next_link_to_another_host_is_not_followed_with_the_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        practitioner = {"resourceType": "Practitioner", "id": "p1", "name": [{"family": "X"}]}
        return httpx.Response(
            200,
            json=bundle(
                [{"resource": practitioner, "search": {"mode": "match"}}],
                [{"relation": "next", "url": "https://collecteur.example/steal"}],
            ),
        )

    client = fake(handler)
    with pytest.raises(AnnuaireError, match="autre serveur"):
        await client.search_practitioners(name="x", limit=5)
    assert {r.url.host for r in seen} == {"annuaire.test"}
    assert all(r.headers["ESANTE-API-KEY"] == "k" for r in seen)
    await client.aclose()


async def test_lenient_reading_of_real_world_shapes() -> None:
    """Mode-less entries, mailboxes in contact.telecom, plain e-mails and red-listed boxes."""

    def mss(address: str, kind: str | None, red: bool = False) -> dict[str, Any]:
        meta: list[dict[str, Any]] = [{"url": "listeRouge", "valueBoolean": red}]
        if kind:
            meta.append({"url": "type", "valueCodeableConcept": {"coding": [{"system": "x", "code": kind}]}})
        return {
            "system": "email",
            "value": address,
            "extension": [
                {"url": EXT_EMAIL_TYPE, "valueCoding": {"code": "MSSANTE"}},
                {"url": EXT_MAILBOX_METADATA, "extension": meta},
            ],
        }

    practitioner = {
        "resourceType": "Practitioner",
        "id": "p1",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810010000106"}],
        "name": [{"family": "FÉVRIER", "given": ["Hélène"], "prefix": ["MME"]}],
        "telecom": [
            {"system": "email", "value": "helene@gmail.example"},
            mss("helene.fevrier@medecin.mssante.fr", None),
            mss("liste.rouge@medecin.mssante.fr", "PER", red=True),
        ],
    }
    role = {
        "resourceType": "PractitionerRole",
        "id": "r1",
        "practitioner": {"reference": "Practitioner/p1"},
        "organization": {"reference": "Organization/o1"},
    }
    org = {
        "resourceType": "Organization",
        "id": "o1",
        "name": "Clinique",
        "identifier": [{"system": "https://finess.esante.gouv.fr", "value": "930000013"}],
        "address": [{"city": "MONTREUIL"}],
        "telecom": [{"system": "email", "value": "contact@clinique.example"}],
        "contact": [{"telecom": [mss("accueil@clinique.mssante.fr", "ORG")]}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Practitioner"):
            return httpx.Response(200, json=bundle([{"resource": practitioner}, {"resource": role}]))
        return httpx.Response(200, json=bundle([{"resource": org}]))

    client = fake(handler)
    (entry,) = await client.search_practitioners(name="fevrier")
    assert entry.practitioner.rpps == "10010000106" and entry.practitioner.civility == "MME"
    assert entry.practitioner.profession is None
    assert [(m.address, m.type) for m in entry.mailboxes] == [
        ("helene.fevrier@medecin.mssante.fr", MailboxType.PER),
        ("accueil@clinique.mssante.fr", MailboxType.ORG),
    ]
    assert entry.organizations[0].finess == "930000013"
    await client.aclose()


async def test_a_practitioner_is_asked_once_then_remembered() -> None:
    """The DMP pages need a physician's specialty on every call: the directory is asked once per RPPS."""
    asked: list[str] = []
    inner = httpx.ASGITransport(app=sandbox_app())

    class Counting(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            asked.append(request.url.path)
            return await inner.handle_async_request(request)

    client = AnnuaireClient(BASE, SANDBOX_API_KEY, transport=Counting())
    reault, unknown = luhn_complete("1000000001"), luhn_complete("1000000777")
    first = await client.practitioner(reault)
    after_first = len(asked)
    again = await client.practitioner(reault)
    assert len(asked) == after_first >= 1
    assert await client.practitioner(unknown) is None
    after_unknown = len(asked)
    assert await client.practitioner(unknown) is None  # an unknown RPPS is remembered too
    assert len(asked) == after_unknown > after_first
    await client.aclose()
    assert first is not None and first == again and first.specialty_code == "SM14"
