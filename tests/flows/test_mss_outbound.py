"""The outbound MSSanté flow in process: ANS MDM example → mails (XDM, X-MSS headers) → DSN/MDN → ZAM Z02/Z03,
with in-memory ports for the operator and the DPI, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from lxml import etree
from sqlalchemy import select

import opensegur
from opensegur.content.validation import Finding
from opensegur.flows import dmp_feed
from opensegur.flows.dmp_feed import ProcessContext, make_process_handler
from opensegur.flows.hl7_intake import Hl7Intake
from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_outbound import (
    MssOutboundConfig,
    mail_given_up,
    make_appointment_handler,
    make_mss_send_handler,
    make_mss_zam_handler,
    record_report,
    sending,
)
from opensegur.flows.mssante_ports import MailSendResult, MailUnavailableError
from opensegur.flows.worker import WorkerPool
from opensegur.ops.demo import load_demo
from opensegur.store.db import Database
from opensegur.store.jobs import RetryPolicy
from opensegur.store.models import Delivery, Document, Job, Mail
from opensegur.transactions.mdn import build_mdn
from opensegur.transactions.mss_mail import SmtpEnvelope
from opensegur.transactions.xdm import read_xdm
from opensegur.transactions.zam import ZamMessage, parse_zam
from tests.dmp import helpers as dmp_helpers
from tests.dmp.helpers import INS, adt, new_number, pid_segment, uid, with_control_id

SENDER = "dpi-imagerie@chu-x.mssante.fr"
PS = "adam.hoda@test-ci-sis.mssante.fr"
PATIENT_BOX = f"{INS}@patient.mssante.fr"
CFG = MssOutboundConfig(sender=SENDER, nil="NIL-TEST-0001", source_oid="1.2.250.1.999.42")


def mdm(kind: str, number: str, **kwargs: Any) -> bytes:
    """The ANS example as published, with its MSSanté copy (DESTMSSANTEPS=Y) that the DMP tests turn off."""
    return dmp_helpers.mdm(kind, number, mssante=True, **kwargs)


CORPSMAIL_PS = "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupont"


# ---- in-memory ports ----------------------------------------------------------------------------------------


@dataclass
class FakeOperator:
    """MailSender: records what it accepts; ``down`` outages first, ``refuse`` recipients with an SMTP reply."""

    down: int = 0
    refuse: dict[str, str] = field(default_factory=dict)
    sent: list[tuple[bytes, SmtpEnvelope]] = field(default_factory=list)
    calls: int = 0

    async def send(self, raw: bytes, envelope: SmtpEnvelope) -> MailSendResult:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise MailUnavailableError("421 4.3.2 Service temporairement indisponible", outage=True)
        refused = {r: self.refuse[r] for r in envelope.rcpt_to if r in self.refuse}
        if len(refused) < len(envelope.rcpt_to):
            self.sent.append((raw, envelope))
        return MailSendResult([r for r in envelope.rcpt_to if r not in refused], refused)

    def mails(self) -> list[EmailMessage]:
        out = []
        for raw, _ in self.sent:
            msg = BytesParser(policy=policy.default).parsebytes(raw)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.mails() if address in str(m["To"])]


@dataclass
class FakeDpi:
    """DpiSender: keeps the ZAM and answers AA."""

    messages: list[bytes] = field(default_factory=list)

    async def send(self, message: bytes) -> bytes:
        self.messages.append(message)
        cid = message.split(b"|")[9].decode()
        return f"MSH|^~\\&|DPI|X|OPENSEGUR|X|20260101||ACK^Z02^ACK|A{cid}|P|2.6\rMSA|AA|{cid}\r".encode()

    def zams(self) -> list[ZamMessage]:
        return [parse_zam(m) for m in self.messages]


class NoFindings:
    """Stands for the CI-SIS validator (its schematrons take minutes to compile): the example is valid."""

    def validate(self, document: etree._Element, *, strict: bool = False) -> list[Finding]:
        return []


@dataclass
class Rig:
    db: Database
    intake: Hl7Intake
    operator: FakeOperator
    dpi: FakeDpi
    pool: WorkerPool

    async def drain(self) -> int:
        return await self.pool.drain()

    def send_hl7(self, raw: bytes) -> tuple[str, str, bytes]:
        raw, cid = with_control_id(raw)
        result = self.intake.handle(raw)
        return result.ack_code, cid, result.ack


@pytest.fixture
def rig(db: Database) -> Rig:
    load_demo(db)
    operator, dpi = FakeOperator(), FakeDpi()
    handlers: dict[str, Any] = {
        JobKind.PROCESS: make_process_handler(ProcessContext(db, NoFindings())),  # type: ignore[arg-type]
        JobKind.MSS_SEND: make_mss_send_handler(db, operator, CFG),
        JobKind.MSS_APPOINTMENT: make_appointment_handler(db, operator, CFG),
        JobKind.MSS_ZAM: make_mss_zam_handler(db, dpi),
    }
    pool = WorkerPool(
        db,
        handlers,
        policy=RetryPolicy(max_attempts=6, base_s=0.0, max_s=0.0),
        given_up={JobKind.MSS_SEND: mail_given_up},
    )
    return Rig(db, Hl7Intake(db), operator, dpi, pool)


# ---- messages -----------------------------------------------------------------------------------------------


def with_flags(raw: bytes, nte_fin: bool = False, **flags: bool) -> bytes:
    """Set MetaDMPMSS OBX values (``DESTMSSANTEPAT=True``…) in an ANS example; optionally NTE-4 FIN after it."""
    raw = dmp_helpers.with_flags(raw, **flags)
    if not nte_fin:
        return raw
    out = []
    for seg in raw.split(b"\r"):
        out.append(seg)
        if seg.startswith(b"OBX|") and b"|DESTMSSANTEPAT^" in seg:
            out.append(b"NTE|1|||FIN")
    return b"\r".join(out)


def document_message(number: str, **flags: bool) -> bytes:
    return with_flags(mdm("initial", number), **flags)


def mail_row(db: Database, delivery_destination: str, unique_id: str) -> Mail:
    with db.session() as s:
        row = s.scalar(
            select(Mail)
            .join(Delivery, Mail.delivery_id == Delivery.id)
            .join(Document, Delivery.document_id == Document.id)
            .where(Document.unique_id == unique_id, Delivery.destination == delivery_destination)
        )
        assert row is not None
        s.expunge(row)
        return row


def deliveries(db: Database, unique_id: str) -> dict[str, Delivery]:
    with db.session() as s:
        rows = s.scalars(select(Delivery).join(Document).where(Document.unique_id == unique_id)).all()
        for r in rows:
            s.expunge(r)
        return {r.destination: r for r in rows}


def doc_status(db: Database, unique_id: str) -> str:
    with db.session() as s:
        doc = s.scalar(select(Document).where(Document.unique_id == unique_id, Document.kind == "initial"))
        assert doc is not None
        return doc.status


def dsn(envid: str, message_id: str, recipient: str, action: str, status: str, diagnostic: str = "") -> bytes:
    """An RFC 3464 report as an operator's MTA sends it (RET=HDRS: the original headers only)."""
    fields = f"Final-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
    if diagnostic:
        fields += f"Diagnostic-Code: smtp; {diagnostic}\r\n"
    return (
        "From: MAILER-DAEMON@operateur.mssante.fr\r\n"
        f"To: {SENDER}\r\nSubject: Delivery Status Notification\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="DSN"\r\n\r\n'
        "--DSN\r\nContent-Type: text/plain\r\n\r\nRapport de distribution.\r\n"
        "--DSN\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.operateur.mssante.fr\r\nOriginal-Envelope-Id: {envid}\r\n\r\n{fields}"
        f"--DSN\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {message_id}\r\nFrom: {SENDER}\r\n"
        "--DSN--\r\n"
    ).encode()


