"""`opensegur serve`: one process with the HTTP API and pages, the MLLP listener, the workers and the sandbox.

Shutdown order on SIGTERM keeps every promise made: stop accepting MLLP connections and wait for the
messages in flight (their ACK follows their commit), then stop the workers (running jobs finish), then HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import uvicorn
from sqlalchemy import select

from opensegur.config import Settings
from opensegur.connectors.annuaire_client import AnnuaireClient
from opensegur.connectors.dmp_client import (
    DmpClient,
    DmpCredentials,
    DmpEndpoints,
    DmpIdentity,
    vihf_specialty,
)
from opensegur.connectors.dpi_mllp import MllpDpiSender
from opensegur.connectors.dpi_zam import MllpZamSender
from opensegur.connectors.drimbox_client import DrimboxClient, remote_tls
from opensegur.connectors.insi_client import InsiClient, InsiUnavailable
from opensegur.connectors.pacs import PacsClient, PacsEndpoint
from opensegur.connectors.pacs_stow import PacsStow
from opensegur.connectors.pacs_wado import PacsWado
from opensegur.connectors.psc_introspection import TokenIntrospector
from opensegur.content.validation import CdaValidator
from opensegur.documents.metadata import Coded
from opensegur.errors import RetryLater
from opensegur.flows import mss_inbound, mss_outbound
from opensegur.flows.dmp_consult import DmpConsultPort
from opensegur.flows.dmp_feed import (
    DeliveryHook,
    ProcessContext,
    delivery_given_up,
    make_deliver_handler,
    make_process_handler,
    make_zam_handler,
)
from opensegur.flows.dmp_prefetch import make_prefetch_handler
from opensegur.flows.drimbox_cache import ImageCache
from opensegur.flows.drimbox_consumer import DrimboxConsumer
from opensegur.flows.drimbox_import import make_import_handler
from opensegur.flows.drimbox_iocm import make_note_handler
from opensegur.flows.drimbox_ports import PacsStorePort
from opensegur.flows.drimbox_serving import DrimboxServing
from opensegur.flows.drimbox_source import DrimboxSource, request_manifest
from opensegur.flows.drimbox_source import make_handlers as make_drimbox_handlers
from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.flows.jobs import JobKind
from opensegur.flows.qualification import InsiUnavailableError, make_insi_job_handler
from opensegur.flows.senders import SenderAllowlist
from opensegur.flows.worker import Handler, WorkerPool
from opensegur.hospital.apply import ApplyResult, load_and_apply
from opensegur.hospital.loader import ConfigInvalid, ConfigProblem, load_directory
from opensegur.hospital.model import HospitalConfig
from opensegur.security.defaults import default_matrix
from opensegur.security.drimbox_directory import file_loader
from opensegur.security.matrix import Matrix
from opensegur.security.pki import TestPki, common_name_of, load_certificate
from opensegur.security.psc_delegation import PscDelegation
from opensegur.security.sealer import ANCHOR_FILE, run_sealer
from opensegur.store.db import Database
from opensegur.store.jobs import RetryPolicy
from opensegur.store.models import Structure
from opensegur.transactions import hl7v2
from opensegur.transactions.insi import InsiContext, InsiResult, InsiTraitsQuery
from opensegur.transactions.lps_mdm import MessageRoute
from opensegur.transport.dicom_receiver import DicomReceiver
from opensegur.transport.drop_folder import Answer, DropFolder
from opensegur.transport.http_server import ClientTls, uvicorn_config
from opensegur.transport.mllp import MllpFramingError, MllpServer, tls_server_context

log = logging.getLogger(__name__)
# Framing errors answered with an AR, and what the ERR says (French, for the DPI's interface log).
_NAK_FRAMING = {
    "MLLP_OVERSIZE": "Message trop volumineux pour ce récepteur (mllp_max_bytes) : non traité",
    "MLLP_BUSY": "Récepteur saturé : message non traité, renvoyez-le plus tard",
}


class _Uvicorn(uvicorn.Server):
    """Signals belong to the whole process, not to one of its HTTP servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def private_data_dir(path: Path) -> None:
    """The data directory holds patients' documents and identities: readable by the platform's owner only, and
    so is every file created in it from now on (database, WAL, payloads, anchors)."""
    os.umask(0o077)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    for child in path.iterdir():
        if child.is_file():
            child.chmod(0o600)


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


