"""SMTP submission of one ready-made message with stdlib ``smtplib``, run in a worker thread.

Decisions:
- Security is chosen explicitly: ``tls`` (implicit TLS, port 465), ``starttls`` (587; refused if the server does not
  offer STARTTLS, never downgraded) or ``plain``, allowed on loopback only (tests, a local relay).
- Outcome classes: recipients refused one by one are *returned* with the server's reply; connection errors,
  timeouts, TLS or authentication failures and 4xx replies raise :class:`SmtpRetryableError` (the message was not
  accepted, nothing is lost by trying again later); a 5xx on MAIL FROM / DATA, or a 5xx for every recipient,
  raises :class:`SmtpPermanentError` with the server text.
- RFC 3461 DSN parameters (``RET``, ``ENVID``, ``NOTIFY``, ``ORCPT``) and ``SMTPUTF8`` / ``BODY=`` are sent only if
  the server advertises the matching extension; dropped ones are listed in the result so the caller knows no
  delivery status will come back. ``SIZE=`` is added by ``smtplib`` itself when the server offers SIZE.
"""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from opensegur.errors import OpenSegurError
from opensegur.transactions.mss_mail import SmtpEnvelope

__all__ = [
    "SmtpError",
    "SmtpPermanentError",
    "SmtpResult",
    "SmtpRetryableError",
    "SmtpSecurity",
    "SmtpSettings",
    "is_loopback",
    "send_mail",
    "send_mail_sync",
    "tls_client_context",
]

SmtpSecurity = Literal["plain", "starttls", "tls"]

# ESMTP extension (lower-case, as smtplib keys them) that each MAIL / RCPT parameter needs.
_MAIL_OPTION_EXTENSION = {
    "RET": "dsn",
    "ENVID": "dsn",
    "SMTPUTF8": "smtputf8",
    "BODY": "8bitmime",
    "SIZE": "size",
}
_RCPT_OPTION_EXTENSION = {"NOTIFY": "dsn", "ORCPT": "dsn"}


class SmtpError(OpenSegurError):
    """The message was not accepted for any recipient."""


class SmtpRetryableError(SmtpError):
    """Server unreachable, timed out, 4xx, TLS or authentication failure: the same message may be sent again later."""


class SmtpPermanentError(SmtpError):
    """The server refused the message itself (5xx): sending it again unchanged will fail the same way."""

    def __init__(self, message: str, code: int, reply: str) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: SmtpSecurity = "starttls"
    username: str | None = None
    password: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    ca: Path | None = None
    timeout: float = 30.0
    local_hostname: str | None = None  # EHLO name; smtplib's default asks the resolver for our FQDN

    def __post_init__(self) -> None:
        if self.security not in ("plain", "starttls", "tls"):
            raise ValueError(f"unknown SMTP security mode {self.security!r}")
        if self.security == "plain" and not is_loopback(self.host):
            raise ValueError(f"plain SMTP (no TLS) is allowed on loopback only, not to {self.host!r}")
        if (self.username is None) != (self.password is None):
            raise ValueError("SMTP username and password go together")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("an SMTP client key needs its certificate")