def mdn(message: EmailMessage, reader: str, *, code: str | None = None) -> bytes:
    headers = {
        "Message-ID": str(message["Message-ID"]),
        "Subject": str(message["Subject"]),
        "Disposition-Notification-To": str(message["Disposition-Notification-To"]),
    }
    report = build_mdn(
        headers,
        from_addr=reader,
        final_recipient=reader,
        disposition="processed" if code else "displayed",
        code=code,
        automatic=code is not None,
    )
    return report.as_bytes(policy=policy.SMTP)


def attachment(msg: EmailMessage, name: str) -> bytes:
    for part in msg.iter_attachments():
        if part.get_filename() == name:
            content = part.get_content()
            assert isinstance(content, bytes)
            return content
    raise AssertionError(f"no attachment {name}")


def body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert isinstance(part, Message)
    return str(part.get_content())


# ---- documents ----------------------------------------------------------------------------------------------


async def test_ans_mdm_example_to_professional_and_patient(rig: Rig) -> None:
    n = new_number()
    raw = with_flags(
        mdm("initial", n),
        nte_fin=True,
        DESTDMP=False,
        DESTMSSANTEPS=True,
        DESTMSSANTEPAT=True,
        INVISIBLE_PATIENT=False,
        INVISIBLE_REP_LEGAUX=False,
        ACK_RECEPTION=True,
        ACK_LECTURE_MSS=True,
    )
    code, _cid, _ack = rig.send_hl7(raw)
    assert code == "AA"
    await rig.drain()

    assert len(rig.operator.sent) == 2
    [to_ps] = rig.operator.to(PS)
    [to_patient] = rig.operator.to(PATIENT_BOX)
    for msg, (_raw, envelope) in zip(rig.operator.mails(), rig.operator.sent, strict=True):
        assert str(msg["Subject"]).startswith("XDM/1.0/DDM+") and "PAT-TROIS DOMINIQUE 28/03/1979" in str(
            msg["Subject"]
        )
        assert str(msg["From"]) == SENDER and str(msg["X-MSS-NIL"]) == CFG.nil
        assert str(msg["X-MSS-CODECDA"]) == "18748-4" and str(msg["X-MSS-INS"]) == "O"
        # ACK_LECTURE_MSS → MDN asked back to our mailbox; ACK_RECEPTION → DSN asked in the SMTP envelope.
        assert str(msg["Disposition-Notification-To"]) == SENDER
        assert "RET=HDRS" in envelope.mail_options and envelope.rcpt_options == (
            "NOTIFY=SUCCESS,FAILURE,DELAY",
        )
        package = read_xdm(attachment(msg, "IHE_XDM.ZIP"))
        assert package.patient_id.startswith(f"{INS}^^^&1.2.250.1.213.1.4.10&ISO")
        [entry] = package.documents
        assert entry.metadata is not None and entry.metadata.unique_id == uid(n) and entry.cda is not None
        assert entry.cda.patient.ins_matricule == INS
        # XDM as peers write it: who made it (application, version, vendor, contact) and for whom.
        assert package.readme is not None and package.warnings == []
        assert f"Application : OpenSégur {opensegur.__version__}" in package.readme
        assert f"Contact : {SENDER}" in package.readme and "Éditeur : " in package.readme
        assert package.submission_set is not None
        assert package.submission_set.intended_recipients == [f"||^^Internet^{a}" for a in envelope.rcpt_to]
    assert len(envelope.rcpt_to) == 1
    assert body(to_ps).strip() == CORPSMAIL_PS
    assert to_ps["X-MSS-MES"] is None
    # NTE-4 FIN after DESTMSSANTEPAT: the patient may not answer, and no Reply-To offers a way back.
    assert str(to_patient["X-MSS-MES"]) == "FIN" and to_patient["Reply-To"] is None
    assert "Bonjour" in body(to_patient) and "vous concernant" in body(to_patient)

    rows = deliveries(rig.db, uid(n))
    assert set(rows) == {"MSSANTE_PS", "MSSANTE_PAT"}
    assert all(d.status == "delivered" and d.action == "send" for d in rows.values())
    assert rows["MSSANTE_PS"].key == f"{uid(n)}:MSSANTE_PS:send"
    ps_mail = mail_row(rig.db, "MSSANTE_PS", uid(n))
    assert ps_mail.status == "sent" and ps_mail.key == f"out:{rows['MSSANTE_PS'].id}"
    assert ps_mail.message_id == str(to_ps["Message-ID"]) and ps_mail.payload_sha256
    assert doc_status(rig.db, uid(n)) == "sent"
    assert rig.dpi.messages == []  # nothing to acknowledge before the DSN


