"""MailSender over SMTP submission to the MSSanté operator (``transport/smtp.py``).

Mapping to the port: accepted and refused recipients come back in :class:`MailSendResult` (refusals as
``"<code> <server text>"``, e.g. ``"550 5.1.1 unknown user"``; a partial send may mix 4xx and 5xx refusals, the
code tells the caller which ones are worth another try). A message refused as a whole with a 5xx (MAIL FROM, DATA,
or every recipient) is reported as every recipient refused with that reply: no retry will change it. Anything
that did not get the message accepted and may succeed later raises :class:`MailUnavailableError`.

Operators accept only the authenticated mailbox as envelope sender: a message leaving from another of the
hospital's mailboxes (an MDN answered from the organisational mailbox that received the mail) logs in with that
mailbox's own credentials (``mailbox_credentials``, the ones the platform polls it with).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

from opensegur.flows.mssante_ports import MailSendResult, MailUnavailableError
from opensegur.transactions.mss_mail import SmtpEnvelope
from opensegur.transport.smtp import (
    SmtpPermanentError,
    SmtpRetryableError,
    SmtpSecurity,
    SmtpSettings,
    send_mail,
)

__all__ = ["SmtpMailSender"]

log = logging.getLogger(__name__)


class SmtpMailSender:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: SmtpSecurity = "starttls",
        username: str | None = None,
        password: str | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        ca: Path | None = None,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        mailbox_credentials: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = SmtpSettings(
            host=host,
            port=port,
            security=security,
            username=username,
            password=password,
            client_cert=client_cert,
            client_key=client_key,
            ca=ca,
            timeout=timeout,
            local_hostname=local_hostname,
        )
        self._mailbox_credentials = {box.lower(): pw for box, pw in (mailbox_credentials or {}).items()}

    def settings_for(self, mail_from: str) -> SmtpSettings:
        """The settings to submit a message whose envelope sender is ``mail_from``."""
        password = self._mailbox_credentials.get(mail_from.lower())
        if password is None or (self.settings.username or "").lower() == mail_from.lower():
            return self.settings
        return dataclasses.replace(self.settings, username=mail_from, password=password)

    async def send(self, raw: bytes, envelope: SmtpEnvelope) -> MailSendResult:
        try:
            result = await send_mail(self.settings_for(envelope.mail_from), raw, envelope)
        except SmtpRetryableError as exc:
            raise MailUnavailableError(
                f"Opérateur MSSanté indisponible, nouvel essai plus tard : {exc}", outage=True
            ) from exc
        except SmtpPermanentError as exc:
            reply = f"{exc.code} {exc.reply}"
            return MailSendResult(accepted=[], refused=dict.fromkeys(envelope.rcpt_to, reply))
        if result.dropped_options:
            # Addresses and content stay out of the logs; the options say only what was asked of the server.
            log.warning(
                "SMTP server %s lacks an extension: sent without %s (no delivery status will come back)",
                self.settings.host,
                ", ".join(result.dropped_options),
            )
        return MailSendResult(
            accepted=list(result.accepted),
            refused={rcpt: f"{code} {text}" for rcpt, (code, text) in result.refused.items()},
        )
