"""A DICOM C-STORE receiver (pynetdicom, in its own threads) for what the PACS pushes to the DRIMbox: IOCM
Rejection Notes. Only the PACS's AE title is let in; only Key Object Selection documents (and C-ECHO, for the
PACS's own connection test) are accepted.

The answer to each C-STORE is given once the handler returned, so a status Success means the note is committed:
the PACS keeps, and sends again, a note that was refused or that met a failure (0xC000, 0xA700)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import KeyObjectSelectionDocumentStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from opensegur.errors import OpenSegurError

__all__ = ["DicomReceiver", "NotAccepted"]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000  # the object is not one this receiver acts on, or is malformed
OUT_OF_RESOURCES = 0xA700  # the note could not be kept now: the PACS sends it again


class NotAccepted(OpenSegurError):
    """The object is refused for a reason the sender must fix (answered 0xC000): the French reason."""


@dataclass
class DicomReceiver:
    host: str
    port: int
    ae_title: str
    allowed_peer_aet: str
    handle: Callable[[Dataset], None]  # keeps the dataset durably, or raises NotAccepted
    _server: ThreadedAssociationServer | None = None

    def start(self) -> int:
        """Listens; the port (useful with port 0)."""
        ae = AE(ae_title=self.ae_title)
        ae.require_calling_aet = [self.allowed_peer_aet]
        ae.add_supported_context(Verification)
        ae.add_supported_context(KeyObjectSelectionDocumentStorage)
        server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None  # block=False returns the running server
        self._server = server
        return int(server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.handle(ds)
        except NotAccepted as exc:
            log.warning("DICOM receiver: object refused: %s", exc)
            return CANNOT_UNDERSTAND
        except Exception:  # the PACS must learn the note was not kept, whatever broke: it will send it again
            log.exception("DICOM receiver: object not kept")
            return OUT_OF_RESOURCES
        return SUCCESS

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
