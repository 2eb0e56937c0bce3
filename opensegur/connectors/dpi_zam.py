"""Sends the business acknowledgements (ZAM) back to the DPI over MLLP, at the endpoint the structure declares."""

from __future__ import annotations

import itertools
import logging
import time
from datetime import UTC, datetime
from typing import Any

from opensegur.errors import RetryLater
from opensegur.transactions.zam import ZamError, ZamKind, ZamStatus, build_zam, original_header
from opensegur.transport.mllp import MllpFramingError, send_message

_DESTINATION_KIND: dict[str, ZamKind] = {
    "DMP": "reception_dmp",
    "MSSANTE_PS": "reception_mss",
    "MSSANTE_PAT": "reception_mss",
}
_counter = itertools.count(1)
log = logging.getLogger(__name__)


def zam_errors(errors: list[dict[str, str]]) -> list[ZamError]:
    """Findings and delivery errors as ERR segments: the volet carries one code per ERR."""
    out = []
    for e in errors:
        code = e.get("code") or "906"
        out.append(
            ZamError(
                code=code,
                label=e.get("message", "")[:200],
                severity="W" if e.get("severity") == "warning" else "E",
            )
        )
    return out


class MllpZamSender:
    """ZamPort over MLLP to the platform's ``zam_endpoint``."""

    def __init__(
        self,
        default_endpoint: tuple[str, int] | None,
        *,
        timeout: float = 10.0,
        app: str = "OPENSEGUR",
        facility: str = "OPENSEGUR",
    ) -> None:
        self.default_endpoint = default_endpoint
        self.timeout = timeout
        self.app = app
        self.facility = facility

    async def send(
        self, document: dict[str, Any], destination: str, ok: bool, errors: list[dict[str, str]]
    ) -> None:
        context = document["context"]
        zam = context.get("zam") or {}
        endpoint = self.default_endpoint
        if endpoint is None:
            # Documents accepted while an endpoint was configured, after it was removed: nobody left to tell.
            log.info("no ZAM endpoint configured for document %s: acknowledgement not sent", document["id"])
            return
        host, port = endpoint
        status = ZamStatus(
            kind=_DESTINATION_KIND.get(destination, "reception_dmp"),
            success=ok,
            timestamp=datetime.now(UTC),
            # The volet allows one ERR in a ZAM: the first blocking problem (documents often have several).
            errors=[] if ok else (zam_errors(errors)[:1] or [ZamError(code="906", label="Erreur 'Autre'")]),
        )
        control_id = f"ZAM{int(time.time() * 1000)}{next(_counter):04d}"
        payload = build_zam(
            original_header(zam),
            status,
            control_id=control_id,
            now=datetime.now(UTC),
            app=self.app,
            facility=self.facility,
        )
        try:
            ack = await send_message(host, int(port), payload, timeout=self.timeout)
        except (OSError, TimeoutError, MllpFramingError) as exc:
            raise RetryLater(f"DPI injoignable pour l'accusé métier : {exc}") from exc
        if b"MSA|AA" not in ack and b"MSA|CA" not in ack:
            raise RetryLater("Le DPI n'a pas accepté l'accusé métier")
