"""`opensegur serve`: one process with the HTTP API and pages, the MLLP listener, the workers and the sandbox.

Shutdown order on SIGTERM keeps every promise made: stop accepting MLLP connections and wait for the
messages in flight (their ACK follows their commit), then stop the workers (running jobs finish), then HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from opensegur.config import Settings
from opensegur.connectors.dmp_client import DmpClient, DmpCredentials, DmpEndpoints, DmpIdentity
from opensegur.connectors.dpi_zam import MllpZamSender
from opensegur.connectors.insi_client import InsiClient, InsiUnavailable
from opensegur.content.validation import CdaValidator
from opensegur.flows.dmp_feed import (
    JOB_DELIVER,
    JOB_ZAM,
    ProcessContext,
    make_deliver_handler,
    make_process_handler,
    make_zam_handler,
)
from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.flows.identity_gate import JOB_PROCESS
from opensegur.flows.qualification import JOB_INSI_SEARCH, InsiUnavailableError, make_insi_job_handler
from opensegur.flows.worker import Handler, WorkerPool
from opensegur.security.pki import TestPki
from opensegur.store.db import Database
from opensegur.transactions.insi import InsiContext, InsiResult, InsiTraitsQuery
from opensegur.transport.mllp import MllpFramingError, MllpServer

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """Signals belong to the whole process, not to one of its HTTP servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP, and without it
    # every small HTTP exchange waits ~40 ms on delayed ACKs.
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def sandbox_endpoints(base: str, pki: TestPki) -> dict[str, Any]:
    """What /sandbox/endpoints publishes: where each simulated national service listens."""
    return {
        "insi": {"url": f"{base}/insi", "admin": f"{base}/insi/_admin"},
        "dmp": {
            "iti18": f"{base}/dmp/iti18",
            "iti41": f"{base}/dmp/iti41",
            "iti43": f"{base}/dmp/iti43",
            "iti57": f"{base}/dmp/iti57",
            "td02": f"{base}/dmp/td02",
            "inspect": f"{base}/dmp/inspect",
            "access_history": f"{base}/dmp/access-history",
            "admin": f"{base}/dmp/_admin",
            "test_pki": {
                "client_cert": str(pki.signing_cert),
                "client_key": str(pki.signing_key),
                "ca_cert": str(pki.ca_cert),
            },
        },
    }


class InsiAdapter:
    """Gives the qualification flow the INSi port it expects, translating the connector's outage error."""

    def __init__(self, client: InsiClient) -> None:
        self.client = client

    async def search_by_traits(self, q: InsiTraitsQuery) -> InsiResult:
        try:
            return await self.client.search_by_traits(q)
        except InsiUnavailable as exc:
            raise InsiUnavailableError(str(exc)) from exc


@dataclass
class Runtime:
    """What the edges (web, CLI, tests) need from the running platform."""

    settings: Settings
    db: Database
    intake: Hl7Intake
    workers: WorkerPool
    insi: InsiAdapter
    endpoints: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    mllp_port: int | None = None
    http_port: int | None = None


