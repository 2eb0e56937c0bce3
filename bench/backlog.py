"""A backlog behind a DMP outage (issue 13): the DMP is down while n documents arrive, then comes back.

What is measured, on one platform (SQLite, its own two workers) and the sandbox DMP in its own process:
- every document is ACKed (AA) while the DMP refuses every call (HTTP 503 on all its transactions, which the
  platform classifies as DMP_UNAVAILABLE: retry later, never a rejection);
- the resident memory of each process (this one, which is the platform; its validation process; the sandbox)
  every second, from before the outage to after the drain;
- one PAM FR identity message every two seconds on a connection of its own, and its ACK's round trip: identity
  messages must not wait behind the backlog;
- once the DMP is back, the documents delivered per second until the last one, beside the rate of the same
  platform with the DMP up (a burst measured before the outage, from MLLP to the DMP's answer);
- the ZAMs' wait in the queue during the drain (a job's commit to its completion);
- exactly once: the DMP holds each document once, and no delivery job is in the dead letters at the end.

Retries: an outage spends no attempt (``RetryLater(outage=True)``): a delivery waits it out, with an exponential
backoff (2 s to 600 s by default), for ``job_outage_max_s``. The bench shortens the backoff (``BACKOFF``) so that
the drain is not a wait for the next retry. Dead delivery jobs are counted when the DMP comes back and at the
end: both must be zero, nobody retries anything by hand here.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.mdm_factory import document_id, mdm
from bench.sandbox import sandbox_settings
from opensegur.config import Settings
from opensegur.documents.delivery import DeliveryStatus
from opensegur.flows.jobs import JobKind
from opensegur.server import Platform
from opensegur.store.jobs import aware
from opensegur.store.models import Delivery, Exchange, Job
from opensegur.transport.mllp import MllpServer, frame, read_frame

ROLES = ("platform", "validation", "sandbox")
BACKOFF = {"job_backoff_base_s": 1.0, "job_backoff_max_s": 10.0}
INS = "279035121518989"  # the patient of bench/mdm_factory.py's documents


def rss_by_role(status_field: str = "VmRSS") -> dict[str, float]:
    """Resident memory (MB) of this process and of its descendants, by role (Linux /proc, ``status_field`` of status:
    VmRSS now, or VmHWM, the highest since the process started)."""
    parents: dict[int, int] = {}
    info: dict[int, tuple[float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat[stat.rindex(")") + 2 :].split()[1])
        kb = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{status_field}:")), 0
        )
        info[pid] = (kb / 1024, cmdline)
    me = os.getpid()
    out = dict.fromkeys(ROLES, 0.0)
    for pid, (mb, cmdline) in info.items():
        ancestor = pid
        while ancestor in parents and ancestor not in (me, 1):
            ancestor = parents[ancestor]
        if ancestor != me:
            continue
        if "multiprocessing.resource_tracker" in cmdline:
            continue  # a few MB of bookkeeping, not a role
        role = "platform" if pid == me else "sandbox" if " sandbox " in cmdline else "validation"
        out[role] += mb
    return out


@dataclass
class BacklogRun:
    n: int
    sustained_rate: float  # documents/s, DMP up, MLLP to the DMP's answer (validation included)
    sustained_n: int
    intake_s: float  # the n documents ACKed during the outage
    outage_s: float
    first_after_clear_s: float  # from the DMP's return to the first delivery
    drain_s: float  # from the DMP's return to the last delivery
    dead_at_clear: int  # deliveries whose job went to the dead letters during the outage (must be none)
    dead_statuses: list[str]  # the status those deliveries were left in
    dead_at_end: int  # deliveries with a dead job and not delivered at the end
    in_dmp: int  # documents of this run the DMP holds
    in_dmp_distinct: int
    expected: int
    identity_ms: dict[str, list[float]] = field(default_factory=dict)  # ACK round trips by phase
    zam_wait_ms: list[float] = field(default_factory=list)  # ZAM jobs of the drain, commit to done
    failed_attempts: int = 0  # delivery attempts refused during the outage
    zams_received: int = 0  # by the DPI, for all the run's documents
    zams_in_drain: int = 0  # received between the DMP's return and the last delivery
    samples: list[dict[str, Any]] = field(default_factory=list)
    # VmHWM at the end: the once-a-second samples start after the first document and miss the schematron compile.
    hwm: dict[str, float] = field(default_factory=dict)

    @property
    def drain_rate(self) -> float:
        return self.n / self.drain_s

    @property
    def drain_rate_after_first(self) -> float:
        return (self.n - 1) / max(1e-9, self.drain_s - self.first_after_clear_s)


async def _send(port: int, payloads: Iterable[bytes]) -> None:
    """One connection, each message sent once the previous one is ACKed. ``payloads`` is best a generator: the
    bench is the platform's process, and 2,000 MDM of 300 kB held in a list would be the bench's memory."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for p in payloads:
            writer.write(frame(p))
            await writer.drain()
            ack = await read_frame(reader, 1 << 20)
            assert ack is not None and b"MSA|AA|" in ack, ack
    finally:
        writer.close()
        await writer.wait_closed()


