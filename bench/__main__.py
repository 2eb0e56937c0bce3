"""`make bench`: throughput of the identity feed and of INSi searches, each beside a bare baseline run here.

Ratios, not absolute figures, are what we compare across machines:
- identity feed: PAM FR messages over MLLP, end to end (frame, parse, RNIV rules, durable commit, ACK), against a
  bare MLLP server on the same SQLite settings that only stores the raw bytes and answers a fixed ACK.
- INSi: searches through the connector, the SOAP stack and the sandbox over loopback HTTP, against a bare
  HTTP POST of the same bytes to a server that answers a constant body.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn

from opensegur.config import Settings
from opensegur.connectors.insi_client import InsiClient
from opensegur.server import Platform, bind
from opensegur.transactions.insi import InsiContext, InsiTraitsQuery, build_traits_request
from opensegur.transport.mllp import MllpServer, frame, read_frame

MSH = (
    "MSH|^~\\&|GAM|CHU-X|OPENSEGUR|CHU-X|20240306111154||ADT^A28^ADT_A05|{cid}|P|2.5^FRA^2.11|||||FRA|"
    "UNICODE UTF-8|FR||2.11^IHE_FRANCE-2.11-PAM"
)
PID = (
    "PID|1||{ipp}^^^CHU-X&000897406&N^PI||{name}^{first}^{first}^^^^L||{birth}|{sex}|||^^^^^^BDL^^59350"
    + "|" * 21
    + "PROV"
)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def message(i: int) -> bytes:
    """Distinct people, as a GAM sends them: names, dates and sexes vary."""
    name = "BENCH" + "".join(LETTERS[(i // 26**k) % 26] for k in range(3))
    birth = f"{1930 + i % 90}{1 + i % 12:02d}{1 + i % 28:02d}"
    return (
        "\r".join(
            [
                MSH.format(cid=f"B{i}"),
                "EVN||20240306111154",
                PID.format(
                    ipp=f"BN{i}", name=name, first=f"PRENOM{LETTERS[i % 26]}", birth=birth, sex="MF"[i % 2]
                ),
            ]
        ).encode()
        + b"\r"
    )


async def send_many(port: int, payloads: list[bytes]) -> list[bytes]:
    """One MLLP connection, messages sent one after the other as a DPI does."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    acks = []
    for p in payloads:
        writer.write(frame(p))
        await writer.drain()
        ack = await read_frame(reader, 1 << 20)
        assert ack is not None
        acks.append(ack)
    writer.close()
    await writer.wait_closed()
    return acks


