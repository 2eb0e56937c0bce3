"""The inbound MSSanté path against a real Dovecot: IMAP reader → poll → integration → MDM over MLLP to a DPI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date

import pytest
from sqlalchemy import func, select

from opensegur.connectors.dpi_mllp import MllpDpiSender
from opensegur.connectors.mss_imap import ImapMailboxReader
from opensegur.flows import mss_inbound
from opensegur.flows.jobs import JobKind
from opensegur.flows.mssante_ports import MailSendResult
from opensegur.flows.worker import WorkerPool
from opensegur.store.db import Database
from opensegur.store.jobs import RetryPolicy
from opensegur.store.models import Document, Mail, Patient, PatientIdentifier, Structure
from opensegur.transactions.hl7v2 import parse
from opensegur.transactions.hl7v2_message import get_field, segments
from opensegur.transactions.mdn import parse_mdn
from opensegur.transactions.mss_mail import SmtpEnvelope
from tests.mssante.helpers import CR_IMG, DOCTOR, INS, DpiStub, document_mail, obx_cda
from tests.transport.dovecot import DovecotServer, running_dovecot

BOX = "radiologie@ch-test.mssante.fr"
PASSWORD = "mot-de-passe-de-test"
PROCESSED = "OpenSegur/Traites"


@dataclass
class RecordingMailer:
    """The SMTP side (Dovecot has none): keeps the MDNs the flow sends back."""

    sent: list[tuple[bytes, SmtpEnvelope]] = field(default_factory=list)

    async def send(self, raw: bytes, envelope: SmtpEnvelope) -> MailSendResult:
        self.sent.append((raw, envelope))
        return MailSendResult(accepted=list(envelope.rcpt_to))


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    with running_dovecot() as server:
        server.add_mailbox(BOX, PASSWORD)
        yield server


@pytest.fixture
async def dpi() -> AsyncIterator[DpiStub]:
    stub = DpiStub()
    await stub.start()
    yield stub
    await stub.stop()


def server_folder(server: DovecotServer, path: str) -> str:
    """The server's name of a ``/``-separated folder path (Dovecot's Maildir uses ``.`` as its delimiter)."""
    client = server.client(BOX)
    try:
        for _flags, delimiter, name in client.list_folders():
            sep = delimiter.decode() if isinstance(delimiter, bytes) else str(delimiter)
            if name.split(sep) == path.split("/"):
                return str(name)
    finally:
        client.logout()
    raise AssertionError(f"no folder {path} on the server")


def qualified_patient(db: Database) -> int:
    """The ANS examples' patient with the INS reference traits, qualified."""
    with db.session() as s:
        site = Structure(
            kind="EG",
            finess="750000028",
            name="CH de test",
            ipp_authority="CHT",
            ipp_authority_oid="1.2.250.1.999.7",
            settings={},
        )
        s.add(site)
        s.flush()
        p = Patient(
            structure_id=site.id,
            birth_name="PAT-TROIS",
            first_names="DOMINIQUE MARIE-LOUISE",
            birth_date=date(1979, 3, 28),
            sex="F",
            status="QUAL",
            ins_matricule=INS,
            ins_oid="1.2.250.1.213.1.4.10",
            dmp_consent={},
            insi_state={},
        )
        p.identifiers.append(PatientIdentifier(authority="1.2.250.1.999.7", value="IPP42"))
        s.add(p)
        s.flush()
        return p.id


async def test_cr_imagerie_from_dovecot_reaches_the_dpi_and_is_filed_on_the_server(
    db: Database, dovecot: DovecotServer, dpi: DpiStub
) -> None:
    patient_id = qualified_patient(db)
    cda = CR_IMG.read_bytes()
    raw = document_mail(cda, recipient=BOX)
    dovecot.deliver(BOX, raw)

    assert dpi.server is not None
    mailer = RecordingMailer()
    ctx = mss_inbound.MssInboundContext(
        db=db, dpi=MllpDpiSender("127.0.0.1", dpi.server.port, timeout=10), mail_sender=mailer
    )
    pool = WorkerPool(
        db,
        {
            JobKind.MSS_INTEGRATE: mss_inbound.make_integrate_handler(ctx),
            JobKind.MSS_TO_DPI: mss_inbound.make_to_dpi_handler(ctx),
            JobKind.MSS_MDN: mss_inbound.make_mdn_handler(ctx),
        },
        policy=RetryPolicy(max_attempts=3, base_s=0.0, max_s=0.0),
    )
    reader = ImapMailboxReader(
        dovecot.host,
        dovecot.port,
        credentials={BOX: PASSWORD},
        security="plain",
        timeout=10.0,
        processed_folder=PROCESSED,
    )
    try:
        assert await mss_inbound.poll_mailbox(db, reader, BOX, 10) == 1
        await pool.drain()
        # Moved out of the inbox on the server once stored: the next poll finds nothing, stores nothing.
        assert dovecot.folder_uids(BOX, "INBOX") == []
        assert len(dovecot.folder_uids(BOX, server_folder(dovecot, PROCESSED))) == 1
        assert await mss_inbound.poll_mailbox(db, reader, BOX, 10) == 0
    finally:
        await reader.close()

    with db.session() as s:
        [mail] = s.scalars(select(Mail).where(Mail.direction == "in")).all()
        assert (mail.mailbox, mail.status, mail.patient_id) == (BOX, "integrated", patient_id)
        assert s.scalar(select(func.count()).select_from(Mail).where(Mail.direction == "in")) == 1
        doc = s.scalars(select(Document)).one()
        assert (doc.source, doc.status, doc.patient_id) == ("mssante", "acknowledged", patient_id)

    [mdm] = dpi.of_type("MDM")
    message, header = parse(mdm)
    assert header.trigger == "T10"  # the ANS example declares itself a replacement (relatedDocument RPLC)
    assert obx_cda(mdm) == cda
    assert get_field(segments(message, "PID")[0], 3, 1, 1) == INS
    assert get_field(segments(message, "PRT")[0], 15, 1, 4) == DOCTOR

    [(mdn_raw, envelope)] = mailer.sent
    mdn = parse_mdn(mdn_raw)
    assert mdn.ok and mdn.disposition == "processed"
    assert envelope.mail_from == BOX and envelope.rcpt_to == (DOCTOR,)
