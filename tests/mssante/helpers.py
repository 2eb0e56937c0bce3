"""Shared by the MSSanté end-to-end tests: the running platform, its sandbox operator seen from outside (IMAP with
imapclient, admin routes with httpx), a test DPI that keeps every HL7 message, and builders of ANS example mail."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from imapclient import IMAPClient

from opensegur.server import Runtime
from opensegur.transactions.hl7v2 import parse
from opensegur.transactions.mss_mail import MailPatient, build_document_mail
from opensegur.transactions.zam import ZamMessage, parse_zam
from opensegur.transport.mllp import MllpServer
from tests.conftest import SHARED
from tests.dmp.helpers import running_platform, schematron_cache
from tests.mssante.conftest import package

__all__ = ["schematron_cache"]  # the session fixture, re-exported for the test modules

CISIS = SHARED / "cisis" / "ExemplesCDA"
CR_IMG = CISIS / "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml"
CR_BIO = CISIS / "BIO-CR-BIO_2024.01_TSH_1.xml"
INS = "279035121518989"
PATIENT = MailPatient(INS, "PAT-TROIS", "DOMINIQUE", date(1979, 3, 28))
PATIENT_BOX = f"{INS}@patient.mssante.fr"
PRT_RECIPIENT = "adam.hoda@test-ci-sis.mssante.fr"  # the PRT RCT of the ANS MDM example
HOSPITAL_SENDER = "dpi@hopitala.mssante.fr"  # the demo's applicative mailbox, as the operator spells it
RADIOLOGY = "radiologie@hopitalA.mssante.fr"
DOCTOR = "thomas.eric@medecin.mssante.fr"  # a sandbox mailbox outside the hospital: the inbound mail's sender
WAIT_S = 40.0


@dataclass
class DpiStub:
    """The DPI's MLLP listener: keeps every message (ZAM and MDM) and answers AA with the volet's ACK."""

    messages: list[bytes] = field(default_factory=list)
    server: MllpServer | None = None

    async def handle(self, raw: bytes) -> bytes:
        self.messages.append(raw)
        header = parse(raw)[1]
        return (
            f"MSH|^~\\&|DPI|HOPITAL-A|OPENSEGUR|OPENSEGUR|20260101120000||ACK^{header.trigger}^ACK"
            f"|A{header.control_id}|P|2.6|||||FRA|UNICODE UTF-8\rMSA|AA|{header.control_id}\r"
        ).encode()

    async def start(self) -> str:
        self.server = MllpServer(self.handle, "127.0.0.1", 0)
        await self.server.start()
        return f"127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def of_type(self, message_type: str) -> list[bytes]:
        return [m for m in self.messages if parse(m)[1].message_type == message_type]

    def zams(self, original_control_id: str) -> list[ZamMessage]:
        found = [parse_zam(m) for m in self.of_type("ZAM")]
        return [z for z in found if z.status.original_control_id == original_control_id]


@pytest.fixture
async def mss_platform(tmp_path: Path, schematron_cache: Path) -> AsyncIterator[tuple[Runtime, DpiStub]]:
    """The platform with the sandbox, the demo GHT, a short mail poll and one test DPI for ZAM and MDM."""
    dpi = DpiStub()
    endpoint = await dpi.start()
    try:
        async with running_platform(
            tmp_path,
            schematron_cache,
            zam_endpoint=endpoint,
            dpi_mdm_endpoint=endpoint,
            mss_poll_interval_s=0.5,
            dpi_timeout_s=10.0,
            mss_timeout_s=10.0,
        ) as (rt, _unused):  # the DMP helper's own ZAM listener: overridden, ZAM and MDM both come here
            yield rt, dpi
    finally:
        await dpi.stop()


async def wait_for(predicate: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``predicate`` until it returns something truthy, which is returned; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)


# ---- the sandbox operator, from outside ---------------------------------------------------------------------


def mss_endpoints(rt: Runtime) -> dict[str, Any]:
    return dict(rt.endpoints["mssante"])


async def published_endpoints(rt: Runtime) -> dict[str, Any]:
    """What a tester reads first: /sandbox/endpoints on the platform."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as c:
        r = await c.get("/sandbox/endpoints")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


def _imap_fetch_all(endpoints: dict[str, Any], mailbox: str, folder: str) -> dict[int, bytes]:
    host, _, port = endpoints["mssante"]["imap"].rpartition(":")
    with IMAPClient(host, port=int(port), ssl=False, timeout=10) as client:
        client.login(mailbox, endpoints["mssante"]["password"])
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        data = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return {int(uid): bytes(data[uid][b"BODY[]"]) for uid in sorted(data)}


async def imap_messages(endpoints: dict[str, Any], mailbox: str, folder: str = "INBOX") -> dict[int, bytes]:
    """Every message of a sandbox mailbox folder by UID, read over IMAP as the mailbox owner (flags untouched)."""
    return await asyncio.to_thread(_imap_fetch_all, endpoints, mailbox, folder)


async def admin(rt: Runtime, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.request(method, f"{mss_endpoints(rt)['admin']}{path}", **kwargs)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        out: dict[str, Any] = r.json()
        return out


async def deliver(rt: Runtime, mailbox: str, raw: bytes) -> int:
    """A mail arriving from another operator into one of the sandbox mailboxes; its UID."""
    return int((await admin(rt, "POST", "/deliver", params={"mailbox": mailbox}, content=raw))["uid"])


async def inspect(rt: Runtime, mailbox: str, folder: str | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as c:
        params = {"mailbox": mailbox, **({"folder": folder} if folder else {})}
        r = await c.get(mss_endpoints(rt)["inspect"], params=params)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


def parse_mail(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


# ---- messages -------------------------------------------------------------------------------------------------


def document_mail(
    cda: bytes,
    *,
    recipient: str = RADIOLOGY,
    sender: str = DOCTOR,
    label: str = "CR d'imagerie médicale",
    receipt: bool = True,
    patient: MailPatient = PATIENT,
) -> bytes:
    """A real MSSanté document mail from another hospital's professional: XDM package, X-MSS-* headers."""
    return build_document_mail(
        sender=sender,
        recipients=[recipient],
        patient=patient,
        document_label=label,
        xdm_zip=package(cda),
        body_text="Bonjour,\nCi-joint le compte rendu de votre patiente.\nBien cordialement.",
        nil="DEV935997",
        ins_qualified=True,
        read_receipt_to=sender if receipt else None,
    ).as_bytes()


def set_obx(raw: bytes, code: str, value: str) -> bytes:
    """Set the Y/N value (OBX-5.1) of the MetaDMPMSS OBX named ``code`` in an example message."""
    sep = b"\r"
    segments = raw.split(sep)
    for i, seg in enumerate(segments):
        fields = seg.split(b"|")
        if fields[0] == b"OBX" and len(fields) > 5 and fields[3].split(b"^")[0] == code.encode():
            comps = fields[5].split(b"^")
            comps[0] = value.encode()
            fields[5] = b"^".join(comps)
            segments[i] = b"|".join(fields)
            return sep.join(segments)
    raise AssertionError(f"no OBX {code} in the message")


def obx_cda(mdm: bytes) -> bytes:
    """The CDA of an MDM sent to the DPI (OBX-5.5, base64)."""
    for seg in mdm.split(b"\r"):
        fields = seg.split(b"|")
        if fields[0] == b"OBX" and len(fields) > 5 and fields[2] == b"ED":
            data = fields[5].split(b"^")[4]
            return base64.b64decode(data)
    raise AssertionError("no ED OBX in the MDM")