@dataclass
class SmtpResult:
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # recipient -> (code, server text)
    dsn_supported: bool = False
    dropped_options: tuple[str, ...] = ()  # parameters not sent because the server lacks the extension


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_client_context(
    ca: Path | None, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext:
    """Verifying client context: the given CA bundle (IGC-Santé in production) or the system store."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    if client_cert is not None:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return context


def _reply_text(resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
    return " ".join(text.split())


def _supported(
    options: Sequence[str], extensions: dict[str, str], table: dict[str, str]
) -> tuple[list[str], list[str]]:
    kept: list[str] = []
    dropped: list[str] = []
    for option in options:
        needed = table.get(option.split("=", 1)[0].upper())
        (kept if needed is None or needed in extensions else dropped).append(option)
    return kept, dropped


def _open(settings: SmtpSettings) -> smtplib.SMTP:
    context = (
        tls_client_context(settings.ca, settings.client_cert, settings.client_key)
        if settings.security != "plain"
        else None
    )
    client: smtplib.SMTP
    if settings.security == "tls":
        client = smtplib.SMTP_SSL(
            settings.host,
            settings.port,
            local_hostname=settings.local_hostname,
            timeout=settings.timeout,
            context=context,
        )
    else:
        client = smtplib.SMTP(
            settings.host, settings.port, local_hostname=settings.local_hostname, timeout=settings.timeout
        )
    try:
        client.ehlo()
        if settings.security == "starttls":
            if not client.has_extn("starttls"):
                raise SmtpRetryableError(
                    f"{settings.host}:{settings.port} does not offer STARTTLS; refusing to send in clear"
                )
            client.starttls(context=context)
            client.ehlo()
        if settings.username is not None and settings.password is not None:
            client.login(settings.username, settings.password)
    except BaseException:
        client.close()
        raise
    return client


def send_mail_sync(settings: SmtpSettings, raw: bytes, envelope: SmtpEnvelope) -> SmtpResult:
    """Blocking send; see the module docstring for what is returned and what is raised."""
    if not envelope.rcpt_to:
        raise ValueError("SMTP envelope without any recipient")
    where = f"{settings.host}:{settings.port}"
    try:
        client = _open(settings)
    except smtplib.SMTPAuthenticationError as exc:
        raise SmtpRetryableError(
            f"{where} refused the credentials: {exc.smtp_code} {_reply_text(exc.smtp_error)}"
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise SmtpRetryableError(f"{where}: {exc}") from exc
    except smtplib.SMTPResponseException as exc:
        raise SmtpRetryableError(f"{where} answered {exc.smtp_code} {_reply_text(exc.smtp_error)}") from exc
    except ssl.SSLError as exc:
        raise SmtpRetryableError(f"TLS with {where} failed: {exc}") from exc
    except (OSError, smtplib.SMTPException) as exc:  # includes timeouts and refused connections
        raise SmtpRetryableError(f"{where} unreachable: {exc!r}") from exc

    try:
        extensions = client.esmtp_features if client.does_esmtp else {}
        mail_options, dropped_mail = _supported(envelope.mail_options, extensions, _MAIL_OPTION_EXTENSION)
        rcpt_options, dropped_rcpt = _supported(envelope.rcpt_options, extensions, _RCPT_OPTION_EXTENSION)
        try:
            refused_raw = client.sendmail(
                envelope.mail_from, list(envelope.rcpt_to), raw, mail_options, rcpt_options
            )
        except smtplib.SMTPRecipientsRefused as exc:
            refused = {rcpt: (code, _reply_text(resp)) for rcpt, (code, resp) in exc.recipients.items()}
            summary = "; ".join(f"{rcpt}: {code} {text}" for rcpt, (code, text) in refused.items())
            if all(code >= 500 for code, _ in refused.values()) and len(refused) == len(envelope.rcpt_to):
                first_code, first_text = next(iter(refused.values()))
                raise SmtpPermanentError(
                    f"{where} refused every recipient: {summary}", first_code, first_text
                ) from exc
            raise SmtpRetryableError(f"{where} refused the recipients for now: {summary}") from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            text = _reply_text(exc.smtp_error)
            if exc.smtp_code >= 500:
                raise SmtpPermanentError(
                    f"{where} refused the message: {exc.smtp_code} {text}", exc.smtp_code, text
                ) from exc
            raise SmtpRetryableError(f"{where} deferred the message: {exc.smtp_code} {text}") from exc
        except smtplib.SMTPResponseException as exc:
            raise SmtpRetryableError(
                f"{where} answered {exc.smtp_code} {_reply_text(exc.smtp_error)}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise SmtpRetryableError(f"{where} failed during the transaction: {exc!r}") from exc
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()

    refused = {rcpt: (code, _reply_text(resp)) for rcpt, (code, resp) in refused_raw.items()}
    return SmtpResult(
        accepted=[r for r in envelope.rcpt_to if r not in refused],
        refused=refused,
        dsn_supported="dsn" in extensions,
        dropped_options=tuple(dropped_mail + dropped_rcpt),
    )


async def send_mail(settings: SmtpSettings, raw: bytes, envelope: SmtpEnvelope) -> SmtpResult:
    """:func:`send_mail_sync` in a worker thread, so the event loop keeps serving while the operator answers."""
    return await asyncio.to_thread(send_mail_sync, settings, raw, envelope)