class Platform:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.db_url)
        self._servers: list[_Uvicorn] = []
        self._serve_tasks: list[asyncio.Task[None]] = []
        self.mllp: MllpServer | None = None
        self._insi_client: InsiClient | None = None
        self._dmp_client: DmpClient | None = None
        self._warm: asyncio.Task[None] | None = None
        self.runtime: Runtime | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> Runtime:
        s = self.settings
        # Every blocking step (SQL, validation, signing) runs in a thread; asyncio's default pool (cores + 4) would
        # let a burst of MLLP messages and busy workers starve the pages and the API. Waiting threads are cheap.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="opensegur")
        )
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.db.migrate)
        endpoints: dict[str, Any] = {}
        insi_url = s.insi_url
        dmp_urls = DmpEndpoints(
            iti41=s.dmp_iti41_url or "",
            iti18=s.dmp_iti18_url or "",
            iti57=s.dmp_iti57_url or "",
            iti43=s.dmp_iti43_url,
        )
        credentials = None
        if s.dmp_signing_cert and s.dmp_signing_key:
            credentials = DmpCredentials(
                Path(s.dmp_signing_cert),
                Path(s.dmp_signing_key),
                Path(s.dmp_tls_cert) if s.dmp_tls_cert else None,
                Path(s.dmp_tls_key) if s.dmp_tls_key else None,
                Path(s.dmp_ca) if s.dmp_ca else None,
            )
        if s.sandbox:
            from opensegur.sandbox.app import create_sandbox_app
            from opensegur.security.pki import ensure_test_pki

            pki = await asyncio.to_thread(ensure_test_pki, s.data_dir / "sandbox" / "pki")
            sock = bind(s.host, s.sandbox_port)
            port = sock.getsockname()[1]
            base = f"http://{s.host}:{port}"
            await self._serve_http(create_sandbox_app(s.data_dir / "sandbox", pki), sock)
            endpoints = sandbox_endpoints(base, pki)
            insi_url = insi_url or endpoints["insi"]["url"]
            if not dmp_urls.iti41:
                dmp = endpoints["dmp"]
                dmp_urls = DmpEndpoints(dmp["iti41"], dmp["iti18"], dmp["iti57"], dmp["iti43"])
            if credentials is None:
                credentials = DmpCredentials(pki.signing_cert, pki.signing_key)
        if s.demo:
            from opensegur.ops.demo import load_demo

            await asyncio.to_thread(load_demo, self.db)
        self._insi_client = InsiClient(
            insi_url or "",
            InsiContext(
                lps_name=s.insi_lps_name,
                lps_version=s.insi_lps_version,
                idam=s.insi_idam,
                emitter=s.insi_emitter,
            ),
            timeout=s.insi_timeout_s,
            client_cert=(s.insi_client_cert, s.insi_client_key)
            if s.insi_client_cert and s.insi_client_key
            else None,
            verify=s.insi_ca or True,
        )
        insi = InsiAdapter(self._insi_client)
        handlers: dict[str, Handler] = {JOB_INSI_SEARCH: make_insi_job_handler(self.db, insi)}
        validator = CdaValidator((s.cache_dir or s.data_dir / "cache") / "schematron")
        process_ctx = ProcessContext(self.db, validator, strict=s.validation_strict)
        handlers[JOB_PROCESS] = make_process_handler(process_ctx)
        zam_endpoint = None
        if s.zam_endpoint:
            host, _, port_text = s.zam_endpoint.rpartition(":")
            zam_endpoint = (host, int(port_text))
        handlers[JOB_ZAM] = make_zam_handler(self.db, MllpZamSender(zam_endpoint))
        if credentials is not None and dmp_urls.iti41:
            self._dmp_client = DmpClient(
                dmp_urls,
                credentials,
                DmpIdentity(
                    oid_root=s.oid_root,
                    lps_name=s.insi_lps_name,
                    lps_version=s.insi_lps_version,
                    lps_homologation_id=s.dmp_lps_homologation_id,
                ),
                timeout=s.dmp_timeout_s,
            )
            handlers[JOB_DELIVER] = make_deliver_handler(self.db, self._dmp_client)
        else:
            log.warning("no DMP endpoint configured: documents are validated but not delivered")
        from opensegur.store.jobs import RetryPolicy

        workers = WorkerPool(
            self.db,
            handlers,
            concurrency=s.workers,
            policy=RetryPolicy(s.job_max_attempts, s.job_backoff_base_s, s.job_backoff_max_s),
            lease_s=s.job_lease_s,
        )
        intake = Hl7Intake(self.db, on_commit=workers.wake)
        self.runtime = rt = Runtime(s, self.db, intake, workers, insi, endpoints)
        await workers.start()
        # Compile the schematrons while the rest starts: the first document must not pay for it.
        self._warm = asyncio.create_task(asyncio.to_thread(validator.warm_up))

        async def handle(raw: bytes) -> bytes:
            result = await asyncio.to_thread(intake.handle, raw)
            return result.ack

        async def on_framing_error(err: MllpFramingError) -> bytes | None:
            log.warning("MLLP framing error: %s", err.code)
            return None

        self.mllp = MllpServer(
            handle, s.host, s.mllp_port, max_bytes=s.mllp_max_bytes, on_framing_error=on_framing_error
        )
        await self.mllp.start()
        rt.mllp_port = self.mllp.port

        from opensegur.web.app import create_app

        sock = bind(s.host, s.http_port)
        rt.http_port = sock.getsockname()[1]
        await self._serve_http(create_app(rt), sock)
        rt.ready = True
        log.info("OpenSégur ready: http://%s:%s  mllp %s:%s", s.host, rt.http_port, s.host, rt.mllp_port)
        return rt

    async def warmed(self) -> None:
        """Wait until the schematrons are compiled (benchmarks, tests that time the flow)."""
        if self._warm is not None:
            await self._warm

    async def _serve_http(self, app: Any, sock: socket.socket) -> None:
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        server = _Uvicorn(config)
        self._servers.append(server)
        self._serve_tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        while not server.started:
            if self._serve_tasks[-1].done():
                self._serve_tasks[-1].result()
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.runtime is not None:
            self.runtime.ready = False
        if self.mllp is not None:
            await self.mllp.stop()
        if self.runtime is not None:
            await self.runtime.workers.stop()
        for server in reversed(self._servers):
            server.should_exit = True
        await asyncio.gather(*self._serve_tasks, return_exceptions=True)
        if self._insi_client is not None:
            await self._insi_client.aclose()
        if self._dmp_client is not None:
            await self._dmp_client.aclose()
        if self._warm is not None:
            await asyncio.gather(self._warm, return_exceptions=True)
        self.db.dispose()
        self._stopped.set()

    async def run_forever(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
        await self.stop()