async def test_dsn_delivered_gives_zam_z02_and_mdn_displayed_gives_z03(rig: Rig) -> None:
    n = new_number()
    code, cid, _ = rig.send_hl7(document_message(n, DESTDMP=False, ACK_RECEPTION=True, ACK_LECTURE_MSS=True))
    assert code == "AA"
    await rig.drain()
    [msg] = rig.operator.to(PS)
    [(_, envelope)] = rig.operator.sent
    envid = next(o.split("=", 1)[1] for o in envelope.mail_options if o.startswith("ENVID="))

    report = dsn(envid, str(msg["Message-ID"]), PS, "delivered", "2.0.0")
    with rig.db.session() as s:
        assert record_report(s, report, SENDER)
    with rig.db.session() as s:  # the poller re-reads it after a crash: nothing more happens
        assert record_report(s, report, SENDER)
    await rig.drain()
    [z02] = rig.dpi.zams()
    assert z02.header.trigger == "Z02" and z02.status.kind == "reception_mss" and z02.status.success
    assert z02.status.original_control_id == cid and z02.status.recipient_address == PS
    assert z02.status.recipient_id == "801234567897"
    assert mail_row(rig.db, "MSSANTE_PS", uid(n)).status == "delivered"
    assert doc_status(rig.db, uid(n)) == "acknowledged"

    with rig.db.session() as s:
        assert record_report(s, mdn(msg, PS), SENDER)
    await rig.drain()
    z03 = rig.dpi.zams()[-1]
    assert z03.header.trigger == "Z03" and z03.status.kind == "lecture_mss" and z03.status.success
    assert z03.status.recipient_address == PS and z03.status.original_control_id == cid
    assert mail_row(rig.db, "MSSANTE_PS", uid(n)).status == "read"
    assert len(rig.dpi.messages) == 2


