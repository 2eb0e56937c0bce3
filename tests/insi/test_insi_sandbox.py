import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from opensegur.connectors.insi_client import InsiClient, InsiUnavailable, traits_attempts
from opensegur.sandbox.insi import DEFAULT_IDENTITIES, OID_NIA, OID_NIR_TEST, create_insi_app, nir_key
from opensegur.transactions.insi import (
    ACTION_TRAITS,
    ACTION_VITALE,
    InsiCarteVitaleQuery,
    InsiContext,
    InsiError,
    InsiMatricule,
    InsiTraitsQuery,
    build_traits_request,
    build_vitale_request,
    parse_response,
)
from opensegur.transport.soap import SoapFaultError, content_type, parse_envelope

URL = "http://insi.sandbox/insi"
Sandbox = tuple[FastAPI, httpx.AsyncClient, InsiClient]
CTX = InsiContext(lps_name="OPENSEGUR", lps_version="0.1.0", idam="IDAM-TEST-0001", emitter="10000000001")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    app = create_insi_app(timeout_sleep_s=5)
    transport = httpx.ASGITransport(app=app)
    admin = httpx.AsyncClient(transport=transport, base_url="http://insi.sandbox")
    client = InsiClient(URL, CTX, timeout=2.0, transport=transport)
    yield app, admin, client
    await client.aclose()
    await admin.aclose()


async def calls(admin: httpx.AsyncClient) -> list[dict[str, Any]]:
    resp = await admin.get("/insi/_admin/calls")
    assert resp.status_code == 200
    return list(resp.json())


def q(name: str, first: str, sex: str, date: str, cog: str | None = None) -> InsiTraitsQuery:
    return InsiTraitsQuery(name, first.split(), sex, date, cog)


# ------------------------------------------------------------------------------------------- data set


def test_default_identities_keys_follow_the_formula() -> None:
    for p in DEFAULT_IDENTITIES:
        assert p.key == nir_key(p.number13), p.birth_name
        for h in p.history:
            assert h.key == nir_key(h.number13)
    by_name = {(p.birth_name, p.first_names[0]): p for p in DEFAULT_IDENTITIES}
    assert by_name[("PAT-TROIS", "DOMINIQUE")].number13 + by_name[("PAT-TROIS", "DOMINIQUE")].key == (
        "279035121518989"
    )
    assert by_name[("CORSE", "ANTHONY")].key == "23"
    assert nir_key("180032A020401") != nir_key("180032B020401")


# ------------------------------------------------------------------------------------ traits searches


@pytest.mark.parametrize(
    ("query", "matricule", "oid", "n_history"),
    [
        (q("ADRUN", "ZOE", "F", "1975-12-31"), "275126322074974", "1.2.250.1.213.1.4.8", 0),
        (q("CORSE", "ANTHONY", "M", "1980-03-02"), "180032B02040123", "1.2.250.1.213.1.4.8", 1),
        (q("NESSI", "MICHELANGELO ANTHONY", "M", "2010-08-07"), "110086322083060", "1.2.250.1.213.1.4.8", 0),
        (q("ECETINSI", "PIERRE-ALAIN", "M", "2009-07-14"), "109076322083489", "1.2.250.1.213.1.4.8", 2),
        (q("PROVISOIRE", "MATRICULE", "M", "2009-07-01"), "109076322088835", OID_NIA, 0),
        (q("PAT-TROIS", "DOMINIQUE MARIE-LOUISE", "F", "1979-03-28"), "279035121518989", OID_NIR_TEST, 0),
        (q("martin-dupont", "Claire", "F", "1985-11-05"), "285114410920377", OID_NIR_TEST, 0),
        (q("NGUYEN", "MAI", "F", "1988-04-12"), "288049924304597", OID_NIR_TEST, 1),
        (q("DURAND", "ROBERT", "M", "1932-02-14"), "132023523807749", OID_NIR_TEST, 0),
        (q("BENALI", "YASMINE", "F", "1962-00-00"), "262209935011296", OID_NIR_TEST, 0),
    ],
)
async def test_traits_found(
    sandbox, query: InsiTraitsQuery, matricule: str, oid: str, n_history: int
) -> None:
    _, _, client = sandbox
    r = await client.search_by_traits(query)
    assert r.code == "00" and r.label == "OK"
    assert r.identity is not None
    assert r.identity.matricule == matricule and r.identity.oid == oid
    assert len(r.identity.history) == n_history
    assert r.raw_request_id


