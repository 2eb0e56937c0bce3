"""Shared by the DMP feed tests: an in-process Platform with a test DPI receiving the ZAM, message builders from
the ANS examples, and views of the platform DB and of the sandbox DMP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from opensegur.config import Settings
from opensegur.server import Platform, Runtime
from opensegur.store.models import Delivery, Document, Exchange, InboundMessage, Job
from opensegur.transactions.zam import ZamMessage, parse_zam
from opensegur.transport.mllp import MllpServer, send_message
from tests.actors import act_as
from tests.conftest import EXAMPLES

VOLET = EXAMPLES / "Vague 2" / "Trans_Doc-CDA-HL7V2" / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
INS = "279035121518989"
MDM_EXAMPLES = {
    "initial": VOLET / "MDM" / "Transmission initiale MDM" / "message_MDM_CR_Radio_INIT_N1_Base64.er7",
    "replacement": VOLET / "MDM" / "Remplacement MDM" / "message_MDM_CR_Radio_RPLC_N1.er7",
    "deletion": VOLET / "MDM" / "Suppression MDM" / "message_MDM_CR_Radio_DEL_N1.er7",
}
# The MDM examples' document ids are <UID_ROOT>71024000081 (initial) and …082 (replacement, deletion).
UID_ROOT = "1.2.250.1.71.4.2.2.120456789."
EXAMPLE_INITIAL, EXAMPLE_REPLACEMENT = "71024000081", "71024000082"


@dataclass
class DpiListener:
    """A test DPI: receives the ZAM business acknowledgements over MLLP and answers AA."""

    messages: list[bytes] = field(default_factory=list)
    server: MllpServer | None = None

    async def handle(self, raw: bytes) -> bytes:
        self.messages.append(raw)
        cid = raw.split(b"|")[9].decode()
        return f"MSH|^~\\&|DPI|X|OPENSEGUR|X|20260101||ACK^Z01^ACK|A{cid}|P|2.6\rMSA|AA|{cid}\r".encode()

    async def start(self) -> int:
        self.server = MllpServer(self.handle, "127.0.0.1", 0)
        await self.server.start()
        return self.server.port


@pytest.fixture(scope="session")
def schematron_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One directory for the whole session even though each test module imports this fixture (pytest then
    # registers one fixture per module): compiling the CI-SIS schematrons is the slow part of a start.
    path = tmp_path_factory.getbasetemp() / "schematron-cache"
    path.mkdir(exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def running_platform(
    tmp_path: Path, schematron_cache: Path, **overrides: Any
) -> AsyncIterator[tuple[Runtime, DpiListener]]:
    """A Platform with the sandbox, the demo GHT, small backoffs and a test DPI for the ZAM."""
    dpi = DpiListener()
    port = await dpi.start()
    options: dict[str, Any] = {
        "data_dir": tmp_path,
        "demo": True,
        "http_port": 0,
        "mllp_port": 0,
        "cache_dir": schematron_cache,
        "zam_endpoint": f"127.0.0.1:{port}",
        "job_backoff_base_s": 0.1,
        "job_backoff_max_s": 0.5,
    }
    options.update(overrides)
    p = Platform(Settings(**options))
    rt = await p.start()
    act_as(rt.app)
    try:
        yield rt, dpi
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await clear_fault(rt)  # wakes sandbox requests still sleeping in an injected delay
        await p.stop()
        assert dpi.server is not None
        await dpi.server.stop()


@pytest.fixture
async def platform(tmp_path: Path, schematron_cache: Path) -> AsyncIterator[tuple[Runtime, DpiListener]]:
    async with running_platform(tmp_path, schematron_cache) as pair:
        yield pair


# ---- HL7 messages -------------------------------------------------------------------------------------------

_counter = itertools.count()


def with_control_id(raw: bytes) -> tuple[bytes, str]:
    """The ANS examples all carry MSH-10 = 015; a DPI numbers its messages, so each test send gets its own."""
    cid = f"T{next(_counter)}-{time.time_ns()}"
    fields = raw.split(b"|", 10)
    fields[9] = cid.encode()
    return b"|".join(fields), cid


def _segments(raw: bytes) -> tuple[bytes, list[bytes]]:
    sep = b"\r" if b"\r" in raw else b"\n"
    return sep, raw.split(sep)


def _is_cda_obx(seg: bytes) -> bool:
    fields = seg.split(b"|", 6)
    if fields[0] != b"OBX" or len(fields) < 6 or fields[2] != b"ED":
        return False
    # Mail bodies (CORPSMAIL_*) are ED too; the CDA is the other one.
    return not fields[3].startswith(b"CORPSMAIL")


def cda_of(raw: bytes) -> bytes:
    """The CDA carried by an example message."""
    _sep, segments = _segments(raw)
    for seg in segments:
        if _is_cda_obx(seg):
            data = seg.split(b"|")[5].split(b"^")[4]
            return base64.b64decode(data + b"=" * (-len(data) % 4))
    raise AssertionError("no CDA in the message")


def with_obx5_data(raw: bytes, data: bytes) -> bytes:
    """Replace the base64 text (OBX-5.5) of the CDA OBX by ``data`` as is."""
    sep, segments = _segments(raw)
    for i, seg in enumerate(segments):
        if _is_cda_obx(seg):
            fields = seg.split(b"|")
            comps = fields[5].split(b"^")
            comps[4] = data
            fields[5] = b"^".join(comps)
            segments[i] = b"|".join(fields)
            return sep.join(segments)
    raise AssertionError("no CDA in the message")


def with_cda(raw: bytes, cda: bytes) -> bytes:
    return with_obx5_data(raw, base64.b64encode(cda))


def patch_cda(raw: bytes, replacements: dict[str, str]) -> bytes:
    """Rewrite ids inside every base64 CDA of an example message (an ORU may carry two)."""
    sep, segments = _segments(raw)
    for i, seg in enumerate(segments):
        if _is_cda_obx(seg):
            fields = seg.split(b"|")
            comps = fields[5].split(b"^")
            cda = base64.b64decode(comps[4] + b"=" * (-len(comps[4]) % 4)).decode("utf-8")
            for old, new in replacements.items():
                cda = cda.replace(old, new)
            comps[4] = base64.b64encode(cda.encode("utf-8"))
            fields[5] = b"^".join(comps)
            segments[i] = b"|".join(fields)
    return sep.join(segments)


def new_number() -> str:
    """A fresh last OID arc for a document id (no leading zero)."""
    return f"9{next(_counter)}{time.time_ns() % 10**9:09d}"


def uid(number: str) -> str:
    return UID_ROOT + number


def mdm(
    kind: str,
    number: str,
    *,
    parent: str | None = None,
    cda_replacements: dict[str, str] | None = None,
    cda: bytes | None = None,
    pid: str | None = None,
    mssante: bool = False,
) -> bytes:
    """An MDM T02/T10/T04 from the ANS example, with the document id ``uid(number)`` (TXA-12 and the CDA) and,
    for a replacement or a deletion, the parent ``uid(parent)``. Segments end with CR as on the wire.

    The example also asks for an MSSanté copy (DESTMSSANTEPS=Y); the DMP tests turn it off unless ``mssante``,
    so that each document has its DMP delivery only (the MSSanté flow has its own tests)."""
    raw = MDM_EXAMPLES[kind].read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    own = EXAMPLE_INITIAL if kind == "initial" else EXAMPLE_REPLACEMENT
    ids = {own: number}
    if kind != "initial":
        ids[EXAMPLE_INITIAL] = parent or EXAMPLE_INITIAL
    body = cda if cda is not None else cda_of(raw)
    text = body.decode("utf-8")
    for old, new in {**ids, **(cda_replacements or {})}.items():
        text = text.replace(old, new)
    raw = with_cda(raw, text.encode("utf-8"))
    sep, segments = _segments(raw)
    for i, seg in enumerate(segments):
        if seg.startswith(b"TXA|"):
            for old, new in ids.items():
                seg = seg.replace(old.encode(), new.encode())
            segments[i] = seg
        elif seg.startswith(b"PID|") and pid is not None:
            segments[i] = pid.encode("utf-8")
    raw = sep.join(segments)
    return raw if mssante else with_flags(raw, DESTMSSANTEPS=False, DESTMSSANTEPAT=False)


def with_flags(raw: bytes, **flags: bool) -> bytes:
    """Set MetaDMPMSS OBX values (``DESTMSSANTEPAT=True``…) in a message."""
    sep, segments = _segments(raw)
    for i, seg in enumerate(segments):
        fields = seg.split(b"|")
        code = fields[3].split(b"^")[0].decode() if len(fields) > 5 else ""
        if fields[0] == b"OBX" and code in flags:
            fields[5] = (b"Y" if flags[code] else b"N") + b"^^expandedYes-NoIndicator"
            segments[i] = b"|".join(fields)
    return sep.join(segments)


def adt(trigger: str, cid: str, *segments: str) -> bytes:
    """An ADT from the GAM of the demo site CHU-X (PAM FR 2.11)."""
    msh = (
        f"MSH|^~\\&|GAM|CHU-X|OPENSEGUR|CHU-X|20240306111154||ADT^{trigger}^ADT_A05|{cid}|P|2.5^FRA^2.11"
        "|||||FRA|UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM"
    )
    return ("\r".join([msh, "EVN||20240306111154", *segments]) + "\r").encode("utf-8")


def pid_segment(
    ipp: str,
    *,
    ins: str | None = None,
    status: str = "PROV",
    name: str = "VERLAINE",
    first: str = "JEANNE",
    birth: str = "19610409",
    sex: str = "F",
    cog: str = "59350",
) -> str:
    ids = f"{ipp}^^^CHU-X&000897406&N^PI"
    if ins:
        ids += f"~{ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    return f"PID|1||{ids}||{name}^{first}^{first}^^^^L||{birth}|{sex}|||^^^^^^BDL^^{cog}" + "|" * 21 + status


@dataclass
class Sent:
    code: str
    cid: str
    ack: bytes

    def err_fields(self) -> list[list[str]]:
        """The ERR segments of the ACK, as lists of fields."""
        text = self.ack.decode("utf-8", "replace")
        return [seg.split("|") for seg in re.split(r"[\r\n]+", text) if seg.startswith("ERR|")]


async def send_raw(rt: Runtime, raw: bytes, *, cid: str | None = None) -> Sent:
    if cid is None:
        raw, cid = with_control_id(raw)
    ack = await send_message("127.0.0.1", rt.mllp_port or 0, raw, timeout=60)
    code = re.search(rb"MSA\|(\w\w)", ack)
    assert code is not None, ack
    return Sent(code.group(1).decode(), cid, ack)


async def send(rt: Runtime, path: Path, replacements: dict[str, str] | None = None) -> tuple[str, str]:
    data = path.read_bytes()
    if replacements:
        data = patch_cda(data, replacements)
    sent = await send_raw(rt, data)
    return sent.code, sent.cid


# ---- waiting and ZAM ----------------------------------------------------------------------------------------


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def zams_for(dpi: DpiListener, cid: str) -> list[ZamMessage]:
    return [z for z in (parse_zam(m) for m in dpi.messages) if z.status.original_control_id == cid]


async def wait_zam(dpi: DpiListener, cid: str, timeout: float = 60.0, count: int = 1) -> list[ZamMessage]:
    async def arrived() -> bool:
        return len(zams_for(dpi, cid)) >= count

    await wait_for(arrived, timeout)
    return zams_for(dpi, cid)


# ---- sandbox DMP --------------------------------------------------------------------------------------------


async def inspect(rt: Runtime, patient: str = INS) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as c:
        r = await c.get(rt.endpoints["dmp"]["inspect"], params={"patient": patient})
        r.raise_for_status()
        # Submission-set signature entries (typeCode E1762) are not clinical documents.
        return [e for e in r.json()["entries"] if e["typeCode"]["code"] != "E1762"]


async def entries_for(rt: Runtime, unique_id: str, patient: str = INS) -> list[dict[str, Any]]:
    return [e for e in await inspect(rt, patient) if e["uniqueId"] == unique_id]


async def entry_status(rt: Runtime, unique_prefix: str) -> str | None:
    for e in await inspect(rt):
        if e["uniqueId"].startswith(unique_prefix):
            return str(e["status"])
    return None


async def open_dmp(rt: Runtime, matricule: str, oid: str = "1.2.250.1.213.1.4.10") -> None:
    """Declare a DMP for a test patient the fixture list does not name (the sandbox refuses any other)."""
    async with httpx.AsyncClient() as c:
        r = await c.put(f"{rt.endpoints['dmp']['admin']}/patients", json={"matricule": matricule, "oid": oid})
        r.raise_for_status()


async def set_fault(rt: Runtime, **config: Any) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{rt.endpoints['dmp']['admin']}/faults", json=config)
        r.raise_for_status()


async def clear_fault(rt: Runtime) -> None:
    async with httpx.AsyncClient() as c:
        (await c.delete(f"{rt.endpoints['dmp']['admin']}/faults")).raise_for_status()


async def dmp_calls(rt: Runtime, transaction: str | None = None) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{rt.endpoints['dmp']['admin']}/calls")
        r.raise_for_status()
        calls: list[dict[str, Any]] = r.json()
        return [x for x in calls if transaction is None or x["transaction"] == transaction]


# ---- platform database --------------------------------------------------------------------------------------


@dataclass
class DocView:
    id: int
    kind: str
    status: str
    status_reason: str | None
    findings: list[dict[str, str]]
    held: bool
    ins_matricule: str | None
    deliveries: list[dict[str, Any]]
    exchanges: list[dict[str, Any]]


def documents(rt: Runtime, unique_id: str) -> list[DocView]:
    with rt.db.session() as s:
        out = []
        for d in s.scalars(select(Document).where(Document.unique_id == unique_id).order_by(Document.id)):
            exchanges = s.scalars(select(Exchange).where(Exchange.document_id == d.id).order_by(Exchange.id))
            out.append(
                DocView(
                    d.id,
                    d.kind,
                    d.status,
                    d.status_reason,
                    list(d.findings or []),
                    d.held,
                    d.ins_matricule,
                    [
                        {
                            "id": x.id,
                            "action": x.action,
                            "status": x.status,
                            "error_code": x.error_code,
                            "last_error": x.last_error,
                            "entry_uuid": x.entry_uuid,
                        }
                        for x in d.deliveries
                    ],
                    [
                        {
                            "transaction": e.transaction,
                            "http_status": e.http_status,
                            "outcome": e.outcome,
                            "detail": e.detail,
                        }
                        for e in exchanges
                    ],
                )
            )
        return out


def document(rt: Runtime, unique_id: str, kind: str = "initial") -> DocView:
    found = [d for d in documents(rt, unique_id) if d.kind == kind]
    assert len(found) == 1, found
    return found[0]


async def wait_status(rt: Runtime, unique_id: str, statuses: set[str], kind: str = "initial") -> DocView:
    async def reached() -> bool:
        found = [d for d in documents(rt, unique_id) if d.kind == kind]
        return bool(found) and found[0].status in statuses

    await wait_for(reached)
    return document(rt, unique_id, kind)


def inbound(rt: Runtime, cid: str) -> dict[str, Any]:
    with rt.db.session() as s:
        row = s.scalar(select(InboundMessage).where(InboundMessage.control_id == cid))
        assert row is not None, f"no inbound message {cid}"
        return {
            "id": row.id,
            "status": row.status,
            "ack_code": row.ack_code,
            "ack": row.ack,
            "errors": list(row.errors or []),
            "payload_sha256": row.payload_sha256,
        }


def delivery_jobs(rt: Runtime, delivery_id: int) -> list[dict[str, Any]]:
    with rt.db.session() as s:
        rows = s.scalars(select(Job).where(Job.kind == "dmp.deliver").order_by(Job.id))
        return [
            {"id": j.id, "status": j.status, "attempts": j.attempts, "last_error": j.last_error}
            for j in rows
            if int(j.args.get("delivery_id", -1)) == delivery_id
        ]


def delivery_row(rt: Runtime, delivery_id: int) -> Delivery:
    with rt.db.session() as s:
        d = s.get_one(Delivery, delivery_id)
        s.expunge(d)
        return d
