"""Distinct DPI documents for load: the ANS example MDM^T02 (CR d'imagerie N1) with a new document id each time.

Used by `make bench` and by the crash test, so both push documents a real RIS would send.
"""

from __future__ import annotations

import base64
import os
from functools import lru_cache
from pathlib import Path

SHARED = Path(os.environ.get("OPENSEGUR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
EXAMPLE = (
    SHARED
    / "hl7v2-examples"
    / "Vague 2"
    / "Trans_Doc-CDA-HL7V2"
    / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
    / "MDM"
    / "Transmission initiale MDM"
)
DOC_ID = "1.2.250.1.71.4.2.2.120456789.71024000081"


@lru_cache(maxsize=1)
def _template() -> tuple[list[bytes], bytes]:
    raw = (EXAMPLE / "message_MDM_CR_Radio_INIT_N1_Base64.er7").read_bytes()
    segments = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    cda = (EXAMPLE / "CR_Radio_CDAN1_v1.XML").read_bytes()
    return segments, cda


def document_id(n: int, run: str = "1") -> str:
    return f"1.2.250.1.71.4.2.2.120456789.9{run}.{n}"


def mdm(n: int, run: str = "1") -> bytes:
    """MDM^T02 number ``n`` of load run ``run``: its own control id, TXA-12 and ClinicalDocument/id."""
    segments, cda = _template()
    doc_id = document_id(n, run)
    body = base64.b64encode(cda.replace(DOC_ID.encode(), doc_id.encode()))
    out = []
    for seg in segments:
        if not seg:
            continue
        fields = seg.split(b"|")
        if fields[0] == b"MSH":
            fields[9] = f"L{run}-{n}".encode()
        elif fields[0] == b"TXA":
            fields[12] = doc_id.encode()
        elif (
            fields[0] == b"OBX"
            and len(fields) > 5
            and fields[3].startswith((b"DESTMSSANTEPS^", b"DESTMSSANTEPAT^"))
        ):
            # The DMP feed alone: the example also asks for an MSSanté copy, which the mail flow measures apart.
            fields[5] = b"N^^expandedYes-NoIndicator"
        elif fields[0] == b"OBX" and len(fields) > 5 and fields[2] == b"ED":
            comps = fields[5].split(b"^")
            if len(comps) > 4 and len(comps[4]) > 10_000:  # the CDA, not a short mail body (also ED)
                comps[4] = body
                fields[5] = b"^".join(comps)
        out.append(b"|".join(fields))
    return b"\r".join(out) + b"\r"