async def test_foreign_born_and_lunar_traits(sandbox: Sandbox) -> None:
    _, _, client = sandbox
    r = await client.search_by_traits(q("NGUYEN", "THI MAI", "F", "1988-04-12"))
    assert r.identity is not None and r.identity.birth_place == "99243" and r.identity.number13[5:7] == "99"
    assert (
        r.identity.history[0].oid == "1.2.250.1.213.1.4.11" and r.identity.history[0].date_end == "2016-05-31"
    )
    r = await client.search_by_traits(q("BENALI", "YASMINE", "F", "1962-00-00"))
    assert r.identity is not None and r.identity.birth_date == "1962-00-00"


async def test_not_found_houilles_every_variant(sandbox: Sandbox) -> None:
    _, admin, client = sandbox
    r = await client.search_by_traits(q("HOUILLES", "PIERRE PAUL JACQUES", "M", "1993-01-27"))
    assert (r.code, r.identity) == ("01", None)
    sent = [c["query"]["first_names"] for c in await calls(admin)]
    assert sent == [["PIERRE"], ["PAUL"], ["JACQUES"], ["PIERRE", "PAUL", "JACQUES"]]


async def test_tchitchi_first_name_strategy(sandbox: Sandbox) -> None:
    _, admin, client = sandbox
    single = await client.query_traits_once(q("TCHITCHI", "OLA", "F", "1936-06-21"))
    assert single.code == "01"
    r = await client.search_by_traits(q("TCHITCHI", "OLA CATARINA", "F", "1936-06-21"))
    assert r.code == "00" and r.identity is not None
    assert r.identity.matricule == "236066322083656"
    assert (r.identity.first_name, r.identity.first_names) == ("CATARINA", "CATARINA BELLA")
    log = await calls(admin)
    assert [(c["query"]["first_names"], c["result"]) for c in log] == [
        (["OLA"], "01"),
        (["OLA"], "01"),
        (["CATARINA"], "00"),
    ]
    assert log[-1]["message_id"] == f"uuid:{r.raw_request_id}"


async def test_homonyms_need_the_cog(sandbox: Sandbox) -> None:
    _, admin, client = sandbox
    r = await client.search_by_traits(q("MARTIN", "JEAN", "M", "1970-01-15"))
    assert (r.code, r.label, r.identity) == ("02", "Plusieurs identites trouvees", None)
    r = await client.search_by_traits(q("MARTIN", "JEAN", "M", "1970-01-15", "31555"))
    assert r.code == "00" and r.identity is not None and r.identity.birth_place == "31555"
    log = await calls(admin)
    assert [(c["query"]["birth_place"], c["result"]) for c in log[-2:]] == [(None, "02"), ("31555", "00")]


def test_attempt_plan() -> None:
    plain, with_cog = traits_attempts(q("A", "X Y", "M", "2000-01-01", "75056"))
    assert [a.first_names for a in plain] == [["X"], ["Y"], ["X", "Y"]]
    assert all(a.birth_place is None for a in plain)
    assert [(a.first_names, a.birth_place) for a in with_cog] == [(["X", "Y"], "75056"), (["X"], "75056")]
    plain, with_cog = traits_attempts(q("A", "X", "M", "2000-01-01"))
    assert [a.first_names for a in plain] == [["X"]] and with_cog == []


