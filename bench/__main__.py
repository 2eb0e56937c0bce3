"""`make bench`: throughput of the platform's flows and routes, each beside a bare baseline run here.

Ratios, not absolute figures, are what we compare across machines:
- identity feed: PAM FR messages over MLLP, end to end (frame, parse, RNIV rules, durable commit, ACK), against a
  bare MLLP server on the same SQLite settings that only stores the raw bytes and answers a fixed ACK.
- DMP feed: documents over MLLP to the sandbox DMP with full validation, against a bare HL7 + base64 + XML + HTTP
  POST loop; then the MLLP ACK's round trip while documents are delivered, sent steadily at half the rate reached.
- DMP feed on PostgreSQL (`dmp_pg`): the same documents through `serve` without workers and one, then two,
  `opensegur worker` processes on one PostgreSQL (OPENSEGUR_BENCH_PG_URL, else a throwaway cluster with fsync on
  started by bench/pg.py), against the same baseline; the CPU per document includes the cluster's when it is ours.
- INSi: searches through the connector, the SOAP stack and the sandbox over loopback HTTP, against a bare
  HTTP POST of the same bytes to a server that answers a constant body.
- access control: a page with a session and an API route with a token, against the same routes of the same app
  with the access decision bypassed (bench/auth.py says how and why).
- DMP tab: a doctor opens the list of a patient's 200 DMP documents, then the first one, against the bare ITI-18
  and ITI-43 calls to the same sandbox (bench/dmp_tab.py says how).
- DRIMbox images: an exam of another hospital brought into the image cache through the source DRIMbox and this
  site's consumer, against the same series read from the PACS's own WADO-RS (bench/imaging.py says how).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench.auth import auth_data_parent, bench_auth
from bench.backlog import bench_backlog, summary, write_results
from bench.dmp_tab import DOCUMENTS, bench_dmp_tab, median_figures
from bench.imaging import SIZE, bench_imaging
from bench.pg import ENV as PG_ENV
from bench.pg import PgCluster, PgUnavailable, pg_cluster, pg_database, postgres_cpu
from bench.profile import profiled
from bench.sandbox import sandbox_settings
from bench.saxon import saxon_alone_ms
from opensegur.config import Settings
from opensegur.connectors.insi_client import InsiClient
from opensegur.documents.delivery import DeliveryStatus
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


async def paced_acks(port: int, payloads: list[bytes], rate: float) -> list[float]:
    """ACK round trips (ms) of messages sent at ``rate`` per second over four connections, as DPIs send through a
    day: each connection waits for its ACK, and a late ACK is counted from the moment its message left."""
    lanes, latencies = 4, []
    start = time.perf_counter()

    async def lane(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(k, len(payloads), lanes):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                sent = time.perf_counter()
                writer.write(frame(payloads[i]))
                await writer.drain()
                ack = await read_frame(reader, 1 << 20)
                latencies.append((time.perf_counter() - sent) * 1000)
                assert ack is not None and b"MSA|AA|" in ack, ack
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(lane(k) for k in range(lanes)))
    return latencies


def p50_p99(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98]


async def bench_feed(n: int, tmp: Path) -> tuple[float, float]:
    settings = Settings(data_dir=tmp / "platform", demo=True, sandbox=False, http_port=0, mllp_port=0)
    platform = Platform(settings)
    rt = await platform.start()
    # The validator compiles its schematrons after a start, on both cores for about a minute: a hospital's feed
    # runs on a warm platform, and measuring during that compilation would charge it to each message.
    await platform.warmed()
    payloads = [message(i) for i in range(n)]

    async def ours(first_last: tuple[int, int]) -> None:
        acks = await send_many(rt.mllp_port or 0, payloads[first_last[0] : first_last[1]])
        assert all(b"MSA|AA|" in a for a in acks), acks[:1]

    with profiled("identity"):
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
    with profiled("insi"):
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


def cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) of this process and of its children, by role (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmdline)
    me = os.getpid()
    out: dict[str, float] = {}
    for pid, (_, cpu, cmdline) in procs.items():
        ancestor = pid
        while ancestor in procs and ancestor not in (me, 1):
            ancestor = procs[ancestor][0]
        if ancestor != me:
            continue
        role = (
            "platform"
            if pid == me
            else "sandbox"
            if " sandbox " in cmdline
            else "worker"
            if cmdline.rstrip().endswith(" worker")
            else "validation"
        )
        out[role] = out.get(role, 0.0) + cpu
    return out


@contextlib.asynccontextmanager
async def sandbox_process(data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """`opensegur sandbox` in its own process, as the national services are in production: the platform's
    figures then count the platform's work, not the simulator's (both still share this machine's cores)."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "sandbox.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "opensegur.cli", "sandbox", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                try:
                    endpoints: dict[str, Any] = (
                        await http.get(f"http://127.0.0.1:{port}/sandbox/endpoints")
                    ).json()
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        raise SystemExit(f"the sandbox did not start: see {log.name}") from None
                    await asyncio.sleep(0.1)
            else:
                raise SystemExit("the sandbox did not answer within a minute")
        yield endpoints
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@dataclass
class DmpFeedRun:
    rate: float
    base: float
    cpu: dict[str, float]
    split_rate: float
    split_cpu: dict[str, float]
    ack_ms: tuple[float, float]  # p50, p99 under a steady load at half the rate


async def bench_dmp_feed(n: int, tmp: Path) -> DmpFeedRun:
    """Documents per second from the first MLLP byte to the DMP's registry answer, all validation on; and the CPU
    milliseconds each process (platform, validation, sandbox DMP) spent per document, to say where the time goes.
    Measured twice: the platform alone (its own workers), then serving with one `opensegur worker` process beside
    it on the same SQLite file. The platform alone is then fed at half the rate it reached, and the MLLP ACK's
    round trip measured while its workers deliver."""
    async with sandbox_process(tmp / "sandbox") as endpoints:
        alone, cpu_alone, acks = await _dmp_burst(n, tmp / "alone", endpoints, profile="dmp")
        split, cpu_split, _ = await _dmp_burst(n, tmp / "split", endpoints, worker_processes=1)
    base = await _dmp_baseline(n)
    assert acks is not None
    return DmpFeedRun(alone, base, cpu_alone, split, cpu_split, p50_p99(acks))


@dataclass
class DmpPgRun:
    rates: dict[int, float]  # by number of `opensegur worker` processes
    cpus: dict[int, dict[str, float]]
    base: float


async def bench_dmp_pg(n: int, tmp: Path, cluster: PgCluster, worker_counts: tuple[int, ...]) -> DmpPgRun:
    """The DMP feed on PostgreSQL: `serve` without workers and one, then two, `opensegur worker` processes, each
    run on a fresh database of the same cluster, against the same sandbox DMP process."""
    rates: dict[int, float] = {}
    cpus: dict[int, dict[str, float]] = {}
    async with sandbox_process(tmp / "sandbox") as endpoints:
        for k in worker_counts:
            with pg_database(cluster) as url:
                rates[k], cpus[k], _ = await _dmp_burst(
                    n, tmp / f"pg{k}", endpoints, worker_processes=k, db_url=url, pg=cluster
                )
    return DmpPgRun(rates, cpus, await _dmp_baseline(n))


async def _dmp_burst(
    n: int,
    tmp: Path,
    endpoints: dict[str, Any],
    *,
    worker_processes: int = 0,
    db_url: str | None = None,
    pg: PgCluster | None = None,
    profile: str | None = None,
) -> tuple[float, dict[str, float], list[float] | None]:
    """One burst of ``n`` documents: the platform alone (its own two workers) when ``worker_processes`` is 0,
    else `serve` without workers and that many `opensegur worker` processes on the same database (``db_url``,
    default the platform's SQLite file). CPU ms per document by process role; ``pg``: also the cluster's own.
    ``profile``: the name of the flame graph of the measured burst (``make profile``)."""
    from sqlalchemy import func, select

    from bench.mdm_factory import mdm
    from opensegur.flows.jobs import JobKind
    from opensegur.store.models import Delivery, Job

    shared: dict[str, Any] = {
        "data_dir": tmp / "platform",
        "cache_dir": tmp.parent / "cache",
        **sandbox_settings(endpoints),
    }
    if db_url is not None:
        shared["db"] = db_url
    platform = Platform(
        Settings(**shared, demo=True, http_port=0, mllp_port=0, workers=0 if worker_processes else 2)
    )
    rt = await platform.start()
    await platform.warmed()
    workers: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, **{f"OPENSEGUR_{k.upper()}": str(v) for k, v in shared.items()}}
    for i in range(worker_processes):
        with (tmp / f"worker{i}.log").open("wb") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "opensegur.cli", "worker"], env=env, stdout=log, stderr=log
                )
            )
    run = str(int(time.time() * 1000) % 10**9)  # document ids are OIDs: digits only
    acks: list[float] | None = None

    def delivered() -> int:
        with rt.db.session() as s:
            count = s.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status == DeliveryStatus.DELIVERED)
            )
            return int(count or 0)

    def busy_workers() -> int:
        """Processes that have validated a document: each compiles its schematrons on its first one."""
        with rt.db.session() as s:
            names = s.scalars(select(Job.worker).distinct().where(Job.kind == JobKind.PROCESS))
            return len({(name or "").rsplit("/", 1)[0] for name in names})

    async def until_delivered(count: int) -> None:
        deadline = time.monotonic() + 600
        while await asyncio.to_thread(delivered) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {delivered()} of {count} documents reached the DMP in 10 minutes")
            if any(w.poll() is not None for w in workers):
                raise SystemExit(f"an `opensegur worker` process ended: see {tmp}/worker*.log")
            await asyncio.sleep(0.05)

    try:
        # Documents first, one at a time until every worker process has run one, so that every process has
        # compiled its schematrons before the clock starts. They are not counted in n.
        warm = 0
        while True:
            await send_many(rt.mllp_port or 0, [mdm(warm, run=run)])
            warm += 1
            await until_delivered(warm)
            if await asyncio.to_thread(busy_workers) >= max(1, worker_processes) or warm >= 20:
                break
        payloads = [mdm(i, run=run) for i in range(warm, warm + n + n // 2)]
        measured, paced = payloads[:n], payloads[n:]
        cpu_before = cpu_by_process()
        pg_before = postgres_cpu(pg) if pg is not None else None
        with profiled(profile) if profile else contextlib.nullcontext():
            start = time.perf_counter()
            await asyncio.gather(*(send_many(rt.mllp_port or 0, measured[k::4]) for k in range(4)))
            await until_delivered(warm + n)
            rate = n / (time.perf_counter() - start)
        cpu = {role: (s - cpu_before.get(role, 0.0)) * 1000 / n for role, s in cpu_by_process().items()}
        pg_after = postgres_cpu(pg) if pg is not None else None
        if pg_before is not None and pg_after is not None:
            cpu["postgresql"] = (pg_after - pg_before) * 1000 / n
        if not worker_processes:
            acks = await paced_acks(rt.mllp_port or 0, paced, rate / 2)
            await until_delivered(warm + len(measured) + len(paced))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)
        await platform.stop()
    return rate, cpu, acks


async def _dmp_baseline(n: int) -> float:
    """What any integration engine must do at least: parse the HL7, decode the base64, parse the XML, and POST it
    to a server that answers at once."""
    import base64

    import hl7
    from fastapi import FastAPI
    from fastapi.responses import Response
    from lxml import etree

    from bench.mdm_factory import mdm

    payloads = [mdm(i, run="0") for i in range(n)]

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
    return base


async def bench_mss_inbound(n: int, tmp: Path) -> tuple[float, float]:
    """Mails integrated per second: store the polled mail, parse MIME and XDM, match the qualified INS, create the
    document and its MDM job — against parsing the same mails alone (MIME + XDM + CDA header)."""
    from datetime import date

    from sqlalchemy import select

    from bench.mdm_factory import DOC_ID, _template
    from opensegur.content.cda import parse_cda
    from opensegur.content.xds_metadata import document_metadata, submission_set_metadata
    from opensegur.flows import mss_inbound
    from opensegur.flows.mssante_ports import FetchedMail
    from opensegur.ops.demo import load_demo
    from opensegur.store.db import Database
    from opensegur.store.models import Patient, Structure
    from opensegur.transactions.mss_mail import (
        MailPatient,
        build_document_mail,
        open_packages,
        parse_inbound_mail,
    )
    from opensegur.transactions.xdm import build_xdm

    _, cda = _template()
    _, header = parse_cda(cda)
    p = header.patient
    mailbox = "radiologie@hopitalA.mssante.fr"

    def mail(i: int) -> bytes:
        raw = cda.replace(DOC_ID.encode(), f"{DOC_ID}.{i}".encode())
        _, h = parse_cda(raw)
        m = document_metadata(h, ipp="IPP1", ipp_authority_oid="1.2.250.1.999.1")
        ss = submission_set_metadata(
            m, unique_id=f"1.2.250.1.999.2.{i}", source_id="1.2.250.1.999.3", patient_class="I"
        )
        zipped = build_xdm(ss, [(m, raw)], readme_text="CH de test", index_html_title="CR")
        who = MailPatient(p.ins_matricule or "", p.birth_family or "", p.first_given or "", date(1979, 3, 28))
        return build_document_mail(
            sender="thomas.eric@medecin.mssante.fr",
            recipients=[mailbox],
            patient=who,
            document_label="CR d'imagerie médicale",
            xdm_zip=zipped,
            body_text="Bonjour, ci-joint le compte rendu.",
            nil="BENCH",
            ins_qualified=True,
        ).as_bytes()

    mails = [mail(i) for i in range(n)]
    db = Database(f"sqlite:///{tmp / 'mss.db'}")
    db.migrate()
    load_demo(db)
    with db.session() as s:
        site = s.scalars(select(Structure).where(Structure.kind != "EJ")).first()
        assert site is not None
        s.add(
            Patient(
                structure_id=site.id,
                ins_matricule=p.ins_matricule,
                ins_oid=p.ins_oid,
                birth_name=p.birth_family or "",
                first_names=" ".join(p.given_names) or (p.first_given or ""),
                birth_date=date(1979, 3, 28),
                sex=p.gender or "F",
                status="QUAL",
            )
        )

    class Reader:
        def __init__(self) -> None:
            self.pending = [FetchedMail(mailbox, i + 1, raw) for i, raw in enumerate(mails)]

        async def fetch_new(self, box: str, limit: int) -> list[FetchedMail]:
            out, self.pending = self.pending[:limit], self.pending[limit:]
            return out

        async def mark_done(self, box: str, uids: list[int]) -> None:
            return None

    ctx = mss_inbound.MssInboundContext(db=db, dpi=None, mail_sender=None)  # type: ignore[arg-type]

    def integrate_all() -> list[str]:
        from opensegur.store.models import Mail

        with db.session() as s:
            ids = list(s.scalars(select(Mail.id).where(Mail.direction == "in").order_by(Mail.id)))
        return [mss_inbound.integrate_mail(ctx, i) for i in ids]

    with profiled("mss"):
        start = time.perf_counter()
        reader = Reader()
        while await mss_inbound.poll_mailbox(db, reader, mailbox, 50):
            pass
        outcomes = await asyncio.to_thread(integrate_all)
        ours = n / (time.perf_counter() - start)
    if outcomes.count("integrated") != n:
        raise SystemExit(f"only {outcomes.count('integrated')} of {n} mails integrated: {set(outcomes)}")
    db.dispose()

    start = time.perf_counter()
    for raw in mails:
        packages, _ = open_packages(parse_inbound_mail(raw))
        assert [d.cda for pk in packages for d in pk.documents if d.cda is not None]
    base = n / (time.perf_counter() - start)
    return ours, base


async def main(args: argparse.Namespace) -> None:
    rows = []
    notes = []
    only = set(args.only or FLOWS)
    if "identity" in only:
        with tempfile.TemporaryDirectory() as tmp:
            feeds = [await bench_feed(args.messages, Path(tmp) / f"run{i}") for i in range(args.repeat)]
        ours = statistics.median(f[0] for f in feeds)
        base = statistics.median(f[1] for f in feeds)
        rows.append(("Flux d'identité PAM FR sur MLLP (messages/s)", ours, "MLLP + INSERT SQLite brut", base))
    if "dmp" in only:
        with tempfile.TemporaryDirectory() as tmp:
            docs = [await bench_dmp_feed(args.documents, Path(tmp) / f"dmp_{i}") for i in range(args.repeat)]
        base = statistics.median(d.base for d in docs)
        variants = (
            ("une plateforme", [d.rate for d in docs], [d.cpu for d in docs]),
            (
                "`serve` + un processus `opensegur worker`",
                [d.split_rate for d in docs],
                [d.split_cpu for d in docs],
            ),
        )
        for label, rates, cpus in variants:
            rows.append(
                (
                    f"Flux DMP de bout en bout, {label} : MDM sur MLLP → validation complète → ITI-41 (documents/s)",
                    statistics.median(rates),
                    "HL7 + base64 + XML + POST HTTP nu",
                    base,
                )
            )
            cpu = {
                role: statistics.median(c.get(role, 0.0) for c in cpus)
                for role in ("platform", "worker", "validation", "sandbox")
            }
            notes.append(
                f"Flux DMP, {label}, CPU par document (ms) : "
                + ", ".join(f"{role} {ms:.0f}" for role, ms in cpu.items() if ms >= 0.5)
                + f" — total {sum(cpu.values()):.0f} pour {os.cpu_count()} cœurs"
            )
        validation_ms = statistics.median(d.cpu.get("validation", 0.0) for d in docs)
        with tempfile.TemporaryDirectory() as tmp:
            saxon_ms = await asyncio.to_thread(saxon_alone_ms, 50, Path(tmp))
        rows.append(
            (
                "Processus de validation, CPU par document (ms) : schematrons du document reçus du flux DMP",
                validation_ms,
                "Saxon seul, les mêmes schematrons sur le même document en boucle",
                saxon_ms,
            )
        )
        notes.append(
            "Latence de l'ACK MLLP pendant que les documents partent au DMP, envoi régulier à la moitié du débit "
            f"maximal d'une plateforme : p50 {statistics.median(d.ack_ms[0] for d in docs):,.0f} ms, "
            f"p99 {statistics.median(d.ack_ms[1] for d in docs):,.0f} ms"
        )
    if "dmp_pg" in only:
        try:
            with pg_cluster() as cluster, tempfile.TemporaryDirectory() as tmp:
                pg_runs = [
                    await bench_dmp_pg(args.documents, Path(tmp) / f"pg_{i}", cluster, (1, 2))
                    for i in range(args.repeat)
                ]
        except PgUnavailable as exc:
            print(f"Lignes PostgreSQL du flux DMP omises : {exc} (ou donner {PG_ENV}).", flush=True)
            notes.append(f"Flux DMP sur PostgreSQL non mesuré : {exc}")
        else:
            base = statistics.median(r.base for r in pg_runs)
            durability = "grappe jetable, fsync actif" if cluster.data_dir else f"base de {PG_ENV}"
            for k in (1, 2):
                label = f"`serve` sur PostgreSQL + {k} processus `opensegur worker`"
                rows.append(
                    (
                        f"Flux DMP de bout en bout, {label} : MDM sur MLLP → validation complète → ITI-41 "
                        "(documents/s)",
                        statistics.median(r.rates[k] for r in pg_runs),
                        "HL7 + base64 + XML + POST HTTP nu",
                        base,
                    )
                )
                roles = ("platform", "worker", "validation", "sandbox", "postgresql")
                cpu = {role: statistics.median(r.cpus[k].get(role, 0.0) for r in pg_runs) for role in roles}
                notes.append(
                    f"Flux DMP, {label} ({durability}), CPU par document (ms) : "
                    + ", ".join(
                        f"{role}{' (' + str(k) + ' processus)' if role in ('worker', 'validation') else ''} "
                        f"{ms:.0f}"
                        for role, ms in cpu.items()
                        if ms >= 0.5
                    )
                    + f" — total {sum(cpu.values()):.0f} pour {os.cpu_count()} cœurs"
                )
    if "backlog" in only:
        with tempfile.TemporaryDirectory() as tmp:
            async with sandbox_process(Path(tmp) / "sandbox") as endpoints:
                backlog = await bench_backlog(args.backlog, Path(tmp) / "backlog", endpoints, message)
        for line in summary(backlog):
            print(line, flush=True)
        csv_path, svg_path = write_results(backlog, Path("bench/results"))
        print(f"Échantillons : {csv_path} ; graphique : {svg_path}", flush=True)
        notes.extend(summary(backlog))
    if "mss" in only:
        with tempfile.TemporaryDirectory() as tmp:
            mss = [await bench_mss_inbound(args.mails, Path(tmp) / f"mss_{i}") for i in range(args.repeat)]
        ours = statistics.median(m[0] for m in mss)
        base = statistics.median(m[1] for m in mss)
        rows.append(
            (
                "Courriels MSSanté reçus intégrés : MIME + XDM + rapprochement INS + document + MDM (courriels/s)",
                ours,
                "analyse MIME + XDM + en-tête CDA seule",
                base,
            )
        )
    if "auth" in only:
        with tempfile.TemporaryDirectory(dir=auth_data_parent()) as tmp:
            page, api = await bench_auth(args.requests, Path(tmp))
        for label, fig in (("Page patient avec session", page), ("API patient avec jeton", api)):
            rows.append(
                (
                    f"{label} (requêtes/s)",
                    1e6 / fig.us,
                    "même route, décision d'accès contournée",
                    1e6 / fig.base_us,
                )
            )
            notes.append(
                f"{label} : {fig.us:,.0f} µs par requête, {fig.base_us:,.0f} µs sans la décision d'accès ; "
                f"authentification + autorisation : {fig.added_us:+,.0f} µs écoulées, "
                f"{fig.added_cpu_us:+,.0f} µs de CPU par requête"
            )
    if "dmp_tab" in only:
        with tempfile.TemporaryDirectory(dir=auth_data_parent()) as tmp:
            sandbox_dir, platform_dir = Path(tmp) / "sandbox", Path(tmp) / "platform"
            async with sandbox_process(sandbox_dir) as endpoints:
                rounds = await bench_dmp_tab(endpoints, sandbox_dir, platform_dir, args.openings, args.repeat)
            tab = median_figures(rounds)
        label = f"Onglet DMP d'un patient, {DOCUMENTS} documents"
        rows.append(
            (
                f"{label} : liste cherchée en entier (ouvertures/s)",
                1000 / tab.list_ms,
                "ITI-18 FindDocuments nu",
                1000 / tab.find_ms,
            )
        )
        rows.append(
            (
                f"{label} : ouverture suivante, liste gardée mise à jour (ouvertures/s)",
                1000 / tab.later_ms,
                "ITI-18 FindSubmissionSets nu",
                1000 / tab.find_sets_ms,
            )
        )
        rows.append(
            (
                f"{label} : premier document affiché (ouvertures/s)",
                1000 / tab.document_ms,
                "ITI-18 GetDocuments + ITI-43 nus",
                1000 / tab.get_retrieve_ms,
            )
        )
        notes.append(
            f"{label} : liste complète {tab.list_ms:,.0f} ms par ouverture, ITI-18 FindDocuments nu "
            f"{tab.find_ms:,.0f} ms ; ouverture suivante {tab.later_ms:,.0f} ms, FindSubmissionSets nu "
            f"{tab.find_sets_ms:,.0f} ms "
            f"(la liste fait aussi TD0.2, nu : {tab.td02_ms:,.0f} ms) ; premier document {tab.document_ms:,.0f} ms, "
            f"ITI-18 GetDocuments + ITI-43 nus {tab.get_retrieve_ms:,.0f} ms"
        )
    if "imaging" in only:
        for via_wado, how in ((True, "PACS lu en WADO-RS"), (False, "PACS lu en C-GET")):
            with tempfile.TemporaryDirectory(dir=auth_data_parent()) as tmp:
                img = await bench_imaging(
                    Path(tmp), args.series, args.per_series, args.repeat, via_wado=via_wado
                )
            label = (
                f"Images DRIMbox d'un autre établissement ({how}), {img.instances} images {SIZE}×{SIZE} "
                f"({img.megabytes:,.0f} Mo) : source + consommateur jusqu'au cache"
            )
            rows.append((f"{label} (Mo/s)", img.ours_mb_s, "WADO-RS direct d'Orthanc", img.base_mb_s))
            rows.append(
                (
                    f"{label} (images/s)",
                    img.ours_instances_s,
                    "WADO-RS direct d'Orthanc",
                    img.base_instances_s,
                )
            )
            notes.append(
                f"Images DRIMbox ({how}) : première image reçue en {img.ours_first_ms:,.0f} ms par le DRIMbox "
                f"source, {img.base_first_ms:,.0f} ms en WADO-RS direct d'Orthanc"
            )
    if "insi" in only:
        insis = [await bench_insi(args.searches) for _ in range(args.repeat)]
        ours = statistics.median(i[0] for i in insis)
        base = statistics.median(i[1] for i in insis)
        rows.append(("Recherche INSi par traits via le bac à sable (requêtes/s)", ours, "POST HTTP nu", base))
    lines = ["| mesure | OpenSégur | référence nue | ratio |", "|---|---:|---|---:|"]
    for label, o, blabel, b in rows:
        lines.append(f"| {label} | {o:,.0f} | {blabel} : {b:,.0f} | {o / b:.2f} |")
    table = "\n".join(lines + [""] + notes if notes else lines)
    print(table)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(table + "\n", encoding="utf-8")


FLOWS = ("identity", "dmp", "dmp_pg", "mss", "insi", "auth", "dmp_tab", "imaging")
# Measured only when asked for (--only backlog): minutes of a DMP outage and its drain.
EXPLICIT = ("backlog",)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--mails", type=int, default=300)
    parser.add_argument("--requests", type=int, default=240, help="per route and build (auth)")
    parser.add_argument("--openings", type=int, default=30, help="per page and round (dmp_tab)")
    parser.add_argument("--series", type=int, default=4, help="series of the exam (imaging)")
    parser.add_argument("--per-series", type=int, default=50, help="images per series (imaging)")
    parser.add_argument(
        "--backlog", type=int, default=2000, help="documents sent while the DMP is down (backlog)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=FLOWS + EXPLICIT,
        help=f"measure only these flows ({', '.join(EXPLICIT)}: only so)",
    )
    asyncio.run(main(parser.parse_args()))