async def test_mdn_with_integration_error_gives_negative_z03(rig: Rig) -> None:
    n = new_number()
    rig.send_hl7(document_message(n, DESTDMP=False, ACK_LECTURE_MSS=True))
    await rig.drain()
    [msg] = rig.operator.to(PS)
    with rig.db.session() as s:
        assert record_report(s, mdn(msg, PS, code="902"), SENDER)
    await rig.drain()
    [z03] = rig.dpi.zams()
    assert z03.header.trigger == "Z03" and not z03.status.success
    [err] = z03.status.errors
    assert (err.code, err.system) == ("902", "applicationErrorCondition") and "inconnu" in err.label
    row = mail_row(rig.db, "MSSANTE_PS", uid(n))
    assert row.status == "failed" and row.mdn_code == "902"


async def test_unknown_reports_are_left_to_triage(rig: Rig) -> None:
    with rig.db.session() as s:
        assert not record_report(s, dsn("<inconnu@x>", "<inconnu@x>", PS, "delivered", "2.0.0"), SENDER)
        assert not record_report(s, b"Subject: pas un rapport\r\n\r\ntexte\r\n", SENDER)


async def test_refused_recipient_fails_the_delivery_with_a_zam_error(rig: Rig) -> None:
    rig.operator.refuse = {PS: "550 5.1.1 <adam.hoda@test-ci-sis.mssante.fr>: boîte inconnue"}
    n = new_number()
    # The example as published: DESTMSSANTEPS only, no acknowledgement asked: a failure is reported all the same.
    code, cid, _ = rig.send_hl7(document_message(n, DESTDMP=False))
    assert code == "AA"
    await rig.drain()
    assert rig.operator.sent == []
    ps = deliveries(rig.db, uid(n))["MSSANTE_PS"]
    assert ps.status == "dead" and ps.error_code == "550" and "boîte inconnue" in (ps.last_error or "")
    assert doc_status(rig.db, uid(n)) == "error"
    [z02] = rig.dpi.zams()
    assert z02.header.trigger == "Z02" and not z02.status.success and z02.status.original_control_id == cid
    [err] = z02.status.errors
    assert (err.code, err.system) == ("550", "SMTPERRORCODE")
    with rig.db.session() as s:
        job = s.scalar(select(Job).where(Job.kind == JobKind.MSS_SEND))
        assert job is not None and job.status == "dead"


