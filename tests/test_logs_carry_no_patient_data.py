"""Application logs never carry an INS, a patient's names or document content (issue 9, secure defaults).

The whole platform runs in this process (sandbox INSi, DMP and MSSanté operator, a test DPI for the ZAM) and
receives the ANS identity examples, an ADT refused for a wrong NIR key, a truncated frame, a CDA report by MDM
(to the DMP and by MSSanté) and a biology report by ORU; the pages and the API are read, and the patient is
searched in INSi. Every record of every
logger is captured at DEBUG; those the serving process writes to its log (see ``in_application_log``) are searched
for what identifies the patients or is the documents' content.

Libraries' DEBUG records are not searched: they trace what they exchange (signxml the canonicalised VIHF, which
carries the INS; imapclient the mails' headers), so the serving process must never let them through, whatever
its ``log_level``: below INFO, only the ``opensegur`` loggers may follow it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES
from tests.dmp import helpers
from tests.dmp.helpers import (
    VOLET,
    cda_of,
    mdm,
    new_number,
    running_platform,
    send_raw,
    wait_zam,
    with_control_id,
)
from tests.flows.helpers import hl7, msh, pid

schematron_cache = helpers.schematron_cache

IDENTITY_EXAMPLES = sorted((EXAMPLES / "SGL").glob("*.er7")) + sorted(
    (EXAMPLES / "Vague 2" / "Consentement_DMP_PAMFR").glob("*.er7")
)
ORU_INITIAL = sorted((VOLET / "ORU" / "Transmission initiale ORU").glob("message_*INIT*"))[-1]
# Refused for its NIR key: the error path must not log what it refuses either.
BAD_NIR = hl7(
    msh("A28", "LOG-BAD-NIR"),
    "EVN||2024",
    pid("LOG5001", name="ZOLTANOVA", first="PERPETUE", ins="279035121518988", status="VALI"),
)


def in_application_log(record: logging.LogRecord) -> bool:
    """Whether the serving process's log holds this record: the platform's own loggers at every level (DEBUG
    included: an operator may turn it on), the libraries' from INFO, httpx's from WARNING (``opensegur.cli``
    sets it so; this test's own requests are logged at INFO by the same logger)."""
    if record.name == "opensegur" or record.name.startswith("opensegur."):
        return True
    if record.name == "httpx" or record.name.startswith("httpx."):
        return record.levelno >= logging.WARNING
    return record.levelno >= logging.INFO


def _segments(raw: bytes) -> list[list[str]]:
    text = raw.decode("utf-8", "replace")
    return [seg.split("|") for seg in re.split(r"[\r\n]+", text) if seg]


def patient_data(messages: list[bytes]) -> set[str]:
    """What must never be logged: every INS matricule and every birth name, used name and first name the PID
    segments carry, the CDA titles, and the first bytes of every document's base64."""
    found: set[str] = set()
    for raw in messages:
        for fields in _segments(raw):
            if fields[0] == "PID" and len(fields) > 5:
                for identifier in fields[3].split("~"):
                    parts = identifier.split("^")
                    if len(parts) > 4 and parts[4] == "INS":
                        found.add(parts[0])
                for name in fields[5].split("~"):
                    found.update(part for part in name.split("^")[:3] if len(part) >= 3)
            if fields[0] == "OBX" and len(fields) > 5 and fields[2] == "ED":
                data = fields[5].split("^")[4] if fields[5].count("^") >= 4 else ""
                if len(data) > 10_000:
                    found.add(data[:40])
                    cda = base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-8", "replace")
                    title = re.search(r"<title>([^<]{8,})</title>", cda)
                    if title:
                        found.add(title.group(1).strip())
    return found


async def test_an_end_to_end_run_logs_no_patient_data(
    tmp_path: Path, schematron_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent: list[bytes] = []
    async with running_platform(tmp_path, schematron_cache) as (rt, dpi):
        for path in IDENTITY_EXAMPLES:
            raw, _ = with_control_id(path.read_bytes())
            sent.append(raw)
            assert (await send_raw(rt, raw)).code == "AA", path.name
        sent.append(BAD_NIR)
        assert (await send_raw(rt, BAD_NIR, cid="LOG-BAD-NIR")).code == "AE"
        with socket.create_connection(("127.0.0.1", rt.mllp_port or 0), timeout=5) as sock:
            sock.sendall(b"\x0b" + BAD_NIR[:60])  # truncated: no end block, then closed

        number = new_number()
        report = mdm("initial", number, mssante=True)
        oru, _ = with_control_id(ORU_INITIAL.read_bytes())
        sent += [report, oru]
        assert cda_of(report)  # the report carries a real CDA, so its content is among what is searched
        mdm_sent = await send_raw(rt, report)
        assert mdm_sent.code == "AA"
        assert (await send_raw(rt, oru)).code == "AA"
        zam = (await wait_zam(dpi, mdm_sent.cid))[0]
        assert zam.status.success, zam

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as web:
            found = (await web.get("/api/v1/patients", params={"ins": "279035121518989"})).json()
            patient_id = found["items"][0]["id"]
            for route in (
                f"/identites/{patient_id}",
                f"/api/v1/patients/{patient_id}",
                f"/api/v1/patients/{patient_id}/documents",
                "/documents",
            ):
                assert (await web.get(route)).status_code == 200, route
            insi = await web.post(f"/api/v1/patients/{patient_id}/insi-search")
            assert insi.status_code == 200, insi.text
        # The MSSanté copy and the ORU's jobs run meanwhile: whatever they log is searched too.
        await asyncio.sleep(0.5)

    forbidden = patient_data(sent)
    assert {
        "279035121518989",
        "279035121518988",
        "PAT-TROIS",
        "DOMINIQUE",
        "ZOLTANOVA",
        "PERPETUE",
    } <= forbidden
    records = [r for r in caplog.records if in_application_log(r)]
    leaks = {
        (r.name, value)
        for r in records
        for value in forbidden
        if value in caplog.handler.format(r)  # message, arguments and traceback
    }
    assert not leaks, sorted(leaks)
    assert len(records) > 20  # the run did log: the search looked at something
