"""SMTP submission (transport/smtp.py and the SmtpMailSender connector) against aiosmtpd servers started here."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from opensegur.connectors.mss_smtp import SmtpMailSender
from opensegur.flows.mssante_ports import MailUnavailableError
from opensegur.security.pki import TestPki, ensure_test_pki, server_ssl_context
from opensegur.transactions.mss_mail import SmtpEnvelope, smtp_envelope
from opensegur.transport.smtp import (
    SmtpPermanentError,
    SmtpRetryableError,
    SmtpSettings,
    send_mail,
)
from tests.ports import free_port

SENDER = "dpi.cardio@ch-test.mssante.fr"
DOCTOR = "jean.medecin@test.mssante.fr"
OTHER = "claire.medecin@test.mssante.fr"
UNKNOWN = "inconnu@test.mssante.fr"
BUSY = "occupe@test.mssante.fr"
_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")


def message(to: tuple[str, ...] = (DOCTOR,)) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to)
    msg["Subject"] = "Compte rendu"
    msg["Message-ID"] = "<cr-1@ch-test.mssante.fr>"
    msg.set_content("Bonjour,\nveuillez trouver le compte rendu.\n")
    return msg


@dataclass
class Recorder:
    """aiosmtpd handler: keeps what it received, refuses some recipients, may defer everything."""

    dsn: bool = False
    defer_mail: bool = False
    received: list[dict[str, Any]] = field(default_factory=list)
    dsn_mail_params: list[list[str]] = field(default_factory=list)
    dsn_rcpt_params: list[list[str]] = field(default_factory=list)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]] if self.dsn else responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.defer_mail:
            return "421 4.3.2 Service temporairement indisponible"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == UNKNOWN:
            return "550 5.1.1 Destinataire inconnu"
        if address == BUSY:
            return "450 4.2.1 Boite pleine, reessayez"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "data": envelope.original_content,
                "mail_options": list(envelope.mail_options),
                "login": session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None,
                "peer_cert": server.transport.get_extra_info("peercert") if server.transport else None,
            }
        )
        return "250 2.0.0 Ok: queued"


def _split(arg: str | None, names: tuple[str, ...]) -> tuple[str | None, list[str]]:
    if arg is None:
        return None, []
    kept: list[str] = []
    taken: list[str] = []
    for word in arg.split(" "):
        (taken if word.split("=", 1)[0].upper() in names else kept).append(word)
    return " ".join(kept), taken


class DsnSMTP(SMTP):
    """aiosmtpd refuses parameters it does not implement; this one takes the RFC 3461 ones and records them."""

    async def smtp_MAIL(self, arg: str | None) -> None:
        arg, taken = _split(arg, _DSN_MAIL)
        self.event_handler.dsn_mail_params.append(taken)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        arg, taken = _split(arg, _DSN_RCPT)
        self.event_handler.dsn_rcpt_params.append(taken)
        await super().smtp_RCPT(arg)


class RecordingController(Controller):
    def factory(self) -> SMTP:
        return DsnSMTP(self.handler, **self.SMTP_kwargs)


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"bal", b"s3cret")
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Running:
    handler: Recorder
    port: int


def _start(handler: Recorder, **kwargs: Any) -> tuple[Controller, Running]:
    port = free_port()
    controller = RecordingController(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, Running(handler, port)


@pytest.fixture
def plain_server() -> Iterator[Running]:
    controller, running = _start(Recorder(dsn=True))
    yield running
    controller.stop()


@pytest.fixture
def no_dsn_server() -> Iterator[Running]:
    controller, running = _start(Recorder(dsn=False))
    yield running
    controller.stop()


@pytest.fixture
def starttls_server(pki: TestPki) -> Iterator[Running]:
    controller, running = _start(
        Recorder(dsn=True),
        tls_context=server_ssl_context(pki, require_client_cert=True),
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
    yield running
    controller.stop()


def plain(port: int, **kwargs: Any) -> SmtpSettings:
    return SmtpSettings("127.0.0.1", port, "plain", local_hostname="pfi.ch-test.fr", **kwargs)


# ------------------------------------------------------------------------------------------------ transport


async def test_plain_send_with_dsn_parameters_seen_by_server(plain_server: Running) -> None:
    msg = message((DOCTOR, OTHER))
    envelope = smtp_envelope(msg, return_receipt=True)
    result = await send_mail(plain(plain_server.port), msg.as_bytes(), envelope)

    assert result.accepted == [DOCTOR, OTHER] and result.refused == {}
    assert result.dsn_supported and result.dropped_options == ()
    [got] = plain_server.handler.received
    assert got["from"] == SENDER and got["to"] == [DOCTOR, OTHER]
    assert b"Subject: Compte rendu" in got["data"]
    assert plain_server.handler.dsn_mail_params == [["RET=HDRS", "ENVID=<cr-1@ch-test.mssante.fr>"]]
    assert plain_server.handler.dsn_rcpt_params == [["NOTIFY=SUCCESS,FAILURE,DELAY"]] * 2
    assert any(o.startswith("SIZE=") for o in got["mail_options"])  # smtplib adds SIZE when offered


async def test_server_without_dsn_gets_no_dsn_parameters_and_result_says_so(no_dsn_server: Running) -> None:
    msg = message()
    result = await send_mail(
        plain(no_dsn_server.port), msg.as_bytes(), smtp_envelope(msg, return_receipt=True)
    )

    assert result.accepted == [DOCTOR]
    assert not result.dsn_supported
    assert set(result.dropped_options) == {
        "RET=HDRS",
        "ENVID=<cr-1@ch-test.mssante.fr>",
        "NOTIFY=SUCCESS,FAILURE,DELAY",
    }
    assert no_dsn_server.handler.dsn_mail_params == [[]] and no_dsn_server.handler.dsn_rcpt_params == [[]]
    assert len(no_dsn_server.handler.received) == 1


async def test_refused_recipient_is_returned_not_raised(plain_server: Running) -> None:
    msg = message((DOCTOR, UNKNOWN, BUSY))
    result = await send_mail(
        plain(plain_server.port), msg.as_bytes(), smtp_envelope(msg, return_receipt=False)
    )

    assert result.accepted == [DOCTOR]
    assert result.refused == {
        UNKNOWN: (550, "5.1.1 Destinataire inconnu"),
        BUSY: (450, "4.2.1 Boite pleine, reessayez"),
    }
    assert plain_server.handler.received[0]["to"] == [DOCTOR]


async def test_every_recipient_refused_5xx_is_permanent(plain_server: Running) -> None:
    msg = message((UNKNOWN,))
    with pytest.raises(SmtpPermanentError) as info:
        await send_mail(plain(plain_server.port), msg.as_bytes(), smtp_envelope(msg, return_receipt=False))
    assert info.value.code == 550 and "Destinataire inconnu" in info.value.reply
    assert plain_server.handler.received == []


async def test_every_recipient_refused_with_a_4xx_is_retryable(plain_server: Running) -> None:
    msg = message((UNKNOWN, BUSY))
    with pytest.raises(SmtpRetryableError, match="450"):
        await send_mail(plain(plain_server.port), msg.as_bytes(), smtp_envelope(msg, return_receipt=False))


async def test_421_is_retryable(plain_server: Running) -> None:
    plain_server.handler.defer_mail = True
    msg = message()
    with pytest.raises(SmtpRetryableError, match="421"):
        await send_mail(plain(plain_server.port), msg.as_bytes(), smtp_envelope(msg, return_receipt=False))


async def test_silent_server_times_out_as_retryable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP connection in the backlog, never greets
        port = listener.getsockname()[1]
        msg = message()
        with pytest.raises(SmtpRetryableError, match="unreachable"):
            await send_mail(
                plain(port, timeout=0.5), msg.as_bytes(), smtp_envelope(msg, return_receipt=False)
            )


async def test_connection_refused_is_retryable() -> None:
    msg = message()
    with pytest.raises(SmtpRetryableError, match="unreachable"):
        await send_mail(plain(free_port()), msg.as_bytes(), smtp_envelope(msg, return_receipt=False))


async def test_starttls_with_client_certificate_and_auth(starttls_server: Running, pki: TestPki) -> None:
    settings = SmtpSettings(
        "localhost",
        starttls_server.port,
        "starttls",
        username="bal",
        password="s3cret",
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        ca=pki.ca_cert,
        local_hostname="pfi.ch-test.fr",
    )
    msg = message()
    result = await send_mail(settings, msg.as_bytes(), smtp_envelope(msg, return_receipt=True))

    assert result.accepted == [DOCTOR] and result.dsn_supported
    [got] = starttls_server.handler.received
    assert got["login"] == b"bal"
    subject = dict(pair for rdn in got["peer_cert"]["subject"] for pair in rdn)
    assert subject["commonName"].endswith("AUTH_CLI")  # the establishment's client certificate was presented


async def test_starttls_wrong_password_is_retryable(starttls_server: Running, pki: TestPki) -> None:
    settings = SmtpSettings(
        "localhost",
        starttls_server.port,
        "starttls",
        username="bal",
        password="wrong",
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        ca=pki.ca_cert,
        local_hostname="pfi.ch-test.fr",
    )
    msg = message()
    with pytest.raises(SmtpRetryableError, match="refused the credentials: 535"):
        await send_mail(settings, msg.as_bytes(), smtp_envelope(msg, return_receipt=False))
    assert starttls_server.handler.received == []


async def test_starttls_untrusted_server_certificate_is_refused(
    starttls_server: Running, tmp_path: Path
) -> None:
    other_ca = ensure_test_pki(tmp_path / "other")
    settings = SmtpSettings(
        "localhost", starttls_server.port, "starttls", ca=other_ca.ca_cert, local_hostname="pfi.ch-test.fr"
    )
    msg = message()
    with pytest.raises(SmtpRetryableError, match="TLS"):
        await send_mail(settings, msg.as_bytes(), smtp_envelope(msg, return_receipt=False))


async def test_starttls_not_offered_is_never_downgraded(plain_server: Running, pki: TestPki) -> None:
    settings = SmtpSettings(
        "localhost", plain_server.port, "starttls", ca=pki.ca_cert, local_hostname="pfi.ch-test.fr"
    )
    msg = message()
    with pytest.raises(SmtpRetryableError, match="STARTTLS"):
        await send_mail(settings, msg.as_bytes(), smtp_envelope(msg, return_receipt=False))
    assert plain_server.handler.received == []


async def test_implicit_tls(pki: TestPki) -> None:
    context = server_ssl_context(pki, require_client_cert=False)
    controller, running = _start(Recorder(dsn=True), ssl_context=context)
    try:
        settings = SmtpSettings(
            "localhost", running.port, "tls", ca=pki.ca_cert, local_hostname="pfi.ch-test.fr"
        )
        msg = message()
        result = await send_mail(settings, msg.as_bytes(), smtp_envelope(msg, return_receipt=False))
    finally:
        controller.stop()
    assert result.accepted == [DOCTOR] and len(running.handler.received) == 1


def test_plain_is_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SmtpSettings("smtp.mssante.fr", 25, "plain")
    assert SmtpSettings("::1", 25, "plain").security == "plain"


async def test_envelope_without_recipient_is_refused(plain_server: Running) -> None:
    with pytest.raises(ValueError, match="recipient"):
        await send_mail(plain(plain_server.port), b"Subject: x\r\n\r\n", SmtpEnvelope(SENDER, ()))


# ------------------------------------------------------------------------------------------------ connector


async def test_sender_connector_maps_results(plain_server: Running) -> None:
    sender = SmtpMailSender("127.0.0.1", plain_server.port, security="plain", local_hostname="pfi.ch-test.fr")
    msg = message((DOCTOR, UNKNOWN))
    result = await sender.send(msg.as_bytes(), smtp_envelope(msg, return_receipt=True))
    assert result.accepted == [DOCTOR]
    assert result.refused == {UNKNOWN: "550 5.1.1 Destinataire inconnu"}

    only_unknown = message((UNKNOWN,))
    result = await sender.send(only_unknown.as_bytes(), smtp_envelope(only_unknown, return_receipt=False))
    assert result.accepted == [] and result.refused == {UNKNOWN: "550 5.1.1 Destinataire inconnu"}


async def test_sender_connector_raises_unavailable_on_421(plain_server: Running) -> None:
    plain_server.handler.defer_mail = True
    sender = SmtpMailSender("127.0.0.1", plain_server.port, security="plain", local_hostname="pfi.ch-test.fr")
    msg = message()
    with pytest.raises(MailUnavailableError, match="indisponible"):
        await sender.send(msg.as_bytes(), smtp_envelope(msg, return_receipt=False))


async def test_sender_connector_raises_unavailable_on_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = SmtpMailSender(
            "127.0.0.1", listener.getsockname()[1], security="plain", timeout=0.5, local_hostname="x.test"
        )
        msg = message()
        with pytest.raises(MailUnavailableError):
            await asyncio.wait_for(sender.send(msg.as_bytes(), smtp_envelope(msg, return_receipt=False)), 10)


def test_tls_context_is_verifying(pki: TestPki) -> None:
    from opensegur.transport.smtp import tls_client_context

    context = tls_client_context(pki.ca_cert, pki.client_cert, pki.client_key)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
