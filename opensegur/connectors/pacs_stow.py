"""The site's PACS receiving an exam of another hospital over STOW-RS (DICOMweb, PS3.18 §10.5) instead of C-STORE,
for a PACS configured so (``pacs_import = "stow-rs"``): one request per exam, the instances read from the cache one
at a time as the request streams, the PACS's answer read for every instance it refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from opensegur.flows.drimbox_ports import PacsQueryError, PacsUnavailable
from opensegur.imaging.wado import multipart_files

__all__ = ["PacsStow"]

_REFERENCED, _FAILED, _FAILURE_REASON = "00081199", "00081198", "00081197"


class PacsStow:
    def __init__(
        self, base_url: str, *, timeout: float = 120.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/studies"
        self.timeout, self.transport = timeout, transport

    def store(self, files: Sequence[Path]) -> int:
        content_type, body = multipart_files(files)
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        try:
            with httpx.Client(timeout=self.timeout, transport=self.transport) as http:
                response = http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise PacsUnavailable(f"PACS (STOW-RS) injoignable : {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise PacsUnavailable(f"PACS (STOW-RS) : HTTP {response.status_code}, réessai plus tard")
        answer = _json(response)
        # 200: every instance stored (§10.5.3), whether or not the answer lists them.
        stored = len(answer.get(_REFERENCED, {}).get("Value", [])) or (
            len(files) if response.status_code == 200 else 0
        )
        failed = answer.get(_FAILED, {}).get("Value", [])
        # 409: nothing stored; 202: some refused (§10.5.3). A refusal does not improve by asking again.
        if response.status_code not in (200, 202) or failed:
            reasons = sorted({str(f.get(_FAILURE_REASON, {}).get("Value", ["?"])[0]) for f in failed})
            raise PacsQueryError(
                f"Le PACS (STOW-RS) a refusé {len(failed) or len(files) - stored} instance(s) sur {len(files)} "
                f"(HTTP {response.status_code}{', motif ' + ', '.join(reasons) if reasons else ''})"
            )
        return stored


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    # The answer is one dataset, which some PACS wrap in a list.
    if isinstance(answer, list):
        answer = answer[0] if answer else {}
    return answer if isinstance(answer, dict) else {}
