"""WADO-RS retrieval as DRIMboxes ask each other for a series (DICOM PS3.18 §8.7, §10.4): which transfer syntaxes
the caller accepts, from the Accept header and its q-values, and the multipart/related answer written one
instance at a time and read back one instance at a time by the consumer.

The ANS sample request (DRIM-M_DATA ``Validateur WADO-RS``) lists one ``multipart/related; type="application/dicom"``
media range per transfer syntax, from JPEG Lossless (q=0.9) down to Explicit VR Little Endian (q=0.4); the answer
gives each part the transfer syntax it is encoded in."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydicom.uid import UID, ExplicitVRLittleEndian
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from opensegur.errors import OpenSegurError
from opensegur.imaging.uids import is_uid

__all__ = [
    "AS_STORED",
    "MalformedMultipart",
    "MultipartReader",
    "NotAcceptable",
    "Part",
    "accepted_transfer_syntaxes",
    "multipart_dicom",
    "multipart_files",
    "multipart_parts",
]

_DICOM = "application/dicom"
# ``transfer-syntax=*`` (PS3.18 §8.7.3.5.2): any, which the DRIMbox takes as « as the PACS stores it », so that a
# consumer asking for it gets the very pixel data the source acquired.
AS_STORED = "*"


class NotAcceptable(OpenSegurError):
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
    """The transfer syntaxes the caller takes, most wanted first, AS_STORED among them for ``*``; Explicit VR
    Little Endian when it names none (PS3.18 §8.7.3.5.2: the default of application/dicom). Raises NotAcceptable."""
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
        wanted.append((q, order, syntax))
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
    return _multipart(
        ((data, f"{_DICOM}; transfer-syntax={syntax}") for data, syntax in parts), _DICOM, boundary
    )


def multipart_files(paths: Iterable[Path], boundary: str | None = None) -> tuple[str, Iterator[bytes]]:
    """A STOW-RS request body of Part 10 files, each read only when its turn comes: memory holds one instance."""
    return _multipart(((path.read_bytes(), _DICOM) for path in paths), _DICOM, boundary)


def multipart_parts(
    parts: Sequence[tuple[bytes, str]], boundary: str | None = None
) -> tuple[str, Iterator[bytes]]:
    """The same for parts of any media type (bytes, the part's Content-Type): frames of pixel data (§8.7.3.3)."""
    media = parts[0][1].split(";", 1)[0].strip() if parts else "application/octet-stream"
    return _multipart(iter(parts), media, boundary)


def _multipart(
    parts: Iterator[tuple[bytes, str]], media: str, boundary: str | None
) -> tuple[str, Iterator[bytes]]:
    boundary = boundary or secrets.token_hex(16)
    content_type = f'multipart/related; type="{media}"; boundary={boundary}'

    def body() -> Iterator[bytes]:
        for data, part_type in parts:
            yield f"--{boundary}\r\nContent-Type: {part_type}\r\nContent-Length: {len(data)}\r\n\r\n".encode(
                "ascii"
            )
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    return content_type, body()


class MalformedMultipart(OpenSegurError):
    """The answer is not a complete multipart/related body of DICOM instances: the French reason."""


@dataclass
class Part:
    """One instance received: its headers (names in lower case) and its bytes, spooled to disk past a few MB."""

    headers: dict[str, str]
    # Handed over open: the reader of the part closes it.
    body: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(max_size=_SPOOL))  # noqa: SIM115
    size: int = 0


_SPOOL = 8 * 1024 * 1024


def boundary_of(content_type: str) -> str:
    """The boundary of a multipart/related Content-Type. Raises MalformedMultipart."""
    kind, params = _params(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/related" or not boundary or len(boundary) > 200:
        raise MalformedMultipart(f"Réponse qui n'est pas du multipart/related : « {content_type[:120]} »")
    return boundary


class MultipartReader:
    """Reads a multipart/related body fed chunk by chunk (python-multipart's streaming parser) and hands over each
    part once whole, so that memory holds at most one spooled part. ``close`` says whether the body ended with its
    closing boundary: a source that stopped mid-transfer is told apart from a complete answer."""

    def __init__(self, content_type: str, *, max_part: int) -> None:
        self._max_part = max_part
        self._done: list[Part] = []
        self._current: Part | None = None
        self._field = b""
        self._value = b""
        self._ended = False
        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_part_begin": self._begin,
                "on_header_field": self._on_field,
                "on_header_value": self._on_value,
                "on_header_end": self._header_end,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def _begin(self) -> None:
        self._current = Part({})

    def _on_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        assert self._current is not None
        name = self._field.decode("latin-1").strip().lower()
        self._current.headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self._current is not None
        self._current.size += end - start
        if self._current.size > self._max_part:
            raise MalformedMultipart(f"Instance de plus de {self._max_part // (1024 * 1024)} Mo refusée")
        self._current.body.write(data[start:end])

    def _part_end(self) -> None:
        assert self._current is not None
        self._current.body.seek(0)
        self._done.append(self._current)
        self._current = None

    def _end(self) -> None:
        self._ended = True

    def feed(self, chunk: bytes) -> list[Part]:
        """The parts completed by ``chunk``."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MalformedMultipart(f"Corps multipart illisible : {exc}") from exc
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Raises MalformedMultipart if the body stopped before its closing boundary."""
        if not self._ended:
            if self._current is not None:
                self._current.body.close()
            raise MalformedMultipart("Réponse interrompue avant la fin (dernière limite multipart absente)")