async def test_operator_down_then_back_sends_exactly_one_mail(rig: Rig) -> None:
    rig.operator.down = 2
    n = new_number()
    rig.send_hl7(document_message(n, DESTDMP=False))
    await rig.drain()
    assert rig.operator.calls == 3 and len(rig.operator.sent) == 1
    ps = deliveries(rig.db, uid(n))["MSSANTE_PS"]
    assert ps.status == "delivered" and ps.last_error is None
    with rig.db.session() as s:
        job = s.scalar(select(Job).where(Job.kind == JobKind.MSS_SEND))
        assert job is not None and (job.status, job.attempts) == ("done", 3)


async def test_an_operator_outage_longer_than_the_attempts_is_waited_out(rig: Rig) -> None:
    """Six attempts per job here; the operator down ten times in a row spends none of them."""
    rig.operator.down = 10
    n = new_number()
    rig.send_hl7(document_message(n, DESTDMP=False))
    await rig.drain()
    assert rig.operator.calls == 11 and len(rig.operator.sent) == 1
    assert deliveries(rig.db, uid(n))["MSSANTE_PS"].status == "delivered"


async def test_temporary_refusal_is_retried_until_attempts_are_spent_then_given_up_until_relaunched(rig: Rig) -> None:
    rig.operator.refuse = {PS: "452 4.2.2 Boîte du destinataire pleine"}
    n = new_number()
    rig.send_hl7(document_message(n, DESTDMP=False))
    await rig.drain()
    assert rig.operator.calls == 6 and rig.operator.sent == [] and rig.dpi.messages == []
    # The six attempts spent, the job is given up: the delivery and its mail say so, not that a new try is planned.
    ps = deliveries(rig.db, uid(n))["MSSANTE_PS"]
    assert ps.status == "dead" and ps.error_code == "MSS_UNAVAILABLE" and "452" in (ps.last_error or "")
    assert mail_row(rig.db, "MSSANTE_PS", uid(n)).status == "failed"

    rig.operator.refuse = {}
    with rig.db.session() as s:
        doc_id = s.scalars(select(Document.id).where(Document.unique_id == uid(n))).one()
    assert dmp_feed.retry(rig.db, doc_id, "dr.test") == 1
    await rig.drain()
    assert len(rig.operator.sent) == 1 and deliveries(rig.db, uid(n))["MSSANTE_PS"].status == "delivered"


async def test_crash_after_send_before_commit_never_sends_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sending._after_send
    crashes = iter([True])

    def crash_once(*args: Any) -> dict[str, Any]:
        if next(crashes, False):
            raise RuntimeError("process killed after the SMTP transaction")
        return real(*args)

    monkeypatch.setattr(sending, "_after_send", crash_once)
    n = new_number()
    rig.send_hl7(document_message(n, DESTDMP=False))
    await rig.drain()
    assert len(rig.operator.sent) == 1 and rig.operator.calls == 1
    ps = deliveries(rig.db, uid(n))["MSSANTE_PS"]
    assert ps.status == "dead" and ps.error_code == "MSS_UNCERTAIN"
    assert "peut-être parti" in (ps.last_error or "")

    # A professional who checked decides to send again: the same bytes, hence the same Message-ID.
    with rig.db.session() as s:
        doc_id = s.scalars(select(Document.id).where(Document.unique_id == uid(n))).one()
    assert dmp_feed.retry(rig.db, doc_id, "dr.test") == 1
    await rig.drain()
    assert len(rig.operator.sent) == 2 and rig.operator.sent[0][0] == rig.operator.sent[1][0]
    assert deliveries(rig.db, uid(n))["MSSANTE_PS"].status == "delivered"


async def test_replacement_mail_waits_for_the_mail_it_replaces(rig: Rig) -> None:
    rig.operator.down = 1
    n, m = new_number(), new_number()
    rig.send_hl7(document_message(n, DESTDMP=False))
    rig.send_hl7(with_flags(mdm("replacement", m, parent=n), DESTDMP=False))
    await rig.drain()
    subjects = [str(msg["Subject"]) for msg in rig.operator.mails()]
    assert len(subjects) == 2
    packages = [read_xdm(attachment(msg, "IHE_XDM.ZIP")) for msg in rig.operator.mails()]
    assert [p.documents[0].metadata.unique_id for p in packages] == [uid(n), uid(m)]
    with rig.db.session() as s:
        results = [
            j.result for j in s.scalars(select(Job).where(Job.kind == JobKind.MSS_SEND).order_by(Job.id))
        ]
    assert any("waiting" in r for r in results)


