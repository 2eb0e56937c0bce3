from __future__ import annotations

import base64
import io
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest
from lxml import etree

from opensegur.transport.mtom import (
    XOP_NS,
    MtomError,
    build_mtom,
    cid_of_href,
    parse_mtom,
    post_mtom,
    xop_include,
    xop_or_inline,
)
from opensegur.transport.soap import SoapFaultError, envelope, fault, parse_envelope

ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"


def _envelope_with(cids: list[str]) -> bytes:
    body = etree.Element("{urn:test}Docs", nsmap={"t": "urn:test"})
    for cid in cids:
        doc = etree.SubElement(body, "{urn:test}Document", id=cid)
        doc.append(xop_include(cid))
    return envelope(body)


def test_round_trip_with_bytes_and_streamed_attachments() -> None:
    env = _envelope_with(["doc1@x", "doc2@x"])
    streamed = [b"chunk-a", b"\r\n--not-the-boundary\r\n", b"chunk-b"]
    ctype, body = build_mtom(
        env, {"doc1@x": b"\x00\x01binary\r\n--", "doc2@x": iter(streamed)}, action=ACTION
    )
    assert ctype.startswith("multipart/related; ")
    assert 'type="application/xop+xml"' in ctype and f'action="{ACTION}"' in ctype
    raw = b"".join(body)
    got_env, atts = parse_mtom(ctype, raw, max_bytes=1_000_000)
    assert got_env == env
    assert atts == {"doc1@x": b"\x00\x01binary\r\n--", "doc2@x": b"".join(streamed)}
    _, body_el = parse_envelope(got_env)
    docs = body_el.findall("{urn:test}Document")
    assert [xop_or_inline(d, atts) for d in docs] == [atts["doc1@x"], atts["doc2@x"]]


def test_body_is_re_iterable_for_bytes_attachments() -> None:
    _, body = build_mtom(_envelope_with(["a"]), {"a": b"abc"})
    assert b"".join(body) == b"".join(body)


def test_file_like_body_and_small_reads() -> None:
    env = _envelope_with(["a"])
    ctype, body = build_mtom(env, {"a": bytes(range(256)) * 1000})
    raw = b"".join(body)

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            return self._data.read(min(n, 7) if n > 0 else 7)

    got_env, atts = parse_mtom(ctype, Trickle(raw), 10_000_000)  # type: ignore[arg-type]
    assert got_env == env and atts["a"] == bytes(range(256)) * 1000


def test_plain_soap_with_inline_base64() -> None:
    body = etree.Element("{urn:test}Document")
    body.text = base64.b64encode(b"hello cda").decode()
    env = envelope(body)
    got_env, atts = parse_mtom('application/soap+xml; charset=utf-8; action="x"', env, 100_000)
    assert atts == {}
    _, el = parse_envelope(got_env)
    assert xop_or_inline(el, atts) == b"hello cda"


def test_xop_helpers() -> None:
    inc = xop_include("doc 1@x")
    assert inc.tag == f"{{{XOP_NS}}}Include"
    assert cid_of_href(inc.get("href", "")) == "doc 1@x"
    with pytest.raises(MtomError):
        cid_of_href("http://evil")
    el = etree.Element("Document")
    el.append(xop_include("missing"))
    with pytest.raises(MtomError, match="missing"):
        xop_or_inline(el, {})
    bad = etree.Element("Document")
    bad.text = "!!notbase64"
    with pytest.raises(MtomError):
        xop_or_inline(bad, {})


def _raw(boundary: str, parts: list[bytes], close: bool = True) -> bytes:
    out = b""
    for p in parts:
        out += b"--" + boundary.encode() + b"\r\n" + p + b"\r\n"
    if close:
        out += b"--" + boundary.encode() + b"--\r\n"
    return out


CT = 'multipart/related; type="application/xop+xml"; boundary="B"; start="<root>"'
ROOT = b'Content-Type: application/xop+xml; type="application/soap+xml"\r\nContent-ID: <root>\r\n\r\n<e/>'