async def bench_feed(n: int, tmp: Path) -> tuple[float, float]:
    settings = Settings(data_dir=tmp / "platform", demo=True, sandbox=False, http_port=0, mllp_port=0)
    platform = Platform(settings)
    rt = await platform.start()
    payloads = [message(i) for i in range(n)]

    async def ours(first_last: tuple[int, int]) -> None:
        acks = await send_many(rt.mllp_port or 0, payloads[first_last[0] : first_last[1]])
        assert all(b"MSA|AA|" in a for a in acks), acks[:1]

    start = time.perf_counter()
    await asyncio.gather(*(ours((k * n // 4, (k + 1) * n // 4)) for k in range(4)))
    ours_rate = n / (time.perf_counter() - start)
    await platform.stop()

    # Baseline: the same framing and SQLite durability, no parsing, no identity rules.
    db = sqlite3.connect(tmp / "baseline.db", check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("create table m (id integer primary key, raw blob)")
    lock = asyncio.Lock()
    ack = b"MSH|^~\\&|X|X|X|X|2024||ACK|1|P|2.5\rMSA|AA|1\r"

    def store(raw: bytes) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("insert into m (raw) values (?)", (raw,))
        db.execute("COMMIT")

    async def handler(raw: bytes) -> bytes:
        async with lock:
            await asyncio.to_thread(store, raw)
        return ack

    server = MllpServer(handler, "127.0.0.1", 0)
    await server.start()
    payloads = [message(n + i) for i in range(n)]

    async def base(first_last: tuple[int, int]) -> None:
        await send_many(server.port, payloads[first_last[0] : first_last[1]])

    start = time.perf_counter()
    await asyncio.gather(*(base((k * n // 4, (k + 1) * n // 4)) for k in range(4)))
    base_rate = n / (time.perf_counter() - start)
    await server.stop()
    db.close()
    return ours_rate, base_rate


async def bench_insi(n: int) -> tuple[float, float]:
    from fastapi import FastAPI
    from fastapi.responses import Response

    from opensegur.sandbox.insi import create_insi_app

    null = FastAPI()
    body = b"<ok/>"

    @null.post("/null")
    async def _null() -> Response:
        return Response(body, media_type="application/soap+xml")

    servers = []
    urls = []
    for app in (create_insi_app(), null):
        sock = bind("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        servers.append((server, task))
        urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
    ctx = InsiContext(lps_name="bench", lps_version="1", idam="BENCH", emitter="BENCH")
    q = InsiTraitsQuery(
        birth_name="ADRUN", first_names=["ZOE"], sex="F", birth_date="1975-12-31", birth_place="63220"
    )
    client = InsiClient(f"{urls[0]}/insi", ctx)
    await client.search_by_traits(q)
    start = time.perf_counter()
    for _ in range(n):
        result = await client.search_by_traits(q)
        assert result.code == "00"
    ours = n / (time.perf_counter() - start)
    await client.aclose()
    payload = build_traits_request(q, ctx)
    async with httpx.AsyncClient() as http:
        await http.post(f"{urls[1]}/null", content=payload)
        start = time.perf_counter()
        for _ in range(n):
            (await http.post(f"{urls[1]}/null", content=payload)).raise_for_status()
        base = n / (time.perf_counter() - start)
    for server, task in servers:
        server.should_exit = True
        await task
    return ours, base


async def bench_dmp_feed(n: int, tmp: Path) -> tuple[float, float]:
    """Documents per second from the first MLLP byte to the DMP's registry answer, all validation on."""
    from sqlalchemy import func, select

    from bench.mdm_factory import mdm
    from opensegur.store.models import Delivery

    settings = Settings(
        data_dir=tmp / "platform", demo=True, http_port=0, mllp_port=0, cache_dir=tmp / "cache"
    )
    platform = Platform(settings)
    rt = await platform.start()
    await platform.warmed()
    run = str(int(time.time() * 1000) % 10**9)  # document ids are OIDs: digits only
    payloads = [mdm(i, run=run) for i in range(n)]

    def delivered() -> int:
        with rt.db.session() as s:
            return int(
                s.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "delivered"))
            )

    start = time.perf_counter()
    await asyncio.gather(*(send_many(rt.mllp_port or 0, payloads[k::4]) for k in range(4)))
    deadline = time.monotonic() + 600
    while await asyncio.to_thread(delivered) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {delivered()} of {n} documents reached the DMP in 10 minutes")
        await asyncio.sleep(0.05)
    ours = n / (time.perf_counter() - start)
    await platform.stop()

    # Baseline: what any integration engine must do at least: parse the HL7, decode the base64, parse the XML,
    # and POST it to a server that answers at once.
    import base64

    import hl7
    from fastapi import FastAPI
    from fastapi.responses import Response
    from lxml import etree

    null = FastAPI()

    @null.post("/null")
    async def _null() -> Response:
        return Response(b"ok")

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(null, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/null"

    def work(raw: bytes) -> bytes:
        msg = hl7.parse(raw.decode("utf-8"))
        for seg in msg.segments("OBX"):
            comps = str(seg[5]).split("^")
            if str(seg[2]) == "ED" and len(comps) > 4 and len(comps[4]) > 10_000:
                cda = base64.b64decode(comps[4])
                etree.fromstring(cda)
                return cda
        raise AssertionError("no CDA")

    async with httpx.AsyncClient() as http:

        async def lane(items: list[bytes]) -> None:
            for raw in items:
                cda = await asyncio.to_thread(work, raw)
                (await http.post(url, content=cda)).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(lane(payloads[k::4]) for k in range(4)))
        base = n / (time.perf_counter() - start)
    server.should_exit = True
    await task
    return ours, base


async def main(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        feeds = [await bench_feed(args.messages, Path(tmp) / f"run{i}") for i in range(args.repeat)]
    ours = statistics.median(f[0] for f in feeds)
    base = statistics.median(f[1] for f in feeds)
    rows.append(("Flux d'identité PAM FR sur MLLP (messages/s)", ours, "MLLP + INSERT SQLite brut", base))
    with tempfile.TemporaryDirectory() as tmp:
        docs = [await bench_dmp_feed(args.documents, Path(tmp) / f"dmp_{i}") for i in range(args.repeat)]
    ours = statistics.median(d[0] for d in docs)
    base = statistics.median(d[1] for d in docs)
    rows.append(
        (
            "Flux DMP de bout en bout : MDM sur MLLP → validation complète → ITI-41 (documents/s)",
            ours,
            "HL7 + base64 + XML + POST HTTP nu",
            base,
        )
    )
    insis = [await bench_insi(args.searches) for _ in range(args.repeat)]
    ours = statistics.median(i[0] for i in insis)
    base = statistics.median(i[1] for i in insis)
    rows.append(("Recherche INSi par traits via le bac à sable (requêtes/s)", ours, "POST HTTP nu", base))
    lines = ["| mesure | OpenSégur | référence nue | ratio |", "|---|---:|---|---:|"]
    for label, o, blabel, b in rows:
        lines.append(f"| {label} | {o:,.0f} | {blabel} : {b:,.0f} | {o / b:.2f} |")
    table = "\n".join(lines)
    print(table)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