async def test_mss_does_not_wait_for_the_dmp(rig: Rig) -> None:
    n = new_number()
    rig.send_hl7(document_message(n))  # DESTDMP=Y, and no DMP worker in this rig
    await rig.drain()
    assert len(rig.operator.to(PS)) == 1
    rows = deliveries(rig.db, uid(n))
    assert rows["DMP"].status == "pending" and rows["MSSANTE_PS"].status == "delivered"


async def test_unqualified_identity_gets_no_patient_mail(rig: Rig) -> None:
    ipp = f"Q{new_number()[:8]}"
    code, _, _ = rig.send_hl7(adt("A28", f"A28-{ipp}", pid_segment(ipp, status="PROV")))
    assert code == "AA"
    n = new_number()
    raw = with_flags(
        mdm("initial", n, pid=pid_segment(ipp, status="PROV")),
        DESTDMP=False,
        DESTMSSANTEPAT=True,
        INVISIBLE_PATIENT=False,
    )
    code, _, _ = rig.send_hl7(raw)
    assert code == "AA"
    await rig.drain()
    assert rig.operator.sent == [] and deliveries(rig.db, uid(n)) == {}
    assert doc_status(rig.db, uid(n)) == "waiting_identity"


async def test_held_document_sends_nothing_until_released(rig: Rig) -> None:
    n = new_number()
    rig.send_hl7(document_message(n, DESTDMP=False))
    with rig.db.session() as s:
        doc_id = s.scalars(select(Document.id).where(Document.unique_id == uid(n))).one()
    dmp_feed.hold(rig.db, doc_id, "dr.test")
    await rig.drain()
    assert rig.operator.sent == []
    dmp_feed.release(rig.db, doc_id, "dr.test")
    await rig.drain()
    assert len(rig.operator.sent) == 1
    assert deliveries(rig.db, uid(n))["MSSANTE_PS"].status == "delivered"


# ---- appointments -------------------------------------------------------------------------------------------


def siu(
    trigger: str, appointment: str, start: datetime | None, *, ins: str | None = INS, extra: str = ""
) -> bytes:
    # Without a UTC offset an HL7 time is Paris time: the scheduler writes its wall clock.
    when = start.astimezone(ZoneInfo("Europe/Paris")).strftime("%Y%m%d%H%M") if start else ""
    ins_rep = f"~{ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS" if ins else ""
    segments = [
        f"MSH|^~\\&|AGENDA|CHU-X|OPENSEGUR|CHU-X|20260110090000||SIU^{trigger}^SIU_S12|X|P|2.5|||||FRA|UNICODE UTF-8",
        "|".join(
            [
                "SCH",
                f"PL{appointment}",
                f"{appointment}^AGENDA",
                "",
                "",
                "",
                "",
                "IRM^IRM du genou",
                "",
                "",
                "",
                f"^^^{when}",
            ]
        ),
        f"PID|1||IPP-RDV^^^CHU-X&000897406&N^PI{ins_rep}||PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L||19790328|F",
        "RGS|1|A",
        "AIS|1|A|IRM-GEN^IRM du genou",
        "NTE|1||Venir à jeun depuis 6 heures.",
        "NTE|2||Apporter vos anciens examens.",
        "AIL|1|A|IMG^12^^CHU-X^^^Bâtiment B^2^Imagerie, bâtiment B, 2e étage",
        "AIP|1|A|801234567897^HODA^Adam^^^Dr",
    ]
    return ("\r".join(segments) + extra + "\r").encode("utf-8")


def qualified_patient(rig: Rig) -> None:
    """The ANS example patient, qualified, known under the IPP the SIU uses."""
    pid = pid_segment(
        "IPP-RDV", ins=INS, status="QUAL", name="PAT-TROIS", first="DOMINIQUE", birth="19790328"
    )
    code, _, ack = rig.send_hl7(adt("A28", "A28-RDV", pid))
    assert code == "AA", ack