def sandbox_endpoints(
    base: str, pki: TestPki, operator: Any = None, hospital_mailboxes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """What /sandbox/endpoints publishes: where each simulated national service listens."""
    out: dict[str, Any] = {
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
        "annuaire": {"url": f"{base}/annuaire/fhir/v2", "admin": f"{base}/annuaire/_admin"},
    }
    if operator is not None:
        out["mssante"] = {
            "smtp": f"{operator.host}:{operator.smtp_port}",
            "imap": f"{operator.host}:{operator.imap_port}",
            "password": operator.password,
            "hospital_mailboxes": list(hospital_mailboxes),
            "inspect": f"{base}/mssante/inspect",
            "admin": f"{base}/mssante/_admin",
        }
    return out


def _sandbox_mailboxes(hospital: HospitalConfig | None) -> tuple[str, ...]:
    """The hospital mailboxes the sandbox operator creates: the configuration's, else the demo GHT's. Applicative
    first: mail leaves from the first one (MSSanté: FROM = the applicative mailbox)."""
    from opensegur.ops.demo import demo_config

    boxes = hospital.mailboxes if hospital is not None and hospital.mailboxes else demo_config().mailboxes
    return tuple(m.address for m in sorted(boxes, key=lambda m: m.kind != "applicative"))


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
    annuaire: AnnuaireClient | None = None
    ready: bool = False
    mllp_port: int | None = None
    http_port: int | None = None
    drimbox_tls_port: int | None = None  # the WADO-RS for other DRIMboxes in mutual TLS, when configured
    # None: this process validates nothing; else whether the schematrons are compiled (the supervision sees it).
    validation_warm: bool | None = None
    app: Any = None  # the ASGI application serving HTTP (tests override its dependencies)
    # Re-reads and applies the configuration directory (the admin page's « Recharger »); None without a directory.
    reload_config: Callable[[str], Awaitable[ApplyResult | None]] | None = None
    hospital: HospitalConfig | None = None  # the configuration directory in force (replaced on reload)
    dmp_consult: DmpConsultPort | None = None  # None: no DMP configured, the DMP tab says so
    drimbox: DrimboxServing | None = None  # None: no PACS, no images served to other DRIMboxes
    drimbox_consumer: DrimboxConsumer | None = None  # None: no DMP, no exams of other hospitals to retrieve
    # The PSC tokens of the sessions opened through PSC, in memory only: the consumer asks in their name.
    psc_delegation: PscDelegation = field(default_factory=PscDelegation)


SANDBOX_MSS_PASSWORD = "bac-a-sable-mssante"  # every sandbox mailbox's password (login: its address)


def _warming(rt: Runtime, validator: CdaValidator) -> asyncio.Task[None]:
    """Compiles the schematrons in the background; the runtime says when they are ready."""
    rt.validation_warm = False
    task = asyncio.create_task(asyncio.to_thread(validator.warm_up))

    def done(t: asyncio.Task[None]) -> None:
        rt.validation_warm = not t.cancelled() and t.exception() is None

    task.add_done_callback(done)
    return task


def _drop_answer(intake: Hl7Intake, raw: bytes) -> Answer:
    result = intake.handle(raw)
    return Answer(result.ack, result.ack_code == "AA")


@dataclass
class SandboxHandle:
    pki: TestPki
    endpoints: dict[str, Any]
    drimbox_directory: Path | None = None  # the sandbox's signed list of DRIMboxes (signed by its PKI)


@dataclass
class _MssWiring:
    """How to reach the MSSanté operator, resolved once: the configured one, or else the sandbox's."""

    smtp_host: str | None
    smtp_port: int
    smtp_security: Literal["plain", "starttls", "tls"]
    smtp_username: str | None
    smtp_password: str | None
    imap_host: str | None
    imap_port: int
    imap_security: Literal["plain", "starttls", "tls"]
    mailboxes: dict[str, str]
    sender: str | None

    @classmethod
    def from_settings(cls, s: Settings) -> _MssWiring:
        return cls(
            s.mss_smtp_host,
            s.mss_smtp_port,
            s.mss_smtp_security,
            s.mss_smtp_username or s.mssante_sender,
            s.mss_smtp_password.get_secret_value() if s.mss_smtp_password else None,
            s.mss_imap_host,
            s.mss_imap_port,
            s.mss_imap_security,
            {box: pw.get_secret_value() for box, pw in s.mss_mailboxes.items()},
            s.mssante_sender,
        )

    def with_sandbox(self, endpoints: dict[str, Any]) -> _MssWiring:
        sandbox = endpoints.get("mssante")
        if sandbox is None:
            return self
        out = dataclasses.replace(self)
        out.sender = out.sender or sandbox["hospital_mailboxes"][0]
        if not out.smtp_host:
            host, _, port = sandbox["smtp"].rpartition(":")
            out.smtp_host, out.smtp_port, out.smtp_security = host, int(port), "plain"
            out.smtp_username, out.smtp_password = out.sender, sandbox["password"]
        if not out.imap_host:
            host, _, port = sandbox["imap"].rpartition(":")
            out.imap_host, out.imap_port, out.imap_security = host, int(port), "plain"
            out.mailboxes = out.mailboxes or {
                box: sandbox["password"] for box in sandbox["hospital_mailboxes"]
            }
        return out


def _endpoint(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    return host, int(port)


class _NoDpi:
    """DpiSender when no DPI listener is configured: documents received by mail wait, visible, until one is."""

    async def send(self, message: bytes) -> bytes:
        raise RetryLater("Aucun DPI configuré pour recevoir les documents MSSanté (dpi_mdm_endpoint)")


class Platform:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.db_url)
        self._servers: list[_Uvicorn] = []
        self._serve_tasks: list[asyncio.Task[None]] = []
        self.mllp: MllpServer | None = None
        self._insi_client: InsiClient | None = None
        self._dmp_client: DmpClient | None = None
        self._drimbox: DrimboxServing | None = None
        self._introspector: TokenIntrospector | None = None
        self._consumer: DrimboxConsumer | None = None
        self._pacs_wado: PacsWado | None = None
        self._dicom_receiver: DicomReceiver | None = None
        self._warm: asyncio.Task[None] | None = None
        self._validator: CdaValidator | None = None
        self._annuaire_client: AnnuaireClient | None = None
        self._mss_operator: Any = None
        self._mailbox_reader: Any = None
        self._mss_stop = asyncio.Event()
        self._mss_poller: asyncio.Task[None] | None = None
        self._drop_stop = asyncio.Event()
        self._drop_watcher: asyncio.Task[None] | None = None
        self.runtime: Runtime | None = None
        self._stopped = asyncio.Event()
        self._sealer_stop = asyncio.Event()
        self._sealer: asyncio.Task[None] | None = None
        self._listen = True
        self._reloads: set[asyncio.Task[None]] = set()

    async def start(self, *, listen: bool = True) -> Runtime:
        """Start the platform. ``listen=False`` is a worker process (``opensegur worker``): it only runs the jobs
        of the shared database — no MLLP, no HTTP, no sandbox, no mailbox polling, which the serving process does;
        the national services are those of the settings."""
        s = self.settings
        # Every blocking step (SQL, validation, signing) runs in a thread; asyncio's default pool (cores + 4) would
        # let a burst of MLLP messages and busy workers starve the pages and the API. Waiting threads are cheap.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="opensegur")
        )
        private_data_dir(s.data_dir)
        await asyncio.to_thread(self.db.migrate)
        self._listen = listen
        hospital = await self._start_config()
        endpoints: dict[str, Any] = {}
        insi_url = s.insi_url
        dmp_urls = DmpEndpoints(
            iti41=s.dmp_iti41_url or "",
            iti18=s.dmp_iti18_url or "",
            iti57=s.dmp_iti57_url or "",
            iti43=s.dmp_iti43_url,
            td02=s.dmp_td02_url,
            access_history=s.dmp_access_history_url,
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
        mss = _MssWiring.from_settings(s)
        directory = (s.drimbox_directory_file, s.drimbox_directory_ca, s.drimbox_directory_signer_cn)
        if s.sandbox_on and listen:
            sandbox = await self.start_sandbox(hospital=hospital)
            endpoints = sandbox.endpoints
            if s.drimbox_directory_file is None and sandbox.drimbox_directory is not None:
                signer = common_name_of(load_certificate(sandbox.pki.signing_cert.read_bytes()))
                directory = (sandbox.drimbox_directory, sandbox.pki.ca_cert, signer)
            insi_url = insi_url or endpoints["insi"]["url"]
            if not dmp_urls.iti41:
                dmp = endpoints["dmp"]
                dmp_urls = DmpEndpoints(
                    dmp["iti41"], dmp["iti18"], dmp["iti57"], dmp["iti43"], dmp["td02"], dmp["access_history"]
                )
            if credentials is None:
                credentials = DmpCredentials(sandbox.pki.signing_cert, sandbox.pki.signing_key)
            mss = mss.with_sandbox(endpoints)
        self._directory = file_loader(*directory)
        if s.demo and listen and self._demo_people_fit():
            from opensegur.ops.demo import load_demo

            await asyncio.to_thread(load_demo, self.db)
            from opensegur.ops.demo_accounts import load_demo_accounts
            from opensegur.ops.demo_stays import load_demo_stays

            await asyncio.to_thread(load_demo_accounts, self.db)
            await asyncio.to_thread(load_demo_stays, self.db)
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
        handlers: dict[str, Handler] = {JobKind.INSI_SEARCH: make_insi_job_handler(self.db, insi)}
        validator = self._validator = CdaValidator(
            (s.cache_dir or s.data_dir / "cache") / "schematron",
            processes=s.validation_processes,
            time_limit_s=s.validation_time_limit_s,
        )
        process_ctx = ProcessContext(self.db, validator, strict=s.validation_strict)
        handlers[JobKind.PROCESS] = make_process_handler(process_ctx)
        zam_endpoint = _endpoint(s.zam_endpoint)
        handlers[JobKind.ZAM] = make_zam_handler(self.db, MllpZamSender(zam_endpoint))
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
            handlers[JobKind.DELIVER] = make_deliver_handler(
                self.db, self._dmp_client, self._wire_drimbox(self._dmp_client, handlers, endpoints)
            )
            self._consumer = DrimboxConsumer(
                self._dmp_client,
                DrimboxClient(
                    timeout=s.drimbox_remote_timeout_s,
                    verify=remote_tls(s.drimbox_client_cert, s.drimbox_client_key, s.drimbox_remote_ca),
                ),
                ImageCache(
                    self.db,
                    s.drimbox_cache_dir or s.data_dir / "imagerie",
                    max_bytes=s.drimbox_cache_max_mb * 1024 * 1024,
                    max_age=timedelta(days=s.drimbox_cache_days),
                ),
                self._directory,
            )
            if s.pacs_host:
                # An exam of another hospital, from the cache into the site's PACS.
                store: PacsStorePort = PacsClient(self._pacs_endpoint())
                if s.pacs_import == "stow-rs":
                    assert s.pacs_wado_url is not None  # Settings requires it
                    store = PacsStow(s.pacs_wado_url, timeout=s.pacs_timeout_s * 4)
                handlers[JobKind.DRIMBOX_IMPORT] = make_import_handler(self._consumer.cache, store)
        else:
            log.warning("no DMP endpoint configured: documents are validated but not delivered")
        self._wire_annuaire(endpoints)
        # Registered even without a DMP: an admission queues the job whatever the configuration says.
        handlers[JobKind.DMP_PREFETCH] = make_prefetch_handler(
            self.db, self._dmp_client, self._specialty, self._matrix
        )
        self._wire_mssante(mss, handlers, zam_endpoint, hospital)
        workers = WorkerPool(
            self.db,
            handlers,
            concurrency=s.workers,
            policy=RetryPolicy(
                s.job_max_attempts, s.job_backoff_base_s, s.job_backoff_max_s, s.job_outage_max_s
            ),
            lease_s=s.job_lease_s,
            given_up={JobKind.DELIVER: delivery_given_up, JobKind.MSS_SEND: mss_outbound.mail_given_up},
        )
        intake = Hl7Intake(self.db, business_acks=zam_endpoint is not None)
        self.runtime = rt = Runtime(
            s,
            self.db,
            intake,
            workers,
            insi,
            endpoints,
            annuaire=self._annuaire_client,
            hospital=hospital,
            dmp_consult=self._dmp_client,
            drimbox=self._drimbox,
            drimbox_consumer=self._consumer,
        )
        await workers.start()
        if not listen:
            self._warm = _warming(rt, validator)
            rt.ready = True
            log.info("OpenSégur worker ready: %s job workers on %s", s.workers, s.public_dict()["db_url"])
            return rt
        # One sealer per serving process (several hosts on PostgreSQL take turns on an advisory lock).
        self._sealer = asyncio.create_task(run_sealer(self.db, s.data_dir / ANCHOR_FILE, self._sealer_stop))
        if s.hl7_drop_dir is not None:
            # Reports written as files (teleradiology, the PACS): the same intake as MLLP.
            drop = DropFolder(s.hl7_drop_dir, partial(_drop_answer, intake))
            self._drop_watcher = asyncio.create_task(drop.watch(self._drop_stop, s.hl7_drop_interval_s))
        if self._mailbox_reader is not None and mss.mailboxes:
            self._mss_poller = asyncio.create_task(
                mss_inbound.run_poller(
                    self.db,
                    self._mailbox_reader,
                    list(mss.mailboxes),
                    interval_s=s.mss_poll_interval_s,
                    limit=s.mss_poll_limit,
                    stop=self._mss_stop,
                )
            )
        if s.workers:
            # Compile the schematrons while the rest starts: the first document must not pay for it. Without
            # workers here (`opensegur worker` processes run the jobs), nothing in this process validates.
            self._warm = _warming(rt, validator)

        async def handle(raw: bytes) -> bytes:
            result = await asyncio.to_thread(intake.handle, raw)
            return result.ack

        async def on_framing_error(err: MllpFramingError) -> bytes | None:
            # A frame too large, or one the listener has no memory for now, was read to its end: the sender
            # gets an AR naming the cause (ERR 207), echoing its MSH, before the connection closes. After a
            # missing start block or a truncated frame the stream is out of step: nothing is answered.
            if err.code not in _NAK_FRAMING:
                return None
            return hl7v2.build_nak_for_unparseable(
                err.head, hl7v2.Hl7Error("207", _NAK_FRAMING[err.code], reject=True)
            )

        tls = (
            tls_server_context(s.mllp_tls_cert, s.mllp_tls_key, s.mllp_tls_client_ca)
            if s.mllp_tls_cert and s.mllp_tls_key and s.mllp_tls_client_ca
            else None
        )
        self.mllp = MllpServer(
            handle,
            s.host,
            s.mllp_port,
            max_bytes=s.mllp_max_bytes,
            on_framing_error=on_framing_error,
            # Read at each connection: SIGHUP or the admin page's reload applies to the next one.
            allow_peer=SenderAllowlist(lambda: rt.hospital),
            ssl_context=tls,
            max_connections=s.mllp_max_connections,
            max_per_peer=s.mllp_max_per_peer,
            idle_timeout=s.mllp_idle_timeout_s,
            frame_timeout=s.mllp_frame_timeout_s,
            receive_budget=s.mllp_receive_budget,
        )
        await self.mllp.start()
        rt.mllp_port = self.mllp.port

        # Here, not at the top: an `opensegur worker` process serves no page.
        from opensegur.web.app import DRIMBOX_ROUTERS, create_app

        sock = bind(s.host, s.http_port)
        rt.http_port = sock.getsockname()[1]
        if self._config_dir() is not None:
            rt.reload_config = self.reload_config
        rt.app = create_app(rt)
        await self._serve_http(rt.app, sock)
        if s.drimbox_tls_port is not None and rt.drimbox is not None:
            assert s.drimbox_tls_cert and s.drimbox_tls_key and s.drimbox_tls_client_ca  # Settings checks it
            tls_sock = bind(s.host, s.drimbox_tls_port)
            rt.drimbox_tls_port = tls_sock.getsockname()[1]
            # Only the WADO-RS for other DRIMboxes on this port: no page, no API.
            drimbox_app = create_app(rt, routers=DRIMBOX_ROUTERS)
            mutual = ClientTls(s.drimbox_tls_cert, s.drimbox_tls_key, s.drimbox_tls_client_ca)
            await self._serve_http(drimbox_app, tls_sock, tls=mutual)
            log.info("DRIMbox: WADO-RS in mutual TLS on port %s", rt.drimbox_tls_port)
        rt.ready = True
        log.info("OpenSégur ready: http://%s:%s  mllp %s:%s", s.host, rt.http_port, s.host, rt.mllp_port)
        return rt

    def _config_dir(self) -> Path | None:
        """The hospital's configuration directory: the settings', else the demo GHT's in demo mode."""
        from opensegur.ops.demo import DEMO_CONFIG_DIR

        return self.settings.config_dir or (DEMO_CONFIG_DIR if self.settings.demo else None)

    def _demo_people_fit(self) -> bool:
        """The demo's patients and accounts belong to the demo GHT's sites: not loaded into another hospital."""
        from opensegur.ops.demo import DEMO_CONFIG_DIR

        directory = self._config_dir()
        if directory is not None and directory.resolve() != DEMO_CONFIG_DIR.resolve():
            log.warning(
                "Données de démonstration non chargées : %s n'est pas le répertoire du GHT de démonstration",
                directory,
            )
            return False
        return True

    async def _start_config(self) -> HospitalConfig | None:
        """Read, validate and apply the configuration directory at start; an invalid one stops the start."""
        if self._config_dir() is None:
            return None
        try:
            hospital, _ = await asyncio.to_thread(self._read_config, "démarrage")
        except ConfigInvalid as exc:
            for problem in exc.problems:
                log.error("Configuration de l'établissement refusée : %s", problem)
            raise
        return hospital

    def _read_config(self, applied_by: str) -> tuple[HospitalConfig, ApplyResult | None]:
        directory = self._config_dir()
        if directory is None:
            raise ConfigInvalid(
                [ConfigProblem("config_dir", 0, "aucun répertoire de configuration n'est défini (--config)")]
            )
        if not self._listen:
            # A worker process only reads it: the serving process writes it into the shared database.
            return load_directory(directory), None
        hospital, result = load_and_apply(self.db, directory, applied_by)
        for warning in result.warnings:
            log.warning(warning)
        if result.version_id is not None:
            log.info(
                "Configuration de l'établissement appliquée : version %s (%s) par %s",
                result.version_id,
                hospital.sha256[:12],
                applied_by,
            )
        return hospital, result

    async def reload_config(self, applied_by: str) -> ApplyResult | None:
        """Re-read, validate and apply the configuration directory without restart (SIGHUP, the admin page).
        Invalid: :class:`ConfigInvalid` with every problem, and the configuration in force stays. Returns the
        application's result (None in a worker process, which does not write)."""
        hospital, result = await asyncio.to_thread(self._read_config, applied_by)
        if self.runtime is not None:
            self.runtime.hospital = hospital
        return result

    def _reload_on_signal(self) -> None:
        async def reload() -> None:
            try:
                await self.reload_config("SIGHUP")
            except ConfigInvalid as exc:
                log.error("Configuration rechargée refusée, la précédente reste en vigueur :\n%s", exc)

        task = asyncio.create_task(reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def start_sandbox(
        self, *, publish: bool = False, hospital: HospitalConfig | None = None
    ) -> SandboxHandle:
        """Start the simulated national services: HTTP (INSi, DMP, Annuaire Santé, MSSanté admin) and the MSSanté
        operator's SMTP and IMAP, with the mailboxes of ``hospital`` (else the demo GHT's). ``publish`` serves
        /sandbox/endpoints on the sandbox itself (run on its own)."""
        # Imported here, not at the top, as the demo below: the simulators and the demo data cost every process
        # 0.9 s and 32 MB, and a hospital's `serve` and `opensegur worker` processes run neither.
        from opensegur.ops.demo import demo_dmp_patients
        from opensegur.sandbox.annuaire import directory_mailboxes
        from opensegur.sandbox.app import create_sandbox_app
        from opensegur.sandbox.dmp.patients import PatientRegistry, default_patients
        from opensegur.sandbox.drimbox import RemoteDrimbox
        from opensegur.sandbox.mssante import MssOperator
        from opensegur.sandbox.psc import PscSandbox
        from opensegur.security.pki import ensure_test_pki

        s = self.settings
        data = s.data_dir / "sandbox"
        pki = await asyncio.to_thread(ensure_test_pki, data / "pki")
        mailboxes = tuple(s.mss_mailboxes) or _sandbox_mailboxes(hospital)
        operator = MssOperator(data, [*directory_mailboxes(), *mailboxes], SANDBOX_MSS_PASSWORD, host=s.host)
        await operator.start()
        self._mss_operator = operator
        sock = bind(s.host, s.sandbox_port)
        base = f"http://{s.host}:{sock.getsockname()[1]}"
        endpoints = sandbox_endpoints(base, pki, operator, mailboxes)
        # Pro Santé Connect: its signing key is made once under the sandbox's data directory.
        psc = PscSandbox(data / "psc", f"{base}/psc")
        endpoints["psc"] = psc.endpoints()
        # Another hospital's DRIMbox, with images of the demo DMP's imaging report.
        drimbox = RemoteDrimbox(base, psc) if s.demo else None
        directory = None
        if drimbox is not None:
            endpoints["drimbox"] = drimbox.endpoints()
            directory = data / "drimbox" / "liste-blanche.xml"
            await asyncio.to_thread(drimbox.write_directory, directory, pki)
        # The demo's patients have a DMP, as a hospital's test patients have one on the DMP test platform.
        demo = demo_dmp_patients() if s.demo else []
        patients = PatientRegistry([*default_patients(), *demo]) if s.demo else None
        await self._serve_http(
            create_sandbox_app(
                data,
                pki,
                operator,
                endpoints if publish else None,
                psc=psc,
                dmp_patients=patients,
                dmp_demo_content=demo,
                drimbox=drimbox,
            ),
            sock,
        )
        return SandboxHandle(pki, endpoints, directory)

    async def run_sandbox_forever(self) -> None:
        """`opensegur sandbox`: the simulators alone, for another editor's CI or a platform on another host."""
        handle = await self.start_sandbox(publish=True)
        log.info("OpenSégur sandbox ready: %s", json.dumps(handle.endpoints, ensure_ascii=False))
        await self._wait_for_signal()
        await self.stop()

    def _pacs_endpoint(self) -> PacsEndpoint:
        s = self.settings
        assert s.pacs_host is not None
        return PacsEndpoint(s.pacs_host, s.pacs_port, s.pacs_aet, s.drimbox_aet, s.pacs_timeout_s)

    def _wire_drimbox(
        self, dmp: DmpClient, handlers: dict[str, Handler], endpoints: dict[str, Any]
    ) -> DeliveryHook | None:
        """The DRIMbox source when a PACS is configured: the feed's hook that queues an imaging report's
        manifest, the jobs that publish and withdraw it, and the serving side (WADO-RS) when PSC can be asked."""
        s = self.settings
        if not s.pacs_host:
            return None
        assert s.drimbox_wado_url is not None  # Settings requires it with pacs_host
        pacs = PacsClient(self._pacs_endpoint())
        source = DrimboxSource(self.db, pacs, dmp, s.drimbox_wado_url, s.oid_root)
        handlers.update(make_drimbox_handlers(source))
        if s.drimbox_dicom_port is not None and self._listen:
            self._dicom_receiver = DicomReceiver(
                s.host, s.drimbox_dicom_port, s.drimbox_aet, s.pacs_aet, make_note_handler(self.db)
            )
            port = self._dicom_receiver.start()
            log.info("DRIMbox: receiving the PACS's IOCM notes on DICOM port %s", port)
        psc = endpoints.get("psc") or {}
        url = s.drimbox_psc_introspection_url or psc.get("introspection")
        client_id = s.drimbox_psc_client_id or psc.get("client_id")
        secret = s.drimbox_psc_client_secret.get_secret_value() if s.drimbox_psc_client_secret else None
        secret = secret or psc.get("client_secret")
        if url and client_id and secret:
            self._introspector = TokenIntrospector(url, client_id, secret)
            self._pacs_wado = PacsWado(s.pacs_wado_url, timeout=s.pacs_timeout_s) if s.pacs_wado_url else None
            callers = self._directory if s.drimbox_tls_port is not None else None
            self._drimbox = DrimboxServing(pacs, self._introspector, self._pacs_wado, callers)
        else:
            log.warning("DRIMbox: no Pro Santé Connect introspection configured, images are not served")
        return request_manifest

    async def _specialty(self, rpps: str) -> Coded:
        return await vihf_specialty(self._annuaire_client, rpps)

    def _matrix(self) -> Matrix:
        """The authorisation matrix in force: the configuration directory's, reloaded with it."""
        hospital = self.runtime.hospital if self.runtime is not None else None
        return hospital.matrix if hospital is not None else default_matrix()

    def _wire_annuaire(self, endpoints: dict[str, Any]) -> None:
        s = self.settings
        url = s.annuaire_url
        key = s.annuaire_api_key.get_secret_value() if s.annuaire_api_key else None
        if not url and "annuaire" in endpoints:
            from opensegur.sandbox.annuaire import SANDBOX_API_KEY

            url, key = endpoints["annuaire"]["url"], SANDBOX_API_KEY
        if url and key:
            self._annuaire_client = AnnuaireClient(
                url, key, timeout=s.annuaire_timeout_s, verify=s.annuaire_ca or True
            )

    def _wire_mssante(
        self,
        mss: _MssWiring,
        handlers: dict[str, Handler],
        zam_endpoint: tuple[str, int] | None,
        hospital: HospitalConfig | None,
    ) -> None:
        from opensegur.connectors.mss_imap import ImapMailboxReader
        from opensegur.connectors.mss_smtp import SmtpMailSender

        s = self.settings

        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        if zam_endpoint is not None:
            handlers[JobKind.MSS_ZAM] = mss_outbound.make_mss_zam_handler(
                self.db, MllpDpiSender(*zam_endpoint, timeout=s.dpi_timeout_s)
            )
        if not mss.smtp_host:
            log.warning("no MSSanté operator configured: mail deliveries wait")
            return
        mailer = SmtpMailSender(
            mss.smtp_host,
            mss.smtp_port,
            security=mss.smtp_security,
            username=mss.smtp_username,
            password=mss.smtp_password,
            client_cert=path(s.mss_client_cert),
            client_key=path(s.mss_client_key),
            ca=path(s.mss_ca),
            timeout=s.mss_timeout_s,
            mailbox_credentials=mss.mailboxes,
        )
        if mss.sender:
            cfg = mss_outbound.MssOutboundConfig(sender=mss.sender, nil=s.mssante_nil, source_oid=s.oid_root)
            handlers[JobKind.MSS_SEND] = mss_outbound.make_mss_send_handler(self.db, mailer, cfg)
            handlers[JobKind.MSS_APPOINTMENT] = mss_outbound.make_appointment_handler(self.db, mailer, cfg)
        if not mss.imap_host or not mss.mailboxes:
            return
        if mss.sender and mss.sender.lower() not in {box.lower() for box in mss.mailboxes}:
            # Delivery and read reports come back to the sender mailbox: unpolled, no ZAM Z02/Z03 ever leaves.
            log.warning("the MSSanté sender mailbox is not among the polled mailboxes (mss_mailboxes)")
        self._mailbox_reader = ImapMailboxReader(
            mss.imap_host,
            mss.imap_port,
            credentials=mss.mailboxes,
            security=mss.imap_security,
            client_cert=path(s.mss_client_cert),
            client_key=path(s.mss_client_key),
            ca=path(s.mss_ca),
            timeout=s.mss_timeout_s,
            processed_folder=s.mss_processed_folder,
            max_message_bytes=s.mss_max_message_bytes,
        )
        dpi = _endpoint(s.dpi_mdm_endpoint) or zam_endpoint
        ctx = mss_inbound.MssInboundContext(
            db=self.db,
            dpi=MllpDpiSender(*dpi, timeout=s.dpi_timeout_s) if dpi else _NoDpi(),
            mail_sender=mailer,
            endpoint=MessageRoute(
                receiving_application=s.dpi_mdm_application, receiving_facility=s.dpi_mdm_facility
            ),
            limits=mss_inbound.MailLimits(
                max_bytes=s.mss_max_message_bytes, max_attachment=s.mss_max_attachment_bytes
            ),
            mailbox_structures=self._mailbox_sites(hospital),
            forward_results_oru=s.dpi_forward_results_oru,
        )
        handlers[JobKind.MSS_INTEGRATE] = mss_inbound.make_integrate_handler(ctx)
        handlers[JobKind.MSS_TO_DPI] = mss_inbound.make_to_dpi_handler(ctx)
        handlers[JobKind.MSS_MDN] = mss_inbound.make_mdn_handler(ctx)
        # Always registered: jobs queued while forwarding was on outlive a change of the setting.
        handlers[JobKind.MSS_RESULTS_TO_DPI] = mss_inbound.make_results_to_dpi_handler(ctx)

    def _mailbox_sites(self, hospital: HospitalConfig | None) -> dict[str, int]:
        """Mailbox → site: the ``site`` of each mailbox in ``mssante.toml``, overridden by ``mss_mailbox_sites``.
        Mail of a site's mailbox is matched among that site's patients and triaged by that site's staff."""
        wanted = {m.address: m.site for m in (hospital.mailboxes if hospital is not None else ())}
        wanted.update(self.settings.mss_mailbox_sites)
        if not wanted:
            return {}
        out: dict[str, int] = {}
        with self.db.session() as ses:
            for box, finess in wanted.items():
                site = ses.scalar(select(Structure.id).where(Structure.finess == finess))
                if site is None:
                    raise ValueError(f"mss_mailbox_sites: FINESS inconnu {finess} pour {box}")
                out[box.lower()] = site  # addresses compare without case (RFC 5321 in practice)
        return out

    async def warmed(self) -> None:
        """Wait until the schematrons are compiled (benchmarks, tests that time the flow)."""
        if self._warm is not None:
            await self._warm

    async def _serve_http(self, app: Any, sock: socket.socket, *, tls: ClientTls | None = None) -> None:
        config = uvicorn_config(
            app,
            max_connections=self.settings.http_max_connections,
            header_timeout_s=self.settings.http_header_timeout_s,
            tls=tls,
        )
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
        self._drop_stop.set()
        if self._drop_watcher is not None:
            await asyncio.gather(self._drop_watcher, return_exceptions=True)
        # No mail is fetched while the workers shut down; an IDLE in progress is broken rather than waited for.
        self._mss_stop.set()
        if self._mailbox_reader is not None:
            await self._mailbox_reader.close()
        if self._mss_poller is not None:
            await asyncio.gather(self._mss_poller, return_exceptions=True)
        if self.runtime is not None:
            await self.runtime.workers.stop()
        # After the workers: the entries they wrote last are sealed and anchored before the database closes.
        self._sealer_stop.set()
        if self._sealer is not None:
            await asyncio.gather(self._sealer, return_exceptions=True)
        for server in reversed(self._servers):
            server.should_exit = True
        await asyncio.gather(*self._serve_tasks, return_exceptions=True)
        if self._mss_operator is not None:
            await self._mss_operator.stop()
        if self._annuaire_client is not None:
            await self._annuaire_client.aclose()
        if self._insi_client is not None:
            await self._insi_client.aclose()
        if self._dmp_client is not None:
            await self._dmp_client.aclose()
        if self._introspector is not None:
            await self._introspector.aclose()
        if self._consumer is not None:
            await self._consumer.aclose()
        if self._pacs_wado is not None:
            await self._pacs_wado.aclose()
        if self._dicom_receiver is not None:
            await asyncio.to_thread(self._dicom_receiver.stop)
        if self._warm is not None:
            await asyncio.gather(self._warm, return_exceptions=True)
        if self._validator is not None:
            await asyncio.to_thread(self._validator.close)
        self.db.dispose()
        self._stopped.set()

    async def run_forever(self, *, listen: bool = True) -> None:
        await self.start(listen=listen)
        await self._wait_for_signal()
        await self.stop()

    async def _wait_for_signal(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.runtime is not None:
            loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        await stop.wait()
        log.info("stopping")
