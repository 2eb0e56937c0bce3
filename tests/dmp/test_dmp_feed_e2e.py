"""The DMP feed end to end: every ANS example of the volet over MLLP → ACK → XDS.b to the sandbox DMP → ZAM."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from opensegur.config import Settings
from opensegur.server import Platform, Runtime
from opensegur.transactions.zam import parse_zam
from opensegur.transport.mllp import MllpServer, send_message
from tests.conftest import EXAMPLES

VOLET = EXAMPLES / "Vague 2" / "Trans_Doc-CDA-HL7V2" / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1"
INS = "279035121518989"


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
    return tmp_path_factory.mktemp("schematron-cache")


@pytest.fixture
async def platform(tmp_path: Path, schematron_cache: Path) -> AsyncIterator[tuple[Runtime, DpiListener]]:
    dpi = DpiListener()
    port = await dpi.start()
    settings = Settings(
        data_dir=tmp_path,
        demo=True,
        http_port=0,
        mllp_port=0,
        cache_dir=schematron_cache,
        zam_endpoint=f"127.0.0.1:{port}",
        job_backoff_base_s=0.1,
        job_backoff_max_s=0.5,
    )
    p = Platform(settings)
    rt = await p.start()
    yield rt, dpi
    await p.stop()
    assert dpi.server is not None
    await dpi.server.stop()


_counter = iter(range(10**6))


def with_control_id(raw: bytes) -> tuple[bytes, str]:
    """The ANS examples all carry MSH-10 = 015; a DPI numbers its messages, so each test send gets its own."""
    cid = f"T{next(_counter)}-{time.time_ns()}"
    fields = raw.split(b"|", 10)
    fields[9] = cid.encode()
    return b"|".join(fields), cid


def patch_cda(raw: bytes, replacements: dict[str, str]) -> bytes:
    """Rewrite ids inside the base64 CDA of an example message (see the ORU chain defect below)."""
    sep = b"\r" if b"\r" in raw else b"\n"
    segments = raw.split(sep)
    for i, seg in enumerate(segments):
        if seg.startswith(b"OBX|") and seg.split(b"|")[2] == b"ED" and b"^Base64^" in seg:
            fields = seg.split(b"|")
            comps = fields[5].split(b"^")
            if not comps[4].startswith(b"PD94"):  # "<?xm": the CDA, not a mail body (also ED)
                continue
            cda = base64.b64decode(comps[4] + b"=" * (-len(comps[4]) % 4)).decode("utf-8")
            for old, new in replacements.items():
                cda = cda.replace(old, new)
            comps[4] = base64.b64encode(cda.encode("utf-8"))
            fields[5] = b"^".join(comps)
            segments[i] = b"|".join(fields)
    return sep.join(segments)


async def send(rt: Runtime, path: Path, replacements: dict[str, str] | None = None) -> tuple[str, str]:
    data = path.read_bytes()
    if replacements:
        data = patch_cda(data, replacements)
    raw, cid = with_control_id(data)
    ack = await send_message("127.0.0.1", rt.mllp_port or 0, raw, timeout=30)
    code = re.search(rb"MSA\|(\w\w)", ack)
    assert code is not None, ack
    return code.group(1).decode(), cid


async def inspect(rt: Runtime) -> list[dict]:  # type: ignore[type-arg]
    async with httpx.AsyncClient() as c:
        r = await c.get(rt.endpoints["dmp"]["inspect"], params={"patient": INS})
        r.raise_for_status()
        # Submission-set signature entries (typeCode E1762) are not clinical documents.
        return [e for e in r.json()["entries"] if e["typeCode"]["code"] != "E1762"]


async def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


def zams_for(dpi: DpiListener, cid: str) -> list:  # type: ignore[type-arg]
    return [z for z in (parse_zam(m) for m in dpi.messages) if z.status.original_control_id == cid]


async def entry_status(rt: Runtime, unique_prefix: str) -> str | None:
    for e in await inspect(rt):
        if e["uniqueId"].startswith(unique_prefix):
            return str(e["status"])
    return None


# The ORU examples do not chain: the initial message embeds a CDA whose id is …1.1.9, the replacement names
# …1.1.12 as the document it replaces, and the deletion embeds a CDA with id …1.1.12 (the replacement is …1.1.13).
# A PFI must refuse a replacement or deletion of a document it never received (test below), so the chain is run
# with the ids corrected: the replacement replaces …1.1.9 and the deletion deletes …1.1.13.
ORU_FIXES: dict[str, dict[str, str]] = {
    "replacement": {'<id root="1.2.250.1.213.1.1.12"/>': '<id root="1.2.250.1.213.1.1.9"/>'},
    "deletion": {
        '<id root="1.2.250.1.213.1.1.12"/>': '<id root="1.2.250.1.213.1.1.13"/>',
        '<id root="1.2.250.1.213.1.1.10"/>': '<id root="1.2.250.1.213.1.1.9"/>',
    },
}


@pytest.mark.parametrize("family", ["MDM", "ORU"])
async def test_ans_examples_initial_replacement_deletion(
    platform: tuple[Runtime, DpiListener], family: str
) -> None:
    rt, dpi = platform
    folder = VOLET / family
    # The MDM folder has the same initial message twice; only the *_Base64 one carries a real CDA.
    initial = sorted((folder / f"Transmission initiale {family}").glob("message_*INIT*"))[-1]
    replacement = next((folder / f"Remplacement {family}").glob("message_*"))
    deletion = next((folder / f"Suppression {family}").glob("message_*"))

    code, cid = await send(rt, initial)
    assert code == "AA"
    await wait_for(lambda: _has_zam(dpi, cid))
    zam = zams_for(dpi, cid)[0]
    assert zam.status.success, zam
    entries = await inspect(rt)
    assert len([e for e in entries if e["status"] == "Approved"]) >= 1
    first = {e["uniqueId"] for e in entries}

    fixes = ORU_FIXES if family == "ORU" else {}
    code, cid = await send(rt, replacement, fixes.get("replacement"))
    assert code == "AA"
    await wait_for(lambda: _has_zam(dpi, cid))
    assert zams_for(dpi, cid)[0].status.success
    entries = await inspect(rt)
    assert any(e["status"] == "Deprecated" and e["uniqueId"] in first for e in entries)
    new = [e for e in entries if e["uniqueId"] not in first and e["status"] == "Approved"]
    assert len(new) == 1

    code, cid = await send(rt, deletion, fixes.get("deletion"))
    assert code == "AA"
    await wait_for(lambda: _has_zam(dpi, cid))
    assert zams_for(dpi, cid)[0].status.success
    entries = await inspect(rt)
    assert any(e["status"] == "Deleted" for e in entries)


async def _has_zam(dpi: DpiListener, cid: str) -> bool:
    return bool(zams_for(dpi, cid))


async def test_published_oru_replacement_of_an_unknown_document_is_refused(
    platform: tuple[Runtime, DpiListener],
) -> None:
    rt, _dpi = platform
    folder = VOLET / "ORU"
    assert (await send(rt, next((folder / "Transmission initiale ORU").glob("message_*"))))[0] == "AA"
    # As published, the replacement names a parent (…1.1.12) that was never sent: AE with the volet's code 900.
    raw, _cid = with_control_id(next((folder / "Remplacement ORU").glob("message_*")).read_bytes())
    ack = await send_message("127.0.0.1", rt.mllp_port or 0, raw, timeout=30)
    assert b"MSA|AE|" in ack and b"|900" in ack
