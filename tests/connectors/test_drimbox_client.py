"""Asking another DRIMbox for a series: the headers it needs, its refusals told apart from its failures, and an
answer cut short seen as such."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from opensegur.connectors.drimbox_client import ACCEPT, DrimboxClient
from opensegur.flows.drimbox_ports import RemoteRefused, RemoteUnavailable
from opensegur.imaging.wado import multipart_dicom

URL = "https://drimbox.chu-y.test/dicom-web/studies/1.2.3/series/1.2.3.4"
PARTS = [(b"\0" * 128 + b"DICM" + bytes([n]) * 100, "1.2.840.10008.1.2.4.50") for n in range(3)]


async def _all(client: DrimboxClient) -> list[bytes]:
    return [p.body.read() async for p in client.retrieve_series(URL, "jeton", "1.2.9")]


async def test_the_series_arrives_part_by_part_with_the_token_and_the_manifest() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        content_type, body = multipart_dicom(iter(PARTS))
        return httpx.Response(200, headers={"content-type": content_type}, content=b"".join(body))

    client = DrimboxClient(transport=httpx.MockTransport(answer))
    assert await _all(client) == [data for data, _ in PARTS]
    [request] = seen
    assert (
        request.headers["authorization"] == "Bearer jeton"
        and request.headers["kos-sopinstanceuid"] == "1.2.9"
    )
    assert request.headers["accept"] == ACCEPT
    await client.aclose()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, RemoteRefused),
        (404, RemoteRefused),
        (406, RemoteRefused),
        (503, RemoteUnavailable),
        (429, RemoteUnavailable),
    ],
)
async def test_refusals_and_failures_are_told_apart(status: int, error: type[Exception]) -> None:
    client = DrimboxClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(status, json={"detail": "Série inconnue"}))
    )
    with pytest.raises(error) as raised:
        await _all(client)
    if isinstance(raised.value, RemoteRefused):
        assert raised.value.status == status and "Série inconnue" in str(raised.value)


class _CutShort(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: len(self.data) // 2]
        raise httpx.ReadError("connection reset")


@pytest.mark.parametrize("how", ["reset", "clean end"])
async def test_an_answer_cut_short_is_a_failure_to_retry(how: str) -> None:
    content_type, body = multipart_dicom(iter(PARTS))
    raw = b"".join(body)

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": content_type}
        if how == "reset":
            return httpx.Response(200, headers=headers, stream=_CutShort(raw))
        return httpx.Response(200, headers=headers, content=raw[: len(raw) // 2])

    with pytest.raises(RemoteUnavailable):
        await _all(DrimboxClient(transport=httpx.MockTransport(answer)))


async def test_an_answer_that_is_not_multipart_is_refused() -> None:
    client = DrimboxClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"a": 1})))
    with pytest.raises(RemoteRefused, match="multipart"):
        await _all(client)


async def test_an_unreachable_drimbox_is_a_failure_to_retry() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(RemoteUnavailable, match="injoignable"):
        await _all(DrimboxClient(transport=httpx.MockTransport(refuse)))