async def test_traits_changed_since_local_record(sandbox: Sandbox) -> None:
    _, _, client = sandbox
    # The local record still has the old spelling; INSi finds the person and returns the corrected traits.
    r = await client.search_by_traits(q("LEFEBVRE", "MATHIEU", "M", "1990-05-20"))
    assert r.code == "00" and r.identity is not None
    assert r.identity.first_names == "MATTHIEU LOUIS"
    assert [h.number13 for h in r.identity.history] == ["1900575113999"]


async def test_wrong_cog_or_sex_gives_01(sandbox: Sandbox) -> None:
    _, _, client = sandbox
    assert (await client.query_traits_once(q("ADRUN", "ZOE", "F", "1975-12-31", "75056"))).code == "01"
    assert (await client.search_by_traits(q("ADRUN", "ZOE", "M", "1975-12-31"))).code == "01"
    assert (await client.search_by_traits(q("MARTIN DUPONT", "CLAIRE", "F", "1985-11-05"))).code == "01"


# -------------------------------------------------------------------------------------------- vitale


async def test_vitale_search(sandbox: Sandbox) -> None:
    _, _, client = sandbox
    card = InsiMatricule("2870667482140", "82")
    r = await client.search_by_vitale(InsiCarteVitaleQuery("PETIT", "2015-06-10", "2", card))
    assert r.code == "00" and r.identity is not None and r.identity.first_names == "HUGO"
    r = await client.search_by_vitale(InsiCarteVitaleQuery(None, "2015-06-10", None, card))
    assert r.code == "02"
    r = await client.search_by_vitale(InsiCarteVitaleQuery(None, "1987-06-03", "1", card))
    assert r.code == "00" and r.identity is not None and r.identity.birth_name == "ROUSSEL"
    r = await client.search_by_vitale(InsiCarteVitaleQuery(None, "2001-01-01", None, card))
    assert r.code == "01"


async def test_vitale_without_card_number_is_a_fault(sandbox: Sandbox) -> None:
    _, _, client = sandbox
    with pytest.raises(InsiError) as ei:
        await client.search_by_vitale(InsiCarteVitaleQuery("PETIT", "2015-06-10"))
    assert ei.value.code == "DESIR_SBX_VITALE"


# ------------------------------------------------------------------------------------ strict validation


async def _post(admin: httpx.AsyncClient, raw: bytes, action: str | None = ACTION_TRAITS) -> httpx.Response:
    return await admin.post("/insi", content=raw, headers={"Content-Type": content_type(action)})


