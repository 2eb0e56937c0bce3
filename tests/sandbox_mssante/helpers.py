"""Clients of the MSSanté sandbox tests: smtplib and imapclient, run in threads beside the operator's loop."""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import make_msgid

from imapclient import IMAPClient

from opensegur.sandbox.mssante import MssOperator

PASSWORD = "bac-a-sable"
DPI = "dpi@hopitala.mssante.fr"
RADIO = "radiologie@hopitala.mssante.fr"
DOCTOR = "thomas.eric@medecin.mssante.fr"
# Valid matricule (key 89) of the ANS examples; the same with a wrong key.
PATIENT = "279035121518989@patient.mssante.fr"
PATIENT_BAD_KEY = "279035121518988@patient.mssante.fr"


def mail(
    sender: str, to: Sequence[str], subject: str = "Compte rendu", *, notify_to: str | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="hopitala.mssante.fr")
    if notify_to:
        msg["Disposition-Notification-To"] = notify_to
    msg.set_content("Bonjour,\nveuillez trouver le compte rendu.\n")
    return msg


def send(
    op: MssOperator,
    msg: EmailMessage,
    *,
    login: str = DPI,
    password: str = PASSWORD,
    to: Sequence[str] | None = None,
    envelope_from: str | None = None,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(op.host, op.smtp_port, timeout=10) as smtp:
        smtp.login(login, password)
        return smtp.send_message(
            msg,
            from_addr=envelope_from or login,
            to_addrs=to,
            mail_options=list(mail_options),
            rcpt_options=list(rcpt_options),
        )


def imap(op: MssOperator, login: str, password: str = PASSWORD) -> IMAPClient:
    client = IMAPClient(op.host, port=op.imap_port, ssl=False, timeout=10)
    client.login(login, password)
    return client


def inbox(op: MssOperator, login: str, folder: str = "INBOX") -> list[bytes]:
    """Every message of a folder, read with BODY.PEEK[] (flags untouched)."""
    with imap(op, login) as client:
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        data = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return [data[u][b"BODY[]"] for u in sorted(data)]
