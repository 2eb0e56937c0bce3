"""WADO-RS retrieval as DRIMboxes ask each other for a series (DICOM PS3.18 §8.7, §10.4): which transfer syntaxes
the caller accepts, from the Accept header and its q-values, and the multipart/related answer written one
instance at a time.

The ANS sample request (DRIM-M_DATA ``Validateur WADO-RS``) lists one ``multipart/related; type="application/dicom"``
media range per transfer syntax, from JPEG Lossless (q=0.9) down to Explicit VR Little Endian (q=0.4); the answer
gives each part the transfer syntax it is encoded in."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator

from pydicom.uid import UID, ExplicitVRLittleEndian

from opensegur.imaging.uids import is_uid

__all__ = ["NotAcceptable", "accepted_transfer_syntaxes", "multipart_dicom"]

_DICOM = "application/dicom"


class NotAcceptable(Exception):
    """No media range of the Accept header is a DICOM instance this DRIMbox can send: HTTP 406."""


def _params(media_range: str) -> tuple[str, dict[str, str]]:
    head, *rest = media_range.split(";")
    params = {}
    for item in rest:
        name, _, value = item.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return head.strip().lower(), params


def _split(accept: str) -> list[str]:
    """Media ranges, split on the commas outside quoted strings."""
    ranges: list[str] = []
    current: list[str] = []
    quoted = False
    for char in accept:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            ranges.append("".join(current))
            current = []
        else:
            current.append(char)
    ranges.append("".join(current))
    return [r for r in ranges if r.strip()]


def accepted_transfer_syntaxes(accept: str | None) -> list[str]:
    """The transfer syntaxes the caller takes, most wanted first; Explicit VR Little Endian when it names none
    (PS3.18 §8.7.3.5.2: the default of application/dicom). Raises NotAcceptable."""
    wanted: list[tuple[float, int, str]] = []
    for order, media_range in enumerate(_split(accept or "")):
        kind, params = _params(media_range)
        if kind not in ("multipart/related", "*/*"):
            continue
        if kind == "multipart/related" and params.get("type", _DICOM).lower() != _DICOM:
            continue
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue
        syntax = params.get("transfer-syntax", ExplicitVRLittleEndian)
        # Only a transfer syntax DICOM defines can be negotiated with the PACS.
        if q <= 0 or not (syntax == "*" or (is_uid(syntax) and UID(syntax).is_transfer_syntax)):
            continue
        wanted.append((q, order, ExplicitVRLittleEndian if syntax == "*" else syntax))
    if not accept:
        return [ExplicitVRLittleEndian]
    if not wanted:
        raise NotAcceptable(f"Aucun type accepté n'est {_DICOM} en multipart/related : « {accept[:200]} »")
    ordered = [syntax for _q, _order, syntax in sorted(wanted, key=lambda w: (-w[0], w[1]))]
    return list(dict.fromkeys(ordered))


def multipart_dicom(
    parts: Iterable[tuple[bytes, str]], boundary: str | None = None
) -> tuple[str, Iterator[bytes]]:
    """The Content-Type and the body of a multipart/related answer, written part by part from ``parts``
    (Part 10 bytes, transfer syntax)."""
    boundary = boundary or secrets.token_hex(16)
    content_type = f'multipart/related; type="{_DICOM}"; boundary={boundary}'

    def body() -> Iterator[bytes]:
        for data, syntax in parts:
            yield (
                f"--{boundary}\r\nContent-Type: {_DICOM}; transfer-syntax={syntax}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode("ascii")
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    return content_type, body()