async def bench_backlog(
    n: int, tmp: Path, endpoints: dict[str, Any], identity: Callable[[int], bytes], hold_s: float = 10.0
) -> BacklogRun:
    zams: list[float] = []

    async def dpi(raw: bytes) -> bytes:
        """The DPI: receives the ZAM business acknowledgements and answers AA."""
        zams.append(time.perf_counter())
        cid = raw.split(b"|")[9].decode()
        return f"MSH|^~\\&|DPI|X|OPENSEGUR|X|20260101||ACK^Z01^ACK|A{cid}|P|2.6\rMSA|AA|{cid}\r".encode()

    listener = MllpServer(dpi, "127.0.0.1", 0)
    await listener.start()
    # One warning per refused delivery attempt would bury the summary: the attempts are counted instead.
    logging.getLogger("opensegur.flows.worker").setLevel(logging.ERROR)
    dmp = endpoints["dmp"]
    platform = Platform(
        Settings(
            data_dir=tmp / "platform",
            cache_dir=tmp / "cache",
            **sandbox_settings(endpoints),
            demo=True,
            http_port=0,
            mllp_port=0,
            workers=2,
            zam_endpoint=f"127.0.0.1:{listener.port}",
            **BACKOFF,
        )
    )
    rt = await platform.start()
    await platform.warmed()
    port = rt.mllp_port or 0
    run = str(int(time.time() * 1000) % 10**9)
    sustained_n = max(20, min(200, n // 10))
    samples: list[dict[str, Any]] = []
    identity_ms: dict[str, list[float]] = {}
    phase = "DMP disponible"
    t0 = time.perf_counter()

    def count(*where: Any, model: Any = Delivery) -> int:
        with rt.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    def delivered() -> int:
        return count(Delivery.status == DeliveryStatus.DELIVERED)

    async def until(check: Callable[[], bool], what: str, timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(check):
            if time.monotonic() > deadline:
                raise SystemExit(f"backlog: {what} not reached in {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def sample() -> None:
        while True:
            rss = await asyncio.to_thread(rss_by_role)
            done = await asyncio.to_thread(delivered)
            samples.append(
                {"t_s": round(time.perf_counter() - t0, 2), "phase": phase, **rss, "delivered": done}
            )
            await asyncio.sleep(1.0)

    async def ping() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        try:
            while True:
                sent = time.perf_counter()
                writer.write(frame(identity(900_000 + i)))
                await writer.drain()
                ack = await read_frame(reader, 1 << 20)
                assert ack is not None and b"MSA|AA|" in ack, ack
                identity_ms.setdefault(phase, []).append((time.perf_counter() - sent) * 1000)
                i += 1
                await asyncio.sleep(max(0.0, 2.0 - (time.perf_counter() - sent)))
        finally:
            writer.close()
            await writer.wait_closed()

    tasks: list[asyncio.Task[None]] = []
    try:
        # Warm: one document, so that the validation process has compiled its schematrons.
        await _send(port, [mdm(0, run)])
        await until(lambda: delivered() >= 1, "the first delivery", 600)
        tasks = [asyncio.create_task(sample()), asyncio.create_task(ping())]

        # The sustained rate of this platform with the DMP up.
        up = range(1, 1 + sustained_n)
        start = time.perf_counter()
        await asyncio.gather(*(_send(port, (mdm(i, run) for i in up[k::4])) for k in range(4)))
        await until(lambda: delivered() >= 1 + sustained_n, "the sustained burst")
        sustained_rate = sustained_n / (time.perf_counter() - start)
        await asyncio.sleep(3)

        # The DMP goes down: every transaction answers 503.
        async with httpx.AsyncClient() as http:
            (await http.post(f"{dmp['admin']}/faults", json={"http_status": 503})).raise_for_status()
        phase = "DMP indisponible"
        outage_start = time.perf_counter()
        backlog = range(1 + sustained_n, 1 + sustained_n + n)
        await asyncio.gather(*(_send(port, (mdm(i, run) for i in backlog[k::4])) for k in range(4)))
        intake_s = time.perf_counter() - outage_start
        # Every document validated and its delivery refused at least once; then the backlog sits a while.
        refused = (DeliveryStatus.FAILED, DeliveryStatus.DEAD)
        await until(
            lambda: count(Delivery.status.in_(refused)) >= n, "every delivery tried during the outage"
        )
        await asyncio.sleep(hold_s)

        def dead_deliveries() -> dict[int, str]:
            """Deliveries whose job ran out of attempts, with their status (the job's death leaves it as is)."""
            rows = _rows(rt.db, select(Job.args).where(Job.kind == JobKind.DELIVER, Job.status == "dead"))
            ids = {int(args["delivery_id"]) for (args,) in rows}
            found = _rows(
                rt.db, select(Delivery.id, Delivery.status, Delivery.document_id).where(Delivery.id.in_(ids))
            )
            return {d: f"{status}:{doc}" for d, status, doc in found}

        dead = await asyncio.to_thread(dead_deliveries)
        dead_at_clear = len(dead)
        dead_statuses = sorted({v.split(":")[0] for v in dead.values()})
        failed_attempts = count(Exchange.outcome == "retry", model=Exchange)

        # The DMP is back.
        async with httpx.AsyncClient() as http:
            (await http.delete(f"{dmp['admin']}/faults")).raise_for_status()
        clear = time.perf_counter()
        clear_wall = datetime.now(UTC)
        outage_s = clear - outage_start
        phase = "reprise : arriéré en cours d'envoi"
        total = 1 + sustained_n + n
        before = delivered()
        await until(lambda: delivered() > before, "the first delivery after the outage")
        first_s = time.perf_counter() - clear
        await until(lambda: delivered() >= total, "the end of the drain")
        drain_s = time.perf_counter() - clear
        phase = "après l'arriéré"
        await asyncio.sleep(6)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks = []

        def zam_waits() -> list[float]:
            rows = _rows(
                rt.db,
                select(Job.created_at, Job.updated_at).where(Job.kind == JobKind.ZAM, Job.status == "done"),
            )
            return [
                (aware(done) - aware(made)).total_seconds() * 1000
                for made, done in rows
                if aware(made) >= clear_wall
            ]

        zam_wait_ms = await asyncio.to_thread(zam_waits)
        dead_at_end = sum(
            1 for v in (await asyncio.to_thread(dead_deliveries)).values() if v.split(":")[0] != "delivered"
        )
        async with httpx.AsyncClient() as http:
            entries = (await http.get(dmp["inspect"], params={"patient": INS}, timeout=600)).json()["entries"]
        wanted = {document_id(i, run) for i in range(total)}
        found = [e["uniqueId"] for e in entries if e["uniqueId"] in wanted]
        hwm = await asyncio.to_thread(rss_by_role, "VmHWM")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await platform.stop()
        await listener.stop()
    return BacklogRun(
        n=n,
        sustained_rate=sustained_rate,
        sustained_n=sustained_n,
        intake_s=intake_s,
        outage_s=outage_s,
        first_after_clear_s=first_s,
        drain_s=drain_s,
        dead_at_clear=dead_at_clear,
        dead_statuses=dead_statuses,
        dead_at_end=dead_at_end,
        in_dmp=len(found),
        in_dmp_distinct=len(set(found)),
        expected=total,
        identity_ms=identity_ms,
        zam_wait_ms=zam_wait_ms,
        failed_attempts=failed_attempts,
        zams_received=len(zams),
        zams_in_drain=sum(1 for t in zams if clear <= t <= clear + drain_s),
        samples=samples,
        hwm=hwm,
    )


def _rows(db: Any, stmt: Any) -> list[Any]:
    with db.session() as s:
        return list(s.execute(stmt).all())


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:,.0f} ms (une mesure)" if values else "aucune mesure"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return (
        f"p50 {cuts[49]:,.0f} ms, p99 {cuts[98]:,.0f} ms, max {max(values):,.0f} ms ({len(values)} mesures)"
    )


def summary(r: BacklogRun) -> list[str]:
    peaks = {role: max(s[role] for s in r.samples) for role in ROLES}
    firsts = {role: r.samples[0][role] for role in ROLES}
    lasts = {role: r.samples[-1][role] for role in ROLES}
    lines = [
        f"Arriéré de {r.n} documents, DMP indisponible (HTTP 503 sur toutes ses transactions) pendant "
        f"{r.outage_s:,.0f} s ; les {r.n} documents acquittés AA en {r.intake_s:,.0f} s ; "
        f"{r.failed_attempts} envois refusés pendant la panne (délais de nouvel essai raccourcis pour le banc : "
        f"{BACKOFF['job_backoff_base_s']:g} s à {BACKOFF['job_backoff_max_s']:g} s au lieu de 2 s à 600 s)",
        f"Reprise : premier document remis {r.first_after_clear_s:,.1f} s après le retour du DMP, dernier à "
        f"{r.drain_s:,.1f} s : {r.drain_rate:,.1f} documents/s ({r.drain_rate_after_first:,.1f} après le premier), "
        f"contre {r.sustained_rate:,.1f} documents/s DMP disponible (rafale de {r.sustained_n} documents avant la "
        "panne, du MLLP à la réponse du DMP, validation comprise ; à la reprise les documents sont déjà validés)",
        "Mémoire résidente (Mo) début → pic → fin : "
        + ", ".join(f"{role} {firsts[role]:,.0f} → {peaks[role]:,.0f} → {lasts[role]:,.0f}" for role in ROLES)
        + " ; plus haut atteint depuis le démarrage (VmHWM, compilation des schematrons comprise) : "
        + ", ".join(f"{role} {r.hwm[role]:,.0f}" for role in ROLES),
    ]
    for phase, values in r.identity_ms.items():
        lines.append(f"ACK d'un message d'identité PAM FR toutes les 2 s, {phase} : {_quantiles(values)}")
    lines.append(
        f"ZAM reçues par le DPI : {r.zams_received} pour {r.expected} documents, dont {r.zams_in_drain} pendant la "
        f"reprise ; attente d'une ZAM dans la file pendant la reprise : {_quantiles(r.zam_wait_ms)}"
    )
    once = r.in_dmp == r.in_dmp_distinct == r.expected and r.dead_at_end == 0
    lines.append(
        f"Exactement une fois : {'oui' if once else 'NON'} — le DMP tient {r.in_dmp_distinct} documents distincts "
        f"sur {r.expected} ({r.in_dmp - r.in_dmp_distinct} en double) ; tâches d'envoi en lettres mortes : "
        f"{r.dead_at_clear} au retour du DMP (statut des envois : {'/'.join(r.dead_statuses) or '—'}), "
        f"{r.dead_at_end} non remis à la fin ; aucune relance à la main"
    )
    return lines


def write_results(r: BacklogRun, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, svg_path = out / "backlog-rss.csv", out / "backlog-rss.svg"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["t_s", "phase", *ROLES, "delivered"])
        writer.writeheader()
        for s in r.samples:
            writer.writerow(
                {k: (f"{v:.1f}" if isinstance(v, float) and k in ROLES else v) for k, v in s.items()}
            )
    svg_path.write_text(svg_chart(r), encoding="utf-8")
    return csv_path, svg_path


COLOURS = {"platform": "#1f77b4", "validation": "#2ca02c", "sandbox": "#d62728"}
LABELS = {"platform": "plateforme", "validation": "validation", "sandbox": "bac à sable DMP"}


def svg_chart(r: BacklogRun) -> str:
    """A small line chart of each process's resident memory, the outage shaded, hand-written SVG."""
    width, height, left, right, top, bottom = 720, 360, 60, 20, 40, 50
    pw, ph = width - left - right, height - top - bottom
    t_max = max(s["t_s"] for s in r.samples) or 1.0
    mb_max = max(max(s[role] for role in ROLES) for s in r.samples)
    step = _nice_step(mb_max / 5)
    mb_top = step * (int(mb_max / step) + 1)
    t_step = _nice_step(t_max / 8)

    def x(t: float) -> float:
        return left + pw * t / t_max

    def y(mb: float) -> float:
        return top + ph * (1 - mb / mb_top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">Mémoire résidente (Mo) pendant '
        f"l'arriéré de {r.n} documents</text>",
    ]
    times = [s["t_s"] for s in r.samples]
    for prefix, fill, label in (
        ("DMP indisponible", "#fde0dd", "DMP indisponible"),
        ("reprise", "#e5f5e0", "reprise"),
    ):
        inside = [i for i, s in enumerate(r.samples) if s["phase"].startswith(prefix)]
        if inside:
            # From the phase's first sample to the next phase's first one: the shaded spans touch.
            a, b = x(times[inside[0]]), x(times[min(inside[-1] + 1, len(times) - 1)])
            out.append(
                f'<rect x="{a:.1f}" y="{top}" width="{max(1.0, b - a):.1f}" height="{ph}" fill="{fill}"/>'
            )
            out.append(
                f'<text x="{(a + b) / 2:.1f}" y="{top + 14}" text-anchor="middle" fill="#555">{label}</text>'
            )
    mb = 0.0
    while mb <= mb_top + 1e-9:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(mb):.1f}" y2="{y(mb):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(mb) + 4:.1f}" text-anchor="end">{mb:,.0f}</text>')
        mb += step
    t = 0.0
    while t <= t_max + 1e-9:
        out.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#333"/>'
        )
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:,.0f}</text>')
        t += t_step
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 12}" text-anchor="middle">temps (s)</text>')
    out.append(
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">Mo</text>'
    )
    for i, role in enumerate(ROLES):
        points = " ".join(f"{x(s['t_s']):.1f},{y(s[role]):.1f}" for s in r.samples)
        out.append(f'<polyline fill="none" stroke="{COLOURS[role]}" stroke-width="1.5" points="{points}"/>')
        lx = left + 10 + i * 150
        out.append(
            f'<line x1="{lx}" x2="{lx + 20}" y1="{top - 8}" y2="{top - 8}" stroke="{COLOURS[role]}" '
            'stroke-width="2"/>'
        )
        out.append(f'<text x="{lx + 24}" y="{top - 4}">{LABELS[role]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    magnitude = 10 ** int(f"{raw:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if raw <= m * magnitude:
            return float(m * magnitude)
    return float(10 * magnitude)
