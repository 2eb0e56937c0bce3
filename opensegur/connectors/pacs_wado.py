"""The hospital's PACS over its own WADO-RS (DICOMweb), when it has one: the DRIMbox then serves another
DRIMbox's request by streaming the PACS's answer through, untouched, rather than by C-GET — no DIMSE round trip per
instance, no re-encoding, memory flat.

One transfer syntax per request (PS3.18 allows a PACS to refuse a list): the caller's preferences are tried in
their order, ``*`` (as stored) included, until the PACS accepts one."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import httpx

from opensegur.flows.drimbox_ports import PacsUnavailable

__all__ = ["OpenedSeries", "PacsWado"]


@dataclass
class OpenedSeries:
    content_type: str
    response: httpx.Response

    async def body(self) -> AsyncGenerator[bytes, None]:
        """The answer's bytes as they come; the PACS's connection is given back at the end, or on a stop."""
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        finally:
            await self.response.aclose()


class PacsWado:
    def __init__(
        self, base_url: str, *, timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Identity encoding: the body is passed through as the PACS wrote it, with its own Content-Type.
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, headers={"Accept-Encoding": "identity"}
        )

    async def open_series(
        self, study_instance_uid: str, series_instance_uid: str, transfer_syntaxes: Sequence[str]
    ) -> OpenedSeries | None:
        """The PACS's answer for the series, open, in the first of ``transfer_syntaxes`` it accepts; None when the
        PACS does not hold the series. Raises PacsUnavailable."""
        url = f"{self.base_url}/studies/{study_instance_uid}/series/{series_instance_uid}"
        for syntax in transfer_syntaxes:
            accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
            try:
                response = await self._http.send(
                    self._http.build_request("GET", url, headers={"Accept": accept}), stream=True
                )
            except httpx.HTTPError as exc:
                raise PacsUnavailable(f"PACS (WADO-RS) injoignable : {type(exc).__name__}") from exc
            if response.status_code == 200:
                return OpenedSeries(response.headers.get("content-type", ""), response)
            await response.aclose()
            if response.status_code == 404:
                return None
            if response.status_code not in (406, 415):
                raise PacsUnavailable(f"PACS (WADO-RS) : HTTP {response.status_code}")
        raise PacsUnavailable("PACS (WADO-RS) : aucune des syntaxes de transfert demandées n'est acceptée")

    async def aclose(self) -> None:
        await self._http.aclose()