def _fault_of(resp: httpx.Response) -> SoapFaultError:
    assert resp.status_code == 500
    with pytest.raises(SoapFaultError) as ei:
        parse_envelope(resp.content)
    return ei.value


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY a "aaaaaaaaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;">]>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body>
<RECSANSVITALE xmlns="http://www.cnamts.fr/INSiRecSans"><NomNaissance>&c;</NomNaissance></RECSANSVITALE>
</soap:Body></soap:Envelope>"""
XXE = BOMB.replace(b'<!ENTITY c "&b;&b;&b;&b;&b;&b;">', b'<!ENTITY c SYSTEM "file:///etc/passwd">')


@pytest.mark.parametrize("payload", [BOMB, XXE])
async def test_unsafe_request_is_refused(sandbox: Sandbox, payload: bytes) -> None:
    _, admin, _ = sandbox
    f = _fault_of(await _post(admin, payload))
    assert f.code == "Sender"
    assert "XML non sûr refusé" in f.reason and "DOCTYPE" in f.reason
    assert f.detail is not None and f.detail.get("code") == "DESIR_SBX_XML"
    assert b"root:" not in (await _post(admin, payload)).content


async def test_missing_contexte_lps(sandbox: Sandbox) -> None:
    _, admin, _ = sandbox
    raw = build_traits_request(q("ADRUN", "ZOE", "F", "1975-12-31"), CTX)
    start = raw.index(b"<ctxlps:ContexteLPS")
    end = raw.index(b"</ctxlps:ContexteLPS>") + len(b"</ctxlps:ContexteLPS>")
    f = _fault_of(await _post(admin, raw[:start] + raw[end:]))
    assert f.code == "Sender" and f.detail is not None and f.detail.get("code") == "DESIR_SBX_CTXLPS"


async def test_missing_idam_is_desir_550(sandbox: Sandbox) -> None:
    _, admin, _ = sandbox
    ctx = InsiContext(lps_name="X", lps_version="1", idam="", emitter="E")
    f = _fault_of(await _post(admin, build_traits_request(q("ADRUN", "ZOE", "F", "1975-12-31"), ctx)))
    assert f.detail is not None and f.detail.get("code") == "desir_550" and f.subcode == "soap:siram_100"


async def test_body_not_matching_xsd(sandbox: Sandbox) -> None:
    _, admin, _ = sandbox
    raw = build_traits_request(q("ADRUN", "ZOE", "F", "1975-12-31"), CTX)
    raw = raw.replace(
        b"<insi_recsans_ins:Sexe>",
        b"<insi_recsans_ins:Genre>X</insi_recsans_ins:Genre><insi_recsans_ins:Sexe>",
    )
    f = _fault_of(await _post(admin, raw))
    assert f.detail is not None and f.detail.get("code") == "DESIR_SBX_XSD" and "Genre" in f.detail_text


async def test_invalid_traits_and_action_mismatch(sandbox: Sandbox) -> None:
    _, admin, _ = sandbox
    raw = build_traits_request(q("ADRUN", "ZOE", "X", "31/12/1975"), CTX)
    f = _fault_of(await _post(admin, raw))
    assert f.detail is not None and f.detail.get("code") == "DESIR_SBX_TRAITS"
    assert "Sexe" in f.detail_text and "DateNaissance" in f.detail_text
    f = _fault_of(
        await _post(admin, build_traits_request(q("ADRUN", "ZOE", "F", "1975-12-31"), CTX), ACTION_VITALE)
    )
    assert f.detail is not None and f.detail.get("code") == "DESIR_SBX_ACTION"
    # Action from the wsa:Action header alone is enough.
    ok = await _post(admin, build_traits_request(q("ADRUN", "ZOE", "F", "1975-12-31"), CTX), None)
    assert ok.status_code == 200 and parse_response(ok.content).code == "00"
    # A Vitale body sent as a traits search.
    vit = build_vitale_request(
        InsiCarteVitaleQuery(None, "2015-06-10", None, InsiMatricule("2870667482140")), CTX
    )
    f = _fault_of(await _post(admin, vit.replace(ACTION_VITALE.encode(), ACTION_TRAITS.encode()), None))
    assert f.detail is not None and f.detail.get("code") == "DESIR_SBX_XSD"


# ---------------------------------------------------------------------------------------- fault injection


async def _inject(admin: httpx.AsyncClient, **cfg: Any) -> None:
    body = {"latency_ms": 0, "http_status": None, "soap_fault": None, "timeout": False, "count": None} | cfg
    assert (await admin.post("/insi/_admin/faults", json=body)).status_code == 200


ADRUN = q("ADRUN", "ZOE", "F", "1975-12-31")


async def test_latency(sandbox: Sandbox) -> None:
    _, admin, client = sandbox
    await _inject(admin, latency_ms=300, count=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await client.search_by_traits(ADRUN)).code == "00"
    assert loop.time() - start >= 0.29
    start = loop.time()
    assert (await client.search_by_traits(ADRUN)).code == "00"
    assert loop.time() - start < 0.29  # count=1: cleared after one call


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_unavailable_and_retryable(sandbox: Sandbox, status: int) -> None:
    _, admin, client = sandbox
    await _inject(admin, http_status=status)
    for _ in range(2):  # null count: persists until cleared
        with pytest.raises(InsiUnavailable) as ei:
            await client.search_by_traits(ADRUN)
        assert ei.value.retryable and ei.value.status_code == status
    assert (await admin.delete("/insi/_admin/faults")).status_code == 200
    assert (await client.search_by_traits(ADRUN)).code == "00"


async def test_soap_fault_is_insi_error(sandbox: Sandbox) -> None:
    _, admin, client = sandbox
    await _inject(admin, soap_fault="DESIR_560", count=2)
    with pytest.raises(InsiError) as ei:
        await client.search_by_traits(ADRUN)
    assert ei.value.code == "DESIR_560" and ei.value.soap_code == "Sender"
    assert not isinstance(ei.value, InsiUnavailable)
    with pytest.raises(InsiError):
        await client.search_by_vitale(
            InsiCarteVitaleQuery(None, "1987-06-03", None, InsiMatricule("2870667482140"))
        )
    assert (await client.search_by_traits(ADRUN)).code == "00"
    log = await calls(admin)
    assert [c.get("result") for c in log] == ["DESIR_560", "DESIR_560", "00"]


async def test_timeout_is_unavailable(sandbox: Sandbox) -> None:
    _, admin, _ = sandbox
    app = sandbox[0]
    client = InsiClient(URL, CTX, timeout=0.3, transport=httpx.ASGITransport(app=app))
    await _inject(admin, timeout=True, count=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(InsiUnavailable, match="timeout") as ei:
        await client.search_by_traits(ADRUN)
    assert ei.value.retryable and loop.time() - start < 2
    assert (await client.search_by_traits(ADRUN)).code == "00"
    await client.aclose()


async def test_bad_fault_config_is_refused(sandbox: Sandbox) -> None:
    _, admin, _ = sandbox
    resp = await admin.post("/insi/_admin/faults", json={"latency_ms": 10**9})
    assert resp.status_code == 422


@pytest.mark.parametrize("payload", [BOMB, XXE])
async def test_unsafe_response_gives_insi_error(payload: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=payload, headers={"Content-Type": "application/soap+xml"})

    client = InsiClient(URL, CTX, transport=httpx.MockTransport(handler))
    with pytest.raises(InsiError, match="DOCTYPE") as ei:
        await client.search_by_traits(ADRUN)
    assert ei.value.code == "XML_UNSAFE"
    await client.aclose()


async def test_unsafe_fault_response_gives_insi_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, content=XXE)

    client = InsiClient(URL, CTX, transport=httpx.MockTransport(handler))
    with pytest.raises(InsiError, match="DOCTYPE"):
        await client.search_by_traits(ADRUN)
    await client.aclose()


# ------------------------------------------------------------------------------------------ real socket


@pytest.fixture
async def live_server() -> AsyncIterator[str]:
    app = create_insi_app(timeout_sleep_s=5)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def test_real_socket_round_trip(live_server: str) -> None:
    client = InsiClient(f"{live_server}/insi", CTX, timeout=1.0)
    async with httpx.AsyncClient(base_url=live_server) as admin:
        r = await client.search_by_traits(q("TCHITCHI", "OLA CATARINA", "F", "1936-06-21"))
        assert r.code == "00" and r.identity is not None and r.identity.matricule == "236066322083656"
        await _inject(admin, timeout=True, count=1)
        with pytest.raises(InsiUnavailable):
            await client.search_by_traits(ADRUN)
        # Clearing wakes the request still sleeping server side, so shutdown is immediate.
        await admin.delete("/insi/_admin/faults")
        await _inject(admin, http_status=503, count=1)
        with pytest.raises(InsiUnavailable):
            await client.search_by_traits(ADRUN)
        assert (await client.search_by_traits(ADRUN)).code == "00"
        log = await calls(admin)
        assert [c.get("status") for c in log][-3:] == [504, 503, 200]
    await client.aclose()


async def test_unreachable_server_is_unavailable() -> None:
    client = InsiClient("http://127.0.0.1:9/insi", CTX, timeout=1.0)
    with pytest.raises(InsiUnavailable):
        await client.search_by_traits(ADRUN)
    await client.aclose()