@pytest.mark.parametrize(
    ("content_type", "raw", "message"),
    [
        ("multipart/related", _raw("B", [ROOT]), "boundary"),
        ("image/png", b"x", "unsupported Content-Type"),
        ('multipart/related; type="text/plain"; boundary="B"', _raw("B", [ROOT]), "not application/xop"),
        (CT, b"no boundary here", "boundary not found"),
        (CT, _raw("B", [ROOT], close=False), "closing boundary missing"),
        (CT, _raw("B", [ROOT, b"Content-Type: application/octet-stream\r\n\r\ndata"]), "without Content-ID"),
        (CT, _raw("B", [ROOT, b"Content-ID: <a>\r\n\r\n1", b"Content-ID: <a>\r\n\r\n2"]), "duplicate"),
        (
            CT,
            _raw("B", [ROOT, b"Content-ID: <a>\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nAA=="]),
            "Transfer",
        ),
        (
            CT,
            _raw("B", [ROOT, b"Content-ID: <a>\r\nContent-Transfer-Encoding: base64\r\n\r\nA*A="]),
            "not valid base64",
        ),
        (CT, _raw("B", [ROOT, b"Content-ID <a>\r\n\r\nx"]), "malformed MIME header"),
        (CT, _raw("B", [ROOT.replace(b"<root>", b"<other>")]), "start part"),
        (CT, _raw("B", [b"Content-ID: <root>\r\nContent-Type: text/plain\r\n\r\nx"]), "root part"),
        (CT, _raw("B", [ROOT] + [b"Content-ID: <%d>\r\n\r\nx" % i for i in range(10)]), "too many"),
        (CT, _raw("B", [b"X-Big: " + b"a" * 20000 + b"\r\n\r\nx"]), "headers too large"),
    ],
)
def test_malformed_multipart_is_rejected(content_type: str, raw: bytes, message: str) -> None:
    with pytest.raises(MtomError, match=message):
        parse_mtom(content_type, raw, 1_000_000, max_parts=5)


@pytest.mark.parametrize(
    ("encoding", "encoded"),
    [
        ("base64", b"RElDTQABAgP/\r\nAA=="),
        ("BASE64", b"RElDTQABAgP/AA=="),
        ("quoted-printable", b"DICM=00=01=02=03=FF=00"),
        ("binary", b"DICM\x00\x01\x02\x03\xff\x00"),
    ],
)
@pytest.mark.requirement("MTOM-TRANSFER-ENCODING")
def test_any_legal_transfer_encoding_gives_the_same_bytes(encoding: str, encoded: bytes) -> None:
    part = b"Content-ID: <kos>\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: "
    _, attachments = parse_mtom(
        CT, _raw("B", [ROOT, part + encoding.encode() + b"\r\n\r\n" + encoded]), 10_000
    )
    assert attachments == {"kos": b"DICM\x00\x01\x02\x03\xff\x00"}


def test_size_limits() -> None:
    ctype, body = build_mtom(_envelope_with(["a"]), {"a": b"x" * 5000})
    raw = b"".join(body)
    with pytest.raises(MtomError, match="exceeds"):
        parse_mtom(ctype, raw, max_bytes=4000)
    with pytest.raises(MtomError, match="too large"):
        parse_mtom(ctype, raw, max_bytes=100_000, max_envelope_bytes=50)
    with pytest.raises(MtomError, match="exceeds"):
        parse_mtom("application/soap+xml", b"<x/>" * 100, max_bytes=10)


def test_50mb_attachment_memory_bound() -> None:
    size = 50 * 1024 * 1024
    env = _envelope_with(["big"])

    def produce() -> Iterator[bytes]:
        block = b"0123456789abcdef" * 4096  # 64 KiB
        for _ in range(size // len(block)):
            yield block

    ctype, body = build_mtom(env, {"big": produce()})
    spool = io.BytesIO()
    tracemalloc.start()
    try:
        for chunk in body:
            spool.write(chunk)
        _, build_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        spool.seek(0)
        baseline, _ = tracemalloc.get_traced_memory()
        got_env, atts = parse_mtom(ctype, spool, max_bytes=size + 1_000_000)
        _, parse_peak = tracemalloc.get_traced_memory()
        parse_peak -= baseline
    finally:
        tracemalloc.stop()
    assert got_env == env
    assert len(atts["big"]) == size and atts["big"][:16] == b"0123456789abcdef"
    # Building only streams: the spool (1x) is the caller's buffer; nothing else should be retained.
    assert build_peak < 1.3 * size
    # Parsing holds the attachment once plus growth slack (the input spool excluded), well below 3x.
    assert parse_peak < 1.5 * size
    print(f"build peak {build_peak / size:.2f}x, parse peak {parse_peak / size:.2f}x")


async def test_post_mtom_returns_content_type_and_maps_faults() -> None:
    seen: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["ct"] = request.headers["content-type"].encode()
        seen["body"] = request.read()
        if request.url.path == "/fault":
            return httpx.Response(
                500, content=fault("Sender", "bad"), headers={"content-type": "application/soap+xml"}
            )
        ctype, body = build_mtom(_envelope_with(["r"]), {"r": b"answer"})
        return httpx.Response(200, content=b"".join(body), headers={"content-type": ctype})

    env = _envelope_with(["q"])
    ctype, body = build_mtom(env, {"q": b"question"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        resp_type, raw = await post_mtom(client, "http://dmp/ok", ctype, body, 5)
        assert seen["ct"] == ctype.encode()
        assert parse_mtom(ctype, bytes(seen["body"]), 100_000)[1] == {"q": b"question"}
        assert parse_mtom(resp_type, raw, 100_000)[1] == {"r": b"answer"}
        with pytest.raises(SoapFaultError) as exc:
            await post_mtom(client, "http://dmp/fault", ctype, body, 5)
        assert exc.value.code == "Sender" and exc.value.http_status == 500