async def test_siu_s12_sends_the_appointment_in_french(rig: Rig) -> None:
    qualified_patient(rig)
    start = (datetime.now(UTC) + timedelta(days=10)).replace(hour=8, minute=30, second=0, microsecond=0)
    code, _, ack = rig.send_hl7(siu("S12", "RDV1", start))
    assert code == "AA", ack
    await rig.drain()
    [msg] = rig.operator.mails()
    assert str(msg["To"]) == PATIENT_BOX and str(msg["X-MSS-MES"]) == "FIN"
    assert str(msg["Subject"]).startswith("Votre rendez-vous du ")
    text = body(msg)
    assert "Nous vous confirmons votre rendez-vous" in text
    assert "Lieu : Imagerie, bâtiment B, 2e étage — IRM du genou, avec Dr Adam HODA" in text
    assert "Venir à jeun depuis 6 heures." in text and "Apporter vos anciens examens." in text
    assert "il n'est pas possible d'y répondre" in text
    with rig.db.session() as s:
        row = s.scalar(select(Mail).where(Mail.detail["kind"].as_string() == "appointment"))
        assert row is not None and row.status == "sent" and row.message_id == str(msg["Message-ID"])


async def test_siu_s14_replaces_a_reminder_not_yet_sent_and_s15_cancels(rig: Rig) -> None:
    qualified_patient(rig)
    start = datetime.now(UTC) + timedelta(days=3)
    assert rig.send_hl7(siu("S12", "RDV2", start))[0] == "AA"
    assert rig.send_hl7(siu("S14", "RDV2", start + timedelta(hours=2)))[0] == "AA"
    await rig.drain()
    [msg] = rig.operator.mails()  # only the modified appointment left
    local = (start + timedelta(hours=2)).astimezone(ZoneInfo("Europe/Paris"))
    assert f"{local.hour:02d}h{local.minute:02d}" in str(msg["Subject"])

    code, _, ack = rig.send_hl7(siu("S15", "RDV2", None))
    assert code == "AA"
    assert b"ERR|" in ack and "prévenir directement" in ack.decode("utf-8")  # the reminder had left
    assert rig.send_hl7(siu("S12", "RDV3", start))[0] == "AA"
    assert rig.send_hl7(siu("S15", "RDV3", None))[0] == "AA"
    await rig.drain()
    assert len(rig.operator.sent) == 1


async def test_bad_siu_gets_ae(rig: Rig) -> None:
    qualified_patient(rig)
    start = datetime.now(UTC) + timedelta(days=3)
    no_date = siu("S12", "RDV4", None)
    code, _, ack = rig.send_hl7(no_date)
    assert code == "AE" and "Date et heure du rendez-vous absentes" in ack.decode("utf-8")
    wall = start.astimezone(ZoneInfo("Europe/Paris")).strftime("%Y%m%d%H%M")
    bad_date = siu("S12", "RDV5", start).replace(wall.encode(), b"202613991200")
    code, _, ack = rig.send_hl7(bad_date)
    assert code == "AE" and "Date et heure invalides" in ack.decode("utf-8")
    await rig.drain()
    assert rig.operator.sent == []


async def test_siu_for_a_patient_without_qualified_ins_gets_ae(rig: Rig) -> None:
    pid = pid_segment("IPP-PROV", status="PROV", name="PAT-TROIS", first="DOMINIQUE", birth="19790328")
    assert rig.send_hl7(adt("A28", "A28-PROV", pid))[0] == "AA"
    start = datetime.now(UTC) + timedelta(days=3)
    raw = siu("S12", "RDV6", start, ins=None).replace(b"IPP-RDV", b"IPP-PROV")
    code, _, ack = rig.send_hl7(raw)
    assert code == "AE"
    text = ack.decode("utf-8")
    assert "INS du patient absent" in text and re.search(r"ERR\|", text)
    await rig.drain()
    assert rig.operator.sent == []
    with rig.db.session() as s:
        assert s.scalar(select(Mail)) is None


def test_corpsmail_of_the_example_is_what_the_ps_mail_carries() -> None:
    # Guard on the fixture itself: the example's CORPSMAIL_PS is the text the PS mail body must carry.
    raw = mdm("initial", "1")
    encoded = next(seg for seg in raw.split(b"\r") if b"CORPSMAIL_PS" in seg).split(b"|")[5].split(b"^")[4]
    assert base64.b64decode(encoded).decode("utf-8") == CORPSMAIL_PS
