"""The PACS's own WADO-RS, as the DRIMbox source reads it: one transfer syntax per request, tried in the caller's
order; a series the PACS does not hold; a PACS that fails."""

from __future__ import annotations

import httpx
import pytest

from opensegur.connectors.pacs_wado import PacsWado
from opensegur.flows.drimbox_ports import PacsUnavailable

JPEG, EXPLICIT = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"
MULTIPART = 'multipart/related; type="application/dicom"; boundary=b'
BODY = b"--b\r\n...--b--\r\n"


async def test_the_first_syntax_the_pacs_accepts_is_streamed_through_untouched() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["accept"])
        if JPEG in request.headers["accept"]:
            return httpx.Response(406)
        return httpx.Response(200, headers={"content-type": MULTIPART}, stream=httpx.ByteStream(BODY))

    pacs = PacsWado("http://pacs.test/dicom-web/", transport=httpx.MockTransport(answer))
    opened = await pacs.open_series("1.2.3", "1.2.3.4", [JPEG, EXPLICIT])
    assert opened is not None and opened.content_type == MULTIPART
    assert b"".join([chunk async for chunk in opened.body()]) == BODY
    assert [a.rsplit("=", 1)[1] for a in asked] == [JPEG, EXPLICIT]
    await pacs.aclose()


@pytest.mark.parametrize(("status", "outcome"), [(404, None), (500, PacsUnavailable), (406, PacsUnavailable)])
async def test_what_the_pacs_answers_instead(status: int, outcome: object) -> None:
    pacs = PacsWado(
        "http://pacs.test/dicom-web", transport=httpx.MockTransport(lambda r: httpx.Response(status))
    )
    if outcome is None:
        assert await pacs.open_series("1.2.3", "1.2.3.4", [EXPLICIT]) is None
    else:
        with pytest.raises(PacsUnavailable):
            await pacs.open_series("1.2.3", "1.2.3.4", [EXPLICIT])


async def test_an_unreachable_pacs_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    pacs = PacsWado("http://pacs.test/dicom-web", transport=httpx.MockTransport(refuse))
    with pytest.raises(PacsUnavailable, match="injoignable"):
        await pacs.open_series("1.2.3", "1.2.3.4", ["*"])
