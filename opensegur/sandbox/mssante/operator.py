"""Simulated MSSanté operator: SMTP submission (aiosmtpd) and IMAP access on Maildirs, with DSN, MDN and faults.

It behaves like an operator seen from a mail client or a PFI: authentication required (login = address), only
its own mailboxes accept mail (550 5.1.1 otherwise), a size limit, a ``Received:`` trace, RFC 3461 DSN
requested at RCPT (``NOTIFY``/``ORCPT``, ``RET``/``ENVID`` at MAIL) and answered with RFC 3464 reports, an RFC
8098 ``displayed`` MDN when a recipient reads a message that asked for one. Patient mailboxes
``<matricule INS>@patient.mssante.fr`` exist as soon as the matricule is valid (created on first delivery).

Decisions:
- The envelope sender must be the authenticated mailbox (553 5.7.1 otherwise), as operators do against spoofing.
- Without ``NOTIFY`` a failure or a delay is reported (RFC 3461 §4.1 leaves the default to the MTA), never a
  success; ``NOTIFY=NEVER`` silences everything.
- Reports go to the sender's mailbox only when it is one of ours; other mail never leaves the sandbox.
- A delayed delivery is spooled on disk first, so a stop or a crash during the delay loses nothing: the next
  start delivers it.
- Addresses are kept lower-case (``dpi@hopitalA…`` and ``dpi@hopitala…`` are one mailbox), as operators treat them.
- Messages lacking ``Date`` or ``Message-ID`` get one, as a submission server does (RFC 6409 §8); a message
  without ``From`` is refused (550 5.6.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import secrets
import ssl
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax
from pydantic import BaseModel, Field

from opensegur.sandbox.faults import FaultInjector
from opensegur.sandbox.mssante.imap_server import ImapServer
from opensegur.sandbox.mssante.maildir_store import INBOX, MaildirStore, StoreError, canonical_address
from opensegur.transactions.mdn import build_mdn
from opensegur.transactions.mss_mail import MailError, patient_mailbox

__all__ = [
    "ANS_EXAMPLE_MAILBOXES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MssFault",
    "MssOperator",
    "RecipientReport",
    "build_dsn",
]

log = logging.getLogger(__name__)

# Recipients and senders named in the ANS examples (HL7 v2 examples and the two MSSanté volets), so that the
# example messages replayed against the sandbox find their mailboxes.
ANS_EXAMPLE_MAILBOXES = (
    "adam.hoda@test-ci-sis.mssante.fr",
    "thomas.eric@medecin.mssante.fr",
    "janet.blanc@medecin.mssante.fr",
    "adam.hoda@medecin.mssante.fr",
    "jean.dupont@hopital-A.mssante.fr",
    "appliExemple@hopitalB.mssante.fr",
    "serviceY@chb.mssante.fr",
    "serviceY_auto@chb.mssante.fr",
    "radiologie@hopitalA.mssante.fr",
    "dpi@hopitalA.mssante.fr",
)
DEFAULT_MAX_MESSAGE_BYTES = 150_000_000
MAX_DELAY_S = 3600.0
_PARIS = ZoneInfo("Europe/Paris")
_SPOOL = ".spool"
_XTEXT_RE = re.compile(r"^(?:[!-*,-<>-~]|\+[0-9A-F]{2})*$")
_NOTIFY_VALUES = {"SUCCESS", "FAILURE", "DELAY"}

FaultKind = Literal["refuse_recipient", "mailbox_full", "unavailable", "delay", "bounce"]


class MssFault(BaseModel):
    """An injected fault. ``recipient`` limits it to one address (all when absent)."""

    kind: FaultKind
    recipient: str | None = Field(default=None, max_length=254)
    # mailbox_full: 552 5.2.2 (permanent) instead of 452 4.2.2 at RCPT.
    permanent: bool = False
    # delay: seconds before delivery (a "delayed" DSN goes out at once).
    delay_s: float = Field(default=5.0, ge=0, le=MAX_DELAY_S)
    # bounce: accepted at SMTP level, then a "failed" DSN with this RFC 3463 status.
    status: str = Field(default="5.0.0", pattern=r"^5\.\d{1,3}\.\d{1,3}$")
    count: int | None = Field(default=None, ge=1)
    expires_in_s: float | None = Field(default=None, gt=0, le=86_400)

    def key(self) -> str:
        return f"{self.kind}:{self.recipient or '*'}"


@dataclass
class RecipientReport:
    """One recipient in a DSN."""

    recipient: str
    action: Literal["delivered", "failed", "delayed"]
    status: str
    original_recipient: str | None = None
    diagnostic: str | None = None


# ------------------------------------------------------------------------------------------------------ DSN


def _xtext_decode(value: str) -> str:
    """RFC 3461 xtext; refused (ValueError) when it decodes to a control character, which could forge headers."""
    decoded = re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)
    if any(not " " <= c <= "~" for c in decoded):
        raise ValueError("501 5.5.4 Control character in xtext parameter (caractere de controle interdit)")
    return decoded


def build_dsn(
    *,
    reporting_mta: str,
    to: str,
    original: bytes,
    reports: list[RecipientReport],
    envelope_id: str | None = None,
    arrival: datetime | None = None,
    return_full: bool = False,
) -> EmailMessage:
    """RFC 3464 delivery status notification (``multipart/report; report-type=delivery-status``)."""
    headers = BytesHeaderParser(policy=policy.default).parsebytes(original)
    subject = " ".join(str(headers.get("Subject", "") or "").split())
    arrival = arrival or datetime.now(_PARIS)
    actions = {r.action for r in reports}
    verdict = (
        "échec de remise" if "failed" in actions else "remise différée" if "delayed" in actions else "remis"
    )
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = f"MAILER-DAEMON@{reporting_mta}"
    msg["To"] = to
    msg["Subject"] = f"Notification d'état de remise ({verdict}) : {subject}".rstrip(" :")
    msg["Date"] = format_datetime(datetime.now(_PARIS))
    msg["Message-ID"] = make_msgid(domain=reporting_mta)
    msg["Auto-Submitted"] = "auto-replied"
    msg["MIME-Version"] = "1.0"
    original_id = headers.get("Message-ID")
    if original_id:
        msg["In-Reply-To"] = str(original_id)
        msg["References"] = str(original_id)

    labels = {
        "delivered": "a été remis à",
        "failed": "n'a pas pu être remis à",
        "delayed": "n'a pas encore pu être remis (nouvel essai en cours) à",
    }
    lines = [f"Votre message « {subject} » :", ""]
    for r in reports:
        lines.append(f"- {labels[r.action]} {r.recipient} (statut {r.status})")
    human = EmailMessage(policy=policy.SMTP)
    human.set_content("\n".join(lines) + "\n", charset="utf-8")

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    if envelope_id:
        per_message["Original-Envelope-Id"] = envelope_id
    per_message["Arrival-Date"] = format_datetime(arrival)
    blocks: list[Message | str] = [per_message]
    for r in reports:
        block = Message()
        if r.original_recipient:
            block["Original-Recipient"] = r.original_recipient
        block["Final-Recipient"] = f"rfc822; {r.recipient}"
        block["Action"] = r.action
        block["Status"] = r.status
        if r.diagnostic:
            block["Diagnostic-Code"] = f"smtp; {r.diagnostic}"
        blocks.append(block)
    status = Message()
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)

    returned = Message()
    if return_full:
        returned["Content-Type"] = "message/rfc822"
        returned.set_payload([BytesParser(policy=policy.compat32).parsebytes(original)])
    else:
        returned["Content-Type"] = "text/rfc822-headers"
        head = original.split(b"\r\n\r\n", 1)[0]
        returned.set_payload(head.decode("ascii", "backslashreplace") + "\r\n")

    msg["Content-Type"] = "multipart/report; report-type=delivery-status"
    msg.set_boundary(make_msgid().strip("<>").replace("@", "."))
    msg.set_payload([human, status, returned])
    return msg


# ----------------------------------------------------------------------------------------------------- SMTP


class _DsnEnvelope(Envelope):
    """aiosmtpd's envelope plus the RFC 3461 parameters, one ``notify``/``orcpt`` entry per accepted recipient."""

    def __init__(self) -> None:
        super().__init__()
        self.ret: str | None = None
        self.envid: str | None = None
        self.notify: list[frozenset[str] | None] = []
        self.orcpt: list[str | None] = []


