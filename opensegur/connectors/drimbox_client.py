"""The DRIMboxes of other hospitals, as this DRIMbox's consumer asks them for a series (WADO-RS, DRIM-M): the
professional's Pro Santé Connect token as bearer, the manifest in ``KOS-SOPInstanceUID``, the instances in the
transfer syntax the source stores them in, read one at a time as they stream in."""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx
from cryptography import x509

from opensegur.flows.drimbox_ports import RemoteRefused, RemoteUnavailable
from opensegur.imaging.wado import AS_STORED, MalformedMultipart, MultipartReader, Part
from opensegur.security.drimbox_directory import same_name

__all__ = ["DrimboxClient", "remote_tls"]

ACCEPT = f'multipart/related; type="application/dicom"; transfer-syntax={AS_STORED}'
MAX_INSTANCE = 2 * 1024 * 1024 * 1024  # a multi-frame instance may be large; beyond, a source is misbehaving


def remote_tls(
    client_cert: Path | None, client_key: Path | None, remote_ca: Path | None
) -> ssl.SSLContext | bool:
    """How other DRIMboxes are called: with this DRIMbox's operator certificate (mutual TLS) and the configured
    authorities, else plain server authentication against the system's."""
    if client_cert is None and remote_ca is None:
        return True
    context = ssl.create_default_context(cafile=str(remote_ca) if remote_ca else None)
    if client_cert is not None and client_key is not None:
        context.load_cert_chain(str(client_cert), str(client_key))
    return context


def _check_operator(response: httpx.Response, operator_dn: str) -> None:
    """The server answering is the DRIMbox the list names at this address: its certificate has the listed DN."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return  # plain HTTP (a test bench, a DRIMbox of the same site): no certificate to compare
    der = ssl_object.getpeercert(binary_form=True)
    name = x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else ""
    if not same_name(name, operator_dn):
        raise RemoteRefused(
            495,
            f"Le certificat du DRIMbox distant ({name or 'aucun'}) n'est pas celui que la liste blanche nomme",
        )


class DrimboxClient:
    def __init__(
        self,
        *,
        timeout: float = 60.0,
        verify: bool | ssl.SSLContext = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # One client, its connections kept: a study is several series from the same source.
        self._http = httpx.AsyncClient(timeout=timeout, verify=verify, transport=transport)

    async def retrieve_series(
        self, url: str, token: str, kos_sop_instance_uid: str, operator_dn: str = ""
    ) -> AsyncGenerator[Part, None]:
        headers = {
            "Authorization": f"Bearer {token}",
            "KOS-SOPInstanceUID": kos_sop_instance_uid,
            "Accept": ACCEPT,
        }
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if operator_dn:
                    _check_operator(response, operator_dn)
                if response.status_code >= 500 or response.status_code == 429:
                    raise RemoteUnavailable(f"DRIMbox distant : HTTP {response.status_code}")
                if response.status_code != 200:
                    await response.aread()
                    raise RemoteRefused(response.status_code, _reason(response))
                try:
                    reader = MultipartReader(response.headers.get("content-type", ""), max_part=MAX_INSTANCE)
                except MalformedMultipart as exc:
                    raise RemoteRefused(response.status_code, str(exc)) from exc
                async for chunk in response.aiter_bytes():
                    for part in reader.feed(chunk):
                        yield part
                reader.close()
        except MalformedMultipart as exc:
            raise RemoteUnavailable(f"DRIMbox distant : {exc}") from exc
        except httpx.HTTPError as exc:
            raise RemoteUnavailable(
                f"DRIMbox distant injoignable ou interrompu ({type(exc).__name__})"
            ) from exc

    async def aclose(self) -> None:
        await self._http.aclose()


def _reason(response: httpx.Response) -> str:
    """The source's French reason (FastAPI's ``detail``), else the status."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    said = f" : {detail}" if isinstance(detail, str) else ""
    return f"DRIMbox distant : refus HTTP {response.status_code}{said[:300]}"
