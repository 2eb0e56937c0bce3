"""What the DRIMbox flows need of the outside, as small interfaces: the PACS (DIMSE), Pro Santé Connect's token
introspection and the DRIMboxes of other hospitals (WADO-RS); with their ways of failing. The connectors
implement them."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from opensegur.errors import OpenSegurError, RetryLater
from opensegur.imaging.wado import Part

__all__ = [
    "IntrospectionPort",
    "IntrospectionUnavailable",
    "PacsError",
    "PacsPort",
    "PacsQueryError",
    "PacsUnavailable",
    "PacsWadoPort",
    "RemoteDrimboxPort",
    "RemoteRefused",
    "RemoteUnavailable",
    "RetrievedInstance",
]


class PacsError(OpenSegurError):
    """The PACS refused or failed the request: the French reason, for the operator."""


class PacsUnavailable(PacsError, RetryLater):
    """No association: the PACS is down, unreachable or refuses this AE title. Retry later."""


class PacsQueryError(PacsError):
    """The PACS answered the request with a failure status."""


@dataclass(frozen=True)
class RetrievedInstance:
    """One instance as the PACS sent it: a DICOM Part 10 file and the transfer syntax it is encoded in."""

    data: bytes
    transfer_syntax: str


class PacsPort(Protocol):
    """Blocking calls: the flows run them in a thread."""

    def echo(self) -> None: ...

    def find_instances(self, study_instance_uid: str) -> list[Dataset]: ...

    def retrieve_series(
        self, study_instance_uid: str, series_instance_uid: str, transfer_syntaxes: Sequence[str]
    ) -> Iterator[RetrievedInstance]: ...

    def store(self, files: Sequence[Path]) -> int: ...


class PacsStorePort(Protocol):
    """Where an exam of another hospital is imported: the site's PACS by C-STORE, or by STOW-RS. Blocking."""

    def store(self, files: Sequence[Path]) -> int:
        """Stores every file; the number stored. Raises PacsUnavailable (retry) or PacsQueryError (refused)."""
        ...


class OpenedWadoSeries(Protocol):
    content_type: str

    def body(self) -> AsyncGenerator[bytes, None]: ...


class PacsWadoPort(Protocol):
    """The PACS's own WADO-RS, when it has one: a series streamed through as the PACS answers it."""

    async def open_series(
        self, study_instance_uid: str, series_instance_uid: str, transfer_syntaxes: Sequence[str]
    ) -> OpenedWadoSeries | None: ...


class IntrospectionUnavailable(RetryLater):
    """PSC did not answer, or answered something unusable: the caller cannot be checked now (HTTP 503)."""


class IntrospectionPort(Protocol):
    async def subject(self, token: str) -> str | None:
        """The professional (``sub``) of an active Pro Santé Connect token, else None."""
        ...


class RemoteUnavailable(RetryLater):
    """The other DRIMbox did not answer, failed, or stopped mid-transfer: retry later."""


class RemoteRefused(OpenSegurError):
    """The other DRIMbox refused the request (token, manifest, series): asking again will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RemoteDrimboxPort(Protocol):
    def retrieve_series(
        self, url: str, token: str, kos_sop_instance_uid: str, operator_dn: str = ""
    ) -> AsyncGenerator[Part, None]:
        """The instances of the series at ``url`` as they arrive, in the transfer syntax the source stores them
        in; over HTTPS, from a server whose certificate is ``operator_dn`` when the list names one. Raises
        RemoteUnavailable or RemoteRefused, the former also after some parts were handed over."""
        ...

    async def aclose(self) -> None: ...