def _take_params(arg: str, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """Split the DSN parameters (which aiosmtpd refuses with 555) from the rest of a MAIL/RCPT argument."""
    kept: list[str] = []
    found: dict[str, str] = {}
    for index, word in enumerate(arg.split(" ")):
        name, eq, value = word.partition("=")
        if index > 0 and eq and name.upper() in names:
            if name.upper() in found:
                raise ValueError(f"501 5.5.4 Duplicate {name.upper()} parameter (parametre en double)")
            found[name.upper()] = value
        else:
            kept.append(word)
    return " ".join(kept), found


class _MssSmtp(SMTP):
    """aiosmtpd's SMTP with the DSN extension (RFC 3461) added on top."""

    def _create_envelope(self) -> Envelope:
        return _DsnEnvelope()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        params: dict[str, str] = {}
        envid: str | None = None
        if arg is not None:
            try:
                arg, params = _take_params(arg, ("RET", "ENVID"))
                ret = params.get("RET", "").upper()
                if ret and ret not in ("FULL", "HDRS"):
                    raise ValueError("501 5.5.4 RET must be FULL or HDRS (RET invalide)")
                envid = params.get("ENVID")
                if envid is not None:
                    if not envid or len(envid) > 100 or not _XTEXT_RE.match(envid):
                        raise ValueError(
                            "501 5.5.4 Invalid ENVID (ENVID invalide, xtext de 100 caracteres max)"
                        )
                    envid = _xtext_decode(envid)
            except ValueError as exc:
                await self.push(str(exc))
                return
        before = self.envelope.mail_from if self.envelope is not None else None
        await super().smtp_MAIL(arg)
        envelope = self.envelope
        if before is None and isinstance(envelope, _DsnEnvelope) and envelope.mail_from:
            envelope.ret = params.get("RET", "").upper() or None
            envelope.envid = envid

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        params: dict[str, str] = {}
        notify: frozenset[str] | None = None
        orcpt: str | None = None
        if arg is not None:
            try:
                arg, params = _take_params(arg, ("NOTIFY", "ORCPT"))
                if "NOTIFY" in params:
                    values = frozenset(v.strip().upper() for v in params["NOTIFY"].split(","))
                    if not (values == {"NEVER"} or (values and values <= _NOTIFY_VALUES)):
                        raise ValueError(
                            "501 5.5.4 NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY (NOTIFY invalide)"
                        )
                    notify = values
                if "ORCPT" in params:
                    kind, sep, value = params["ORCPT"].partition(";")
                    if not sep or not value or not _XTEXT_RE.match(value) or len(value) > 500:
                        raise ValueError("501 5.5.4 Invalid ORCPT (ORCPT invalide)")
                    orcpt = f"{kind.lower()}; {_xtext_decode(value)}"
            except ValueError as exc:
                await self.push(str(exc))
                return
        before = len(self.envelope.rcpt_tos) if self.envelope is not None else 0
        await super().smtp_RCPT(arg)
        envelope = self.envelope
        if isinstance(envelope, _DsnEnvelope) and len(envelope.rcpt_tos) > before:
            envelope.notify.append(notify)
            envelope.orcpt.append(orcpt)


class _Unavailable(asyncio.Protocol):
    """What a client meets while the ``unavailable`` fault is active: 421 at connection, then hang-up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.3.2 Service MSSante temporairement indisponible (service unavailable)\r\n")
        transport.close()


class _Handler:
    def __init__(self, operator: MssOperator) -> None:
        self.op = operator

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if not isinstance(session.auth_data, str) or address.lower() != session.auth_data:
            return "553 5.7.1 Sender address must be the authenticated mailbox (expediteur non autorise)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        op = self.op
        try:
            rcpt = canonical_address(address)
        except StoreError:
            return "550 5.1.1 Unknown mailbox (boite aux lettres inconnue)"
        if not op.accepts(rcpt):
            return "550 5.1.1 Unknown mailbox (boite aux lettres inconnue)"
        if op.faults.take(f"refuse_recipient:{rcpt}", "refuse_recipient:*"):
            return "550 5.1.1 Recipient refused (destinataire refuse, panne injectee)"
        full = op.faults.take(f"mailbox_full:{rcpt}", "mailbox_full:*")
        if full is not None:
            if full.permanent:
                return "552 5.2.2 Mailbox full (boite aux lettres pleine)"
            return "452 4.2.2 Mailbox full, try later (boite aux lettres pleine, reessayer plus tard)"
        envelope.rcpt_tos.append(rcpt)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, _DsnEnvelope)
        raw = envelope.original_content
        if not isinstance(raw, bytes):
            return "554 5.6.0 No message content (message vide)"
        try:
            return await self.op._accept(session, envelope, raw)
        except Exception:
            log.exception("MSSante sandbox: delivery failed")
            return "451 4.3.0 Local error in processing, try later (erreur locale)"


# ------------------------------------------------------------------------------------------------ operator


@dataclass
class _Pending:
    queue_id: str
    recipient: str
    sender: str
    raw: bytes  # as delivered (trace headers included)
    original: bytes  # as received, for the report
    notify: frozenset[str] | None
    orcpt: str | None
    envid: str | None
    ret: str | None
    arrival: datetime


class MssOperator:
    """The MSSanté operator of the sandbox, run in the caller's event loop (``await start()`` / ``stop()``)."""

    def __init__(
        self,
        data_dir: Path,
        mailboxes: Iterable[str],
        password: str,
        *,
        patient_domain: str = "patient.mssante.fr",
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        smtp_port: int = 0,
        imap_port: int = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        hostname: str = "mssante.sandbox.opensegur.local",
        include_ans_examples: bool = True,
    ) -> None:
        if not password:
            raise ValueError("the sandbox operator needs a password")
        self.data_dir = data_dir
        self.password = password
        self.patient_domain = patient_domain.lower()
        self.host = host
        self.tls = tls
        self.smtp_port = smtp_port
        self.imap_port = imap_port
        self.max_message_bytes = max_message_bytes
        self.hostname = hostname
        self.faults: FaultInjector[MssFault] = FaultInjector(max_sleep_s=MAX_DELAY_S)
        self.store = MaildirStore(data_dir / "mssante", self._on_change)
        self.spool = self.store.root / _SPOOL
        wanted = [*mailboxes, *(ANS_EXAMPLE_MAILBOXES if include_ans_examples else ())]
        self._initial = sorted({canonical_address(a) for a in wanted})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._smtp: asyncio.Server | None = None
        self._imap: ImapServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sleeping: set[asyncio.Task[Any]] = set()
        self._connections: weakref.WeakSet[_MssSmtp] = weakref.WeakSet()

    # -------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        # aiosmtpd logs every envelope address at INFO (a patient address is a matricule INS) and a deprecation
        # notice at WARNING on every AUTH.
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._prepare)
        handler = _Handler(self)
        loop = self._loop

        def factory() -> asyncio.BaseProtocol:
            if self.faults.take("unavailable:*") is not None:
                return _Unavailable()
            with warnings.catch_warnings():
                # AUTH without TLS is what the sandbox does on loopback when no TLS context is given.
                warnings.simplefilter("ignore", UserWarning)
                protocol = self._smtp_protocol(handler, loop)
            self._connections.add(protocol)
            return protocol

        self._smtp = await loop.create_server(factory, self.host, self.smtp_port)
        self.smtp_port = self._smtp.sockets[0].getsockname()[1]
        self._imap = ImapServer(
            self.store,
            self.authenticate,
            host=self.host,
            port=self.imap_port,
            tls=self.tls,
            max_append=self.max_message_bytes,
        )
        await self._imap.start()
        self.imap_port = self._imap.port
        for pending in await asyncio.to_thread(self._load_spool):
            self._schedule(pending, 0.0)
        log.info(
            "MSSante sandbox: smtp %s:%s imap %s:%s", self.host, self.smtp_port, self.host, self.imap_port
        )

    async def stop(self) -> None:
        """Stop serving; deliveries still waiting out an injected delay stay spooled for the next start."""
        if self._smtp is not None:
            self._smtp.close()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        # Only deliveries still waiting are interrupted (they stay spooled); one being written finishes.
        for task in list(self._sleeping):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._imap is not None:
            await self._imap.stop()
            self._imap = None
        if self._smtp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._smtp.wait_closed(), 5)
            self._smtp = None

    def _smtp_protocol(self, handler: _Handler, loop: asyncio.AbstractEventLoop) -> _MssSmtp:
        return _MssSmtp(
            handler,
            data_size_limit=self.max_message_bytes,
            hostname=self.hostname,
            ident="OpenSegur MSSante sandbox ESMTP",
            tls_context=self.tls,
            require_starttls=self.tls is not None,
            auth_required=True,
            auth_require_tls=self.tls is not None,
            authenticator=self._smtp_authenticator,
            loop=loop,
        )

    def _prepare(self) -> None:
        for address in self._initial:
            self.store.create_mailbox(address)
        self.spool.mkdir(exist_ok=True)

    def _on_change(self, address: str, folder: str) -> None:
        if self._loop is not None and self._imap is not None:
            self._loop.call_soon_threadsafe(self._imap.notify, address, folder)

    # ------------------------------------------------------------------------------------------- mailboxes

    def mailboxes(self) -> list[str]:
        return self.store.mailboxes()

    def is_patient_address(self, address: str) -> bool:
        local, _, domain = address.lower().rpartition("@")
        if domain != self.patient_domain:
            return False
        try:
            patient_mailbox(local, ins_qualified=True)
        except MailError:
            return False
        return True

    def accepts(self, address: str) -> bool:
        """An existing mailbox, or a patient address with a valid matricule INS (created on first delivery)."""
        return self.store.has_mailbox(address) or self.is_patient_address(address)

    def authenticate(self, login: str, password: str) -> str | None:
        """The mailbox a login opens, or None: login = address, password = the sandbox password."""
        ok = hmac.compare_digest(password.encode("utf-8"), self.password.encode("utf-8"))
        try:
            address = canonical_address(login)
        except StoreError:
            return None
        return address if ok and self.store.has_mailbox(address) else None

    def _smtp_authenticator(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        try:
            address = self.authenticate(auth_data.login.decode("utf-8"), auth_data.password.decode("utf-8"))
        except UnicodeDecodeError:
            address = None
        if address is None:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=address)

    # -------------------------------------------------------------------------------------------- delivery

    def _trace(
        self, session: Session, envelope: _DsnEnvelope, rcpt: str, orcpt: str | None, qid: str
    ) -> bytes:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        helo = re.sub(r"[^A-Za-z0-9.\-\[\]:]", "", session.host_name or "unknown")[:100]
        protocol = "ESMTPSA" if session.ssl else "ESMTPA"
        lines = [
            f"Return-Path: <{envelope.mail_from}>",
            f"Received: from {helo} ([{peer}])\r\n\tby {self.hostname} (OpenSegur MSSante sandbox) with {protocol}"
            f" id {qid}\r\n\tfor <{rcpt}>; {format_datetime(datetime.now(_PARIS))}",
        ]
        if orcpt:
            lines.append(f"Original-Recipient: {orcpt}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")

    async def _accept(self, session: Session, envelope: _DsnEnvelope, received: bytes) -> str:
        raw = re.sub(rb"\r?\n", b"\r\n", received)
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
        if headers.get("From") is None:
            return "550 5.6.0 Message without From header (message sans en-tete From, RFC 5322)"
        qid = secrets.token_hex(6).upper()
        missing = []
        # Submission servers complete a message missing Date or Message-ID (RFC 6409 §8).
        if headers.get("Date") is None:
            missing.append(f"Date: {format_datetime(datetime.now(_PARIS))}\r\n".encode())
        if headers.get("Message-ID") is None:
            missing.append(f"Message-ID: {make_msgid(domain=self.hostname)}\r\n".encode())
        raw = b"".join(missing) + raw
        arrival = datetime.now(_PARIS)
        sender = envelope.mail_from or ""
        reports: list[RecipientReport] = []
        for index, rcpt in enumerate(envelope.rcpt_tos):
            notify = envelope.notify[index] if index < len(envelope.notify) else None
            orcpt = envelope.orcpt[index] if index < len(envelope.orcpt) else None
            pending = _Pending(
                qid,
                rcpt,
                sender,
                self._trace(session, envelope, rcpt, orcpt, qid) + raw,
                raw,
                notify,
                orcpt,
                envelope.envid,
                envelope.ret,
                arrival,
            )
            bounce = self.faults.take(f"bounce:{rcpt}", "bounce:*")
            if bounce is not None:
                if _wants(notify, "FAILURE"):
                    reports.append(
                        RecipientReport(
                            rcpt,
                            "failed",
                            bounce.status,
                            orcpt,
                            f"550 {bounce.status} {_diag(bounce.status)}",
                        )
                    )
                continue
            delay = self.faults.take(f"delay:{rcpt}", "delay:*")
            if delay is not None:
                await asyncio.to_thread(self._spool_write, pending)
                self._schedule(pending, delay.delay_s)
                if _wants(notify, "DELAY"):
                    reports.append(
                        RecipientReport(
                            rcpt, "delayed", "4.4.7", orcpt, "450 4.4.7 Delivery delayed (remise differee)"
                        )
                    )
                continue
            await asyncio.to_thread(self._deliver_local, rcpt, pending.raw)
            if notify is not None and "SUCCESS" in notify:
                reports.append(
                    RecipientReport(rcpt, "delivered", "2.0.0", orcpt, "250 2.0.0 Delivered (remis)")
                )
        if reports:
            await self._report(sender, raw, reports, envelope.envid, envelope.ret, arrival)
        return f"250 2.0.0 OK queued as {qid}"

    def _deliver_local(self, address: str, raw: bytes) -> int:
        if not self.store.has_mailbox(address):
            if not self.is_patient_address(address):
                raise StoreError("NONEXISTENT", "Boite aux lettres inconnue")
            self.store.create_mailbox(address)
        return self.store.deliver(address, raw)

    async def _report(
        self,
        sender: str,
        original: bytes,
        reports: list[RecipientReport],
        envid: str | None,
        ret: str | None,
        arrival: datetime,
    ) -> None:
        try:
            target = canonical_address(sender)
        except StoreError:
            return
        if not self.store.has_mailbox(target):
            return
        dsn = build_dsn(
            reporting_mta=self.hostname,
            to=target,
            original=original,
            reports=reports,
            envelope_id=envid,
            arrival=arrival,
            return_full=ret == "FULL",
        )
        # A report has the null reverse-path (RFC 3464 §2), hence the empty Return-Path.
        await asyncio.to_thread(self.store.deliver, target, b"Return-Path: <>\r\n" + dsn.as_bytes())

    # ------------------------------------------------------------------------------------- delayed delivery

    def _schedule(self, pending: _Pending, delay_s: float) -> None:
        task = asyncio.create_task(self._deliver_later(pending, delay_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_later(self, pending: _Pending, delay_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        if delay_s > 0:
            self._sleeping.add(task)
            try:
                await self.faults.sleep(delay_s)
            finally:
                self._sleeping.discard(task)
        report: RecipientReport | None = None
        try:
            await asyncio.to_thread(self._deliver_local, pending.recipient, pending.raw)
        except StoreError:
            if _wants(pending.notify, "FAILURE"):
                report = RecipientReport(
                    pending.recipient, "failed", "5.1.1", pending.orcpt, "550 5.1.1 Unknown mailbox"
                )
        except OSError:
            log.exception("MSSante sandbox: delayed delivery failed, kept in the spool for the next start")
            return
        else:
            if pending.notify is not None and "SUCCESS" in pending.notify:
                report = RecipientReport(
                    pending.recipient, "delivered", "2.0.0", pending.orcpt, "250 2.0.0 Delivered (remis)"
                )
        if report is not None:
            await self._report(
                pending.sender, pending.original, [report], pending.envid, pending.ret, pending.arrival
            )
        await asyncio.to_thread(self._spool_remove, pending)

    def _spool_files(self, pending: _Pending) -> tuple[Path, Path, Path]:
        """Message as delivered, message as received, metadata (written last: the entry is complete then)."""
        base = f"{pending.queue_id}-{canonical_address(pending.recipient)}"
        return self.spool / f"{base}.eml", self.spool / f"{base}.orig", self.spool / f"{base}.json"

    def _spool_write(self, pending: _Pending) -> None:
        eml, orig, meta_file = self._spool_files(pending)
        eml.write_bytes(pending.raw)
        orig.write_bytes(pending.original)
        meta = {
            "queue_id": pending.queue_id,
            "recipient": pending.recipient,
            "sender": pending.sender,
            "notify": sorted(pending.notify) if pending.notify is not None else None,
            "orcpt": pending.orcpt,
            "envid": pending.envid,
            "ret": pending.ret,
            "arrival": pending.arrival.isoformat(),
        }
        tmp = meta_file.with_name(meta_file.name + ".tmp")
        tmp.write_text(json.dumps(meta), "utf-8")
        tmp.replace(meta_file)

    def _spool_remove(self, pending: _Pending) -> None:
        eml, orig, meta_file = self._spool_files(pending)
        for file in (meta_file, eml, orig):
            file.unlink(missing_ok=True)

    def _load_spool(self) -> list[_Pending]:
        found = []
        for meta_file in sorted(self.spool.glob("*.json")):
            meta = json.loads(meta_file.read_text("utf-8"))
            base = meta_file.name.removesuffix(".json")
            found.append(
                _Pending(
                    meta["queue_id"],
                    meta["recipient"],
                    meta["sender"],
                    (self.spool / f"{base}.eml").read_bytes(),
                    (self.spool / f"{base}.orig").read_bytes(),
                    frozenset(meta["notify"]) if meta["notify"] is not None else None,
                    meta["orcpt"],
                    meta["envid"],
                    meta["ret"],
                    datetime.fromisoformat(meta["arrival"]),
                )
            )
        return found

    # ------------------------------------------------------------------------------------- admin operations

    def set_fault(self, fault: MssFault) -> None:
        if fault.recipient is not None:
            fault = fault.model_copy(update={"recipient": canonical_address(fault.recipient)})
        self.faults.set(fault, key=fault.key(), count=fault.count, expires_in_s=fault.expires_in_s)

    def clear_faults(self) -> None:
        """Remove every fault; deliveries waiting out an injected delay go through at once."""
        self.faults.clear()

    async def deliver(self, mailbox: str, raw: bytes) -> int:
        """Drop a message arriving from outside the sandbox into ``mailbox``; returns its UID."""
        address = canonical_address(mailbox)
        if not self.accepts(address):
            raise StoreError("NONEXISTENT", f"Boite aux lettres inconnue : {address}")
        if len(raw) > self.max_message_bytes:
            raise StoreError("TOOBIG", f"Message trop volumineux (> {self.max_message_bytes} octets)")
        raw = re.sub(rb"\r?\n", b"\r\n", raw)
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
        if headers.get("From") is None:
            raise StoreError("PARSE", "Message RFC 5322 invalide : en-tete From absent")
        sender = parseaddr(str(headers.get("Return-Path") or headers["From"]))[1]
        trace = (
            f"Return-Path: <{sender}>\r\nReceived: from external (sandbox admin)\r\n\tby {self.hostname} "
            f"(OpenSegur MSSante sandbox) with ESMTPS id {secrets.token_hex(6).upper()}\r\n\tfor <{address}>; "
            f"{format_datetime(datetime.now(_PARIS))}\r\n"
        ).encode("ascii", "replace")
        if headers.get("Return-Path") is not None:
            raw = re.sub(rb"(?im)\AReturn-Path:[^\r\n]*\r\n", b"", raw)
        return await asyncio.to_thread(self._deliver_local, address, trace + raw)

    async def read(self, mailbox: str, uid: int, folder: str = INBOX) -> dict[str, Any]:
        """The recipient opens the message: ``\\Seen``, and a ``displayed`` MDN when the sender asked for one."""
        address = canonical_address(mailbox)
        raw = await asyncio.to_thread(self.store.read, address, folder, uid)
        await asyncio.to_thread(self.store.store_flags, address, folder, [uid], "S", "+")
        headers = BytesHeaderParser(policy=policy.default).parsebytes(raw)
        notify_to = headers.get("Disposition-Notification-To")
        result: dict[str, Any] = {"mailbox": address, "uid": uid, "seen": True, "mdn": None}
        if not notify_to:
            return result
        if not await asyncio.to_thread(self.store.mark_mdn_sent, address, folder, uid):
            result["mdn"] = "already_sent"
            return result
        original = {
            "Message-ID": str(headers.get("Message-ID", "") or ""),
            "Subject": str(headers.get("Subject", "") or ""),
            "Disposition-Notification-To": str(notify_to),
            "Original-Recipient": str(headers.get("Original-Recipient", "") or ""),
        }
        subject = " ".join(original["Subject"].split())
        mdn = build_mdn(
            original,
            from_addr=address,
            final_recipient=address,
            disposition="displayed",
            automatic=False,
            reporting_ua="OpenSegur MSSante sandbox",
            text_fr=f"Votre message « {subject} » a été affiché par {address}.",
        )
        target = parseaddr(str(notify_to))[1]
        try:
            target = canonical_address(target)
        except StoreError:
            result["mdn"] = "invalid_address"
            return result
        if not self.accepts(target):
            result["mdn"] = "external"  # would leave the sandbox: not sent
            return result
        await asyncio.to_thread(self._deliver_local, target, b"Return-Path: <>\r\n" + mdn.as_bytes())
        result["mdn"] = "delivered"
        result["mdn_to"] = target
        return result

    def inspect(self, mailbox: str, folder: str | None = None) -> dict[str, Any]:
        """Read-only view of a mailbox for tests and the admin API (no flag is changed)."""
        address = canonical_address(mailbox)
        folders = [folder] if folder else self.store.folders(address)
        out: dict[str, Any] = {"mailbox": address, "folders": {}}
        for name in folders:
            state = self.store.folder(address, name)
            out["folders"][self.store.folder_name(name)] = [
                _summary(m.uid, m.path.read_bytes(), m) for m in state.messages
            ]
        return out


def _wants(notify: frozenset[str] | None, kind: str) -> bool:
    return notify is None or kind in notify


def _diag(status: str) -> str:
    return {
        "5.1.1": "Unknown mailbox (boite aux lettres inconnue)",
        "5.2.2": "Mailbox full (boite aux lettres pleine)",
    }.get(status, "Delivery failed (echec de remise, panne injectee)")


def _summary(uid: int, raw: bytes, stored: Any) -> dict[str, Any]:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)

    def text(name: str) -> str | None:
        value = msg.get(name)
        return " ".join(str(value).split()) if value is not None else None

    attachments = []
    with contextlib.suppress(Exception):
        attachments = [p.get_filename() or p.get_content_type() for p in msg.iter_attachments()]
    return {
        "uid": uid,
        "message_id": text("Message-ID"),
        "from": text("From"),
        "to": text("To"),
        "cc": text("Cc"),
        "subject": text("Subject"),
        "date": text("Date"),
        "content_type": msg.get_content_type(),
        "size": stored.size,
        "internal_date": stored.internal_date.isoformat(),
        "flags": stored.imap_flags,
        "disposition_notification_to": text("Disposition-Notification-To"),
        "x_mss": {k: " ".join(str(v).split()) for k, v in msg.items() if k.upper().startswith("X-MSS-")},
        "attachments": attachments,
    }
