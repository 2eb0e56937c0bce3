import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from lxml import etree

from opensegur.transport.soap import (
    SOAP12_NS,
    SOAP_CONTENT_TYPE,
    SoapFaultError,
    SoapFormatError,
    SoapTransportError,
    action_from_content_type,
    content_type,
    envelope,
    fault,
    parse_envelope,
    post_soap,
    safe_parse,
)

BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body><x>&lol3;</x></soap:Body>
</soap:Envelope>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body><x>&xxe;</x></soap:Body>
</soap:Envelope>"""


def _body(tag: str = "Ping", text: str = "hello") -> etree._Element:
    el = etree.Element("{urn:test}" + tag, nsmap={"t": "urn:test"})
    el.text = text
    return el


def test_envelope_round_trip() -> None:
    h = etree.Element("{urn:test}Hdr")
    h.text = "h1"
    raw = envelope(_body(), [h])
    assert raw.startswith(b"<?xml")
    headers, body = parse_envelope(raw)
    assert [x.tag for x in headers] == ["{urn:test}Hdr"]
    assert headers[0].text == "h1"
    assert body.tag == "{urn:test}Ping" and body.text == "hello"
    root = etree.fromstring(raw)
    assert root.tag == f"{{{SOAP12_NS}}}Envelope"


def test_envelope_without_headers_has_no_header_element() -> None:
    raw = envelope(_body())
    assert b"Header" not in raw
    assert parse_envelope(raw)[0] == []


def test_fault_round_trip() -> None:
    detail = etree.Element("{urn:siram}Erreur")
    detail.set("code", "desir_550")
    detail.text = "Numéro d'autorisation du logiciel inconnu."
    raw = fault("soap:Sender", "Accès refusé", "soap:siram_100", detail)
    with pytest.raises(SoapFaultError) as ei:
        parse_envelope(raw)
    err = ei.value
    assert err.code == "Sender"
    assert err.subcode == "soap:siram_100"
    assert err.reason == "Accès refusé"
    assert "autorisation" in err.detail_text
    assert err.detail is not None and err.detail.get("code") == "desir_550"


def test_fault_rejects_unknown_code() -> None:
    with pytest.raises(ValueError):
        fault("Client", "x")
    assert b"soap:Receiver" in fault("Receiver", "down")


@pytest.mark.parametrize("payload", [BOMB, XXE, BOMB.decode().encode("utf-16")])
def test_unsafe_xml_is_rejected_not_resolved(payload: bytes) -> None:
    with pytest.raises(SoapFormatError) as ei:
        parse_envelope(payload)
    assert ei.value.unsafe
    assert "DOCTYPE" in str(ei.value) or "entity" in str(ei.value).lower()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"<a><b></a>", "malformed"),
        (b"<html><body/></html>", "not a SOAP 1.2"),
        (
            b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>',
            "SOAP 1.1",
        ),
        (b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"/>', "without soap:Body"),
        (b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>', "empty"),
    ],
)
def test_non_soap_is_a_format_error(payload: bytes, message: str) -> None:
    with pytest.raises(SoapFormatError, match=message):
        parse_envelope(payload)


def test_size_limit() -> None:
    raw = envelope(_body(text="x" * 2000))
    with pytest.raises(SoapFormatError, match="too large"):
        parse_envelope(raw, max_bytes=1000)
    assert safe_parse(raw).tag.endswith("Envelope")


def test_content_type() -> None:
    assert SOAP_CONTENT_TYPE == "application/soap+xml; charset=utf-8"
    ct = content_type("urn:a:b")
    assert ct == 'application/soap+xml; charset=utf-8; action="urn:a:b"'
    assert action_from_content_type(ct) == "urn:a:b"
    assert action_from_content_type(SOAP_CONTENT_TYPE) is None
    with pytest.raises(ValueError):
        content_type('x"y')


def _client(handler: Callable[[httpx.Request], Any]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_post_soap_ok_sends_action() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["ct"] = request.headers["content-type"]
        return httpx.Response(200, content=envelope(_body("Pong")))

    async with _client(handler) as c:
        raw = await post_soap(c, "http://x/soap", envelope(_body()), "urn:act", 5)
    assert parse_envelope(raw)[1].tag == "{urn:test}Pong"
    assert seen["ct"] == content_type("urn:act")


async def test_post_soap_500_with_fault_raises_fault() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, content=fault("soap:Receiver", "panne"))

    async with _client(handler) as c:
        with pytest.raises(SoapFaultError) as ei:
            await post_soap(c, "http://x/soap", b"<x/>", "urn:act", 5)
    assert ei.value.code == "Receiver" and ei.value.http_status == 500


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (404, False)])
async def test_post_soap_http_error_without_fault(status: int, retryable: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="<html>oops</html>")

    async with _client(handler) as c:
        with pytest.raises(SoapTransportError) as ei:
            await post_soap(c, "http://x/soap", b"<x/>", "urn:act", 5)
    assert ei.value.retryable is retryable
    assert ei.value.status_code == status


async def test_post_soap_connection_error_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with _client(handler) as c:
        with pytest.raises(SoapTransportError) as ei:
            await post_soap(c, "http://x/soap", b"<x/>", "urn:act", 5)
    assert ei.value.retryable


async def test_post_soap_total_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    async with _client(handler) as c:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(SoapTransportError, match="timeout") as ei:
            await post_soap(c, "http://x/soap", b"<x/>", "urn:act", 0.2)
    assert ei.value.retryable
    assert loop.time() - start < 2


async def test_post_soap_oversized_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 5000)

    async with _client(handler) as c:
        with pytest.raises(SoapTransportError, match="exceeds") as ei:
            await post_soap(c, "http://x/soap", b"<x/>", "urn:act", 5, max_bytes=1000)
    assert not ei.value.retryable
