"""Inbound MSSanté flow, in process: fake mailbox, fake DPI, fake SMTP; the real store on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from datetime import date
from email.message import EmailMessage
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import func, select

from opensegur.connectors.mss_imap import ImapMailboxReader
from opensegur.errors import RetryLater
from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_inbound import (
    InboundError,
    MailLimits,
    MssInboundContext,
    attach,
    make_integrate_handler,
    make_mdn_handler,
    make_results_to_dpi_handler,
    make_to_dpi_handler,
    poll_mailbox,
    polling,
    reject,
    run_poller,
)
from opensegur.flows.mssante_ports import FetchedMail, IdleMailboxReader, MailSendResult, MailUnavailableError
from opensegur.flows.worker import WorkerPool
from opensegur.store.db import Database
from opensegur.store.jobs import RetryPolicy
from opensegur.store.models import (
    AuditEvent,
    Document,
    Exchange,
    Job,
    LabResult,
    Mail,
    Patient,
    PatientIdentifier,
    Structure,
)
from opensegur.transactions.ebrim import NS_RIM
from opensegur.transactions.hl7v2 import parse
from opensegur.transactions.hl7v2_message import get_field, segments
from opensegur.transactions.ihe_ids import DE_CONFIDENTIALITY, SS_CONTENT_TYPE
from opensegur.transactions.mdn import parse_mdn
from opensegur.transactions.mss_mail import MailPatient, SmtpEnvelope, build_document_mail
from opensegur.transactions.xdm import METADATA_PATH
from tests.conftest import SHARED
from tests.ebrim_forms import hoist
from tests.mssante.conftest import OTHER_INS, package
from tests.mssante.test_xdm import _deflate_zeros, _metadata, _single_member_zip, member, rezip

CISIS = SHARED / "cisis" / "ExemplesCDA"
CR_IMG = CISIS / "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml"
CR_BIO = CISIS / "BIO-CR-BIO_2024.01_TSH_1.xml"
INS = "279035121518989"
OID = "1.2.250.1.213.1.4.10"
BOX = "dpi-imagerie@ch-test.mssante.fr"
DOCTOR = "thomas.eric@medecin.mssante.fr"
SUBJECT_PATIENT = MailPatient(INS, "PAT-TROIS", "DOMINIQUE", date(1979, 3, 28))


# ------------------------------------------------------------------------------------------------------------
# Fakes and builders


@dataclass
class FakeReader:
    boxes: dict[str, list[FetchedMail]] = field(default_factory=dict)
    done: set[tuple[str, int]] = field(default_factory=set)
    crash_on_mark: bool = False

    def deliver(self, raw: bytes, mailbox: str = BOX) -> None:
        box = self.boxes.setdefault(mailbox, [])
        box.append(FetchedMail(mailbox, len(box) + 1, raw))

    async def fetch_new(self, mailbox: str, limit: int) -> list[FetchedMail]:
        return [f for f in self.boxes.get(mailbox, []) if (mailbox, f.uid) not in self.done][:limit]

    async def mark_done(self, mailbox: str, uids: list[int]) -> None:
        if self.crash_on_mark:
            raise ConnectionResetError("process killed before the IMAP flag was set")
        self.done |= {(mailbox, u) for u in uids}


@dataclass
class FakeDpi:
    received: list[bytes] = field(default_factory=list)
    down: bool = False
    answer: str = "AA"
    error: str = ""
    # Per message type (MSH-9.1, e.g. "ORU"): down, or (MSA-1, ERR segments) instead of the defaults above.
    down_types: set[str] = field(default_factory=set)
    answers: dict[str, tuple[str, str]] = field(default_factory=dict)

    async def send(self, message: bytes) -> bytes:
        msh_fields = message.split(b"\r", 1)[0].split(b"|")
        kind = msh_fields[8].split(b"^")[0].decode()
        if self.down or kind in self.down_types:
            raise RetryLater("connection refused")
        self.received.append(message)
        control_id = msh_fields[9].decode()
        answer, error = self.answers.get(kind, (self.answer, self.error))
        msh = "MSH|^~\\&|DPI|CH|OPENSEGUR|CH|20260101||ACK^T02^ACK|A1|P|2.6|||||FRA|UNICODE UTF-8"
        return f"{msh}\rMSA|{answer}|{control_id}\r{error}".encode()

    def of_type(self, kind: str) -> list[bytes]:
        return [m for m in self.received if parse(m)[1].message_type == kind]


@dataclass
class FakeSmtp:
    sent: list[tuple[bytes, SmtpEnvelope]] = field(default_factory=list)

    async def send(self, raw: bytes, envelope: SmtpEnvelope) -> MailSendResult:
        self.sent.append((raw, envelope))
        return MailSendResult(accepted=list(envelope.rcpt_to))


@dataclass
class Env:
    db: Database
    reader: FakeReader
    dpi: FakeDpi
    smtp: FakeSmtp
    ctx: MssInboundContext
    pool: WorkerPool

    async def poll(self) -> int:
        return await poll_mailbox(self.db, self.reader, BOX, 10)

    async def run(self) -> int:
        return await self.pool.drain()

    def mails(self) -> list[Mail]:
        with self.db.session() as s:
            rows = list(s.scalars(select(Mail).where(Mail.direction == "in").order_by(Mail.id)))
            s.expunge_all()
            return rows

    def count(self, model: Any, *where: Any) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    def mdns(self) -> list[Any]:
        return [parse_mdn(raw) for raw, _ in self.smtp.sent]


@pytest.fixture
def env(db: Database) -> Env:
    reader, dpi, smtp = FakeReader(), FakeDpi(), FakeSmtp()
    ctx = MssInboundContext(db=db, dpi=dpi, mail_sender=smtp, limits=MailLimits(max_attachment=1_000_000))
    pool = WorkerPool(
        db,
        {
            JobKind.MSS_INTEGRATE: make_integrate_handler(ctx),
            JobKind.MSS_TO_DPI: make_to_dpi_handler(ctx),
            JobKind.MSS_MDN: make_mdn_handler(ctx),
            JobKind.MSS_RESULTS_TO_DPI: make_results_to_dpi_handler(ctx),
        },
        policy=RetryPolicy(max_attempts=5, base_s=0.0, max_s=0.0),
    )
    return Env(db, reader, dpi, smtp, ctx, pool)


def add_patient(db: Database, *, status: str = "QUAL", ins: str | None = INS, ipp: str = "IPP42") -> int:
    with db.session() as s:
        site = s.scalar(select(Structure).where(Structure.finess == "750000028"))
        if site is None:
            site = Structure(kind="EG", finess="750000028", name="CH de test", ipp_authority="CHT",
                             ipp_authority_oid="1.2.250.1.999.7", settings={})  # fmt: skip
            s.add(site)
            s.flush()
        p = Patient(
            structure_id=site.id,
            birth_name="PAT-TROIS",
            first_names="DOMINIQUE MARIE-LOUISE",
            birth_date=date(1979, 3, 28),
            sex="F",
            status=status,
            ins_matricule=ins,
            ins_oid=OID if ins else None,
            dmp_consent={},
            insi_state={},
        )
        p.identifiers.append(PatientIdentifier(authority="1.2.250.1.999.7", value=ipp))
        s.add(p)
        s.flush()
        return p.id


def document_mail(cda: bytes, *, receipt: bool = True, **kwargs: Any) -> bytes:
    args: dict[str, Any] = {
        "sender": DOCTOR,
        "recipients": [BOX],
        "patient": SUBJECT_PATIENT,
        "document_label": "CR d'imagerie médicale",
        "xdm_zip": package(cda),
        "body_text": "Bonjour,\nCi-joint le compte rendu.",
        "nil": "DEV935997",
        "ins_qualified": True,
        "read_receipt_to": DOCTOR if receipt else None,
    }
    args.update(kwargs)
    return build_document_mail(**args).as_bytes()


def handmade_mail(attachments: list[tuple[bytes, str, str, str]], *, receipt: bool = True) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = DOCTOR, BOX, "XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE 28/03/1979"
    msg["Message-ID"] = f"<{abs(hash(tuple(a[3] for a in attachments)))}@medecin.mssante.fr>"
    if receipt:
        msg["Disposition-Notification-To"] = DOCTOR
    msg.set_content("Bonjour")
    for content, maintype, subtype, name in attachments:
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


@pytest.fixture(scope="module")
def cr_img() -> bytes:
    return CR_IMG.read_bytes()


# ------------------------------------------------------------------------------------------------------------
# Nominal


async def test_cr_imagerie_for_a_qualified_patient_goes_to_the_dpi_and_back(env: Env, cr_img: bytes) -> None:
    patient_id = add_patient(env.db)
    env.reader.deliver(document_mail(cr_img))
    assert await env.poll() == 1
    assert env.reader.done == {(BOX, 1)}
    await env.run()

    [mail] = env.mails()
    assert (mail.status, mail.patient_id, mail.mdn_code) == ("integrated", patient_id, None)
    with env.db.session() as s:
        doc = s.scalars(select(Document)).one()
        assert (doc.source, doc.status, doc.patient_id, doc.type_code) == (
            "mssante",
            "acknowledged",
            patient_id,
            "18748-4",
        )
        assert doc.context["mail_id"] == mail.id and doc.context["sender"] == DOCTOR
        actions = set(s.scalars(select(AuditEvent.action)))
    assert {"mss_receive", "mss_integrate", "mss_dpi_ack", "mss_dpi_accepted", "mss_mdn"} <= actions

    [mdm] = env.dpi.received
    message, header = parse(mdm)
    # The ANS example declares itself a replacement (relatedDocument RPLC): T10 with the parent in TXA-13.
    assert header.message_type == "MDM" and header.trigger == "T10"
    assert get_field(segments(message, "TXA")[0], 13) == "90E1C8EC-F951-4B26-A305-A34848818DD6"
    assert get_field(segments(message, "OBX")[0], 11) == "C"
    assert base64.b64decode(get_field(segments(message, "OBX")[0], 5, 1, 5)) == cr_img
    pid = segments(message, "PID")[0]
    assert get_field(pid, 3, 1, 1) == INS and get_field(pid, 3, 2, 1) == "IPP42"
    assert get_field(segments(message, "PRT")[0], 15, 1, 4) == DOCTOR
    assert get_field(segments(message, "OBX")[1], 3, 1, 1) == mail.message_id

    [mdn] = env.mdns()
    assert mdn.ok and mdn.disposition == "processed" and mdn.original_message_id == mail.message_id
    assert env.smtp.sent[0][1].rcpt_to == (DOCTOR,)


async def test_cr_bio_yields_lab_results(env: Env) -> None:
    pytest.importorskip("opensegur.content.crbio")
    add_patient(env.db)
    env.reader.deliver(document_mail(CR_BIO.read_bytes(), document_label="CR de biologie"))
    await env.poll()
    await env.run()
    assert env.count(LabResult) > 0
    with env.db.session() as s:
        assert s.scalar(select(LabResult.loinc).limit(1))
        assert s.scalars(select(Document)).one().type_code == "11502-2"
    assert parse(env.dpi.received[0])[1].trigger == "T02"


def _crbio_package(change) -> bytes:  # type: ignore[no-untyped-def]
    xdm = package(CR_BIO.read_bytes())
    root = etree.fromstring(_metadata(xdm))
    change(root)
    return rezip(xdm, replace={METADATA_PATH: etree.tostring(root, xml_declaration=True, encoding="UTF-8")})


def _limited(root: etree._Element) -> None:
    for cl in list(root.iter(f"{{{NS_RIM}}}Classification")):
        if cl.get("classificationScheme") in (SS_CONTENT_TYPE, DE_CONFIDENTIALITY):
            cl.getparent().remove(cl)


@pytest.mark.parametrize(
    ("change", "warned"),
    [(hoist, False), (_limited, True)],
    ids=["classifications-at-top-level", "limited-metadata"],
)
async def test_cr_bio_with_metadata_written_otherwise_reaches_the_patients_results(
    env: Env, change, warned: bool
) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("opensegur.content.crbio")
    add_patient(env.db)
    mail = document_mail(CR_BIO.read_bytes(), document_label="CR de biologie", xdm_zip=_crbio_package(change))
    env.reader.deliver(mail)
    await env.poll()
    await env.run()
    assert env.count(LabResult) > 0
    with env.db.session() as s:
        stored = s.scalars(select(Mail).where(Mail.direction == "in")).one()
        assert stored.status == "integrated"
        warnings = stored.detail.get("xdm_warnings", [])
    assert bool(warnings) is warned
    if warned:
        assert "Lot de soumission incomplet : un seul contentTypeCode attendu" in warnings
        assert any("confidentialityCode absent" in w for w in warnings)


async def test_no_mdn_when_the_sender_did_not_ask(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    env.reader.deliver(document_mail(cr_img, receipt=False))
    await env.poll()
    await env.run()
    assert env.mails()[0].status == "integrated" and env.mails()[0].detail["mdn"] == "not_requested"
    assert env.smtp.sent == []


# ------------------------------------------------------------------------------------------------------------
# Identity: never matched on a claim, never on an unqualified identity


async def _triaged(env: Env, raw: bytes) -> Mail:
    env.reader.deliver(raw)
    await env.poll()
    await env.run()
    [mail] = env.mails()
    assert mail.status == "triage", mail.reason
    assert env.count(Document) == 0 and env.dpi.received == [] and env.smtp.sent == []
    return mail


async def test_unknown_ins_goes_to_triage(env: Env, cr_img: bytes) -> None:
    mail = await _triaged(env, document_mail(cr_img))
    assert mail.mdn_code == "902" and "Patient inconnu" in (mail.reason or "")


async def test_a_mail_in_triage_belongs_to_its_mailboxs_site(env: Env, cr_img: bytes) -> None:
    """So the site's secretaries see it in their triage list, not only GHT-wide staff."""
    add_patient(env.db, ins=None)  # creates the site; the mail's INS is nobody's there
    with env.db.session() as s:
        site = s.scalars(select(Structure.id).where(Structure.finess == "750000028")).one()
    env.ctx.mailbox_structures = {BOX.lower(): site}
    mail = await _triaged(env, document_mail(cr_img))
    assert mail.structure_id == site and mail.mdn_code == "902"


async def test_unqualified_local_identity_goes_to_triage(env: Env, cr_img: bytes) -> None:
    add_patient(env.db, status="RECUP")
    mail = await _triaged(env, document_mail(cr_img))
    assert mail.mdn_code == "904" and "non qualifiée" in (mail.reason or "")


async def test_traits_differing_from_the_qualified_identity_go_to_triage(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    mail = await _triaged(env, document_mail(cr_img.replace(b"19790328", b"19790329")))
    assert mail.mdn_code == "904" and "date de naissance" in (mail.reason or "")


async def test_forged_x_mss_ins_is_not_matched(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    add_patient(env.db, ins=OTHER_INS, ipp="IPP43")
    raw = document_mail(cr_img).replace(b"X-MSS-INS: O", f"X-MSS-INS: {OTHER_INS}".encode())
    mail = await _triaged(env, raw)
    assert mail.mdn_code == "904" and mail.patient_id is None


async def test_two_patients_in_one_mail_go_to_triage(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    other = cr_img.replace(INS.encode(), OTHER_INS.encode()).replace(b"45.2024.2.1", b"45.2024.2.9")
    mail = await _triaged(env, document_mail(cr_img, cda_attachments=[("autre.xml", other)]))
    assert mail.mdn_code == "906" and "plusieurs patients" in (mail.reason or "")


async def test_mail_without_cda_goes_to_triage(env: Env) -> None:
    add_patient(env.db)
    mail = await _triaged(env, handmade_mail([(b"%PDF-1.4\n%demo\n", "application", "pdf", "CR.pdf")]))
    assert "Aucun document CDA" in (mail.reason or "")


# ------------------------------------------------------------------------------------------------------------
# Hostile mails: refused with the volet's "other" code, raw mail kept


async def _rejected(env: Env, raw: bytes) -> Mail:
    env.reader.deliver(raw)
    await env.poll()
    await env.run()
    [mail] = env.mails()
    assert (mail.status, mail.mdn_code) == ("rejected", "906"), mail.reason
    with env.db.session() as s:
        assert s.get_one(type(mail), mail.id).payload_sha256
        from opensegur.store.payloads import load_payload

        assert load_payload(s, mail.payload_sha256 or "") == raw
    assert env.count(Document) == 0 and env.dpi.received == []
    [mdn] = env.mdns()
    assert mdn.error_code == "906"
    return mail


async def test_zip_bomb_is_refused(env: Env) -> None:
    bomb = _single_member_zip("IHE_XDM/SUBSET01/DOC0001.XML", _deflate_zeros(64 << 20), 64 << 20)
    mail = await _rejected(env, handmade_mail([(bomb, "application", "zip", "IHE_XDM.ZIP")]))
    assert "refusé" in (mail.reason or "")


async def test_path_traversal_in_xdm_is_refused(env: Env, cr_img: bytes) -> None:
    hostile = rezip(package(cr_img), extra=[(member("../../etc/cron.d/x"), b"x")])
    await _rejected(env, handmade_mail([(hostile, "application", "zip", "IHE_XDM.ZIP")]))


async def test_oversized_attachment_is_refused_before_decoding(env: Env) -> None:
    huge = b"%PDF-1.4\n" + bytes(3_000_000)
    mail = await _rejected(env, handmade_mail([(huge, "application", "pdf", "scan.pdf")]))
    assert "volumineuse" in (mail.reason or "")


async def test_malformed_mime_is_refused_and_answered_from_its_headers(env: Env) -> None:
    raw = (
        b"From: a@x.mssante.fr\r\nTo: " + BOX.encode() + b"\r\nSubject: t\r\nMessage-ID: <m1@x>\r\n"
        b"Disposition-Notification-To: a@x.mssante.fr\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter\r\n"
    )
    await _rejected(env, raw)
    assert env.smtp.sent[0][1].rcpt_to == ("a@x.mssante.fr",)


@dataclass(frozen=True)
class HeaderOnly(FetchedMail):
    size: int = 0


async def test_mail_over_the_readers_limit_is_refused_from_its_headers(env: Env, cr_img: bytes) -> None:
    raw = document_mail(cr_img)
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    env.reader.boxes[BOX] = [HeaderOnly(BOX, 1, head, size=90_000_000)]
    assert await env.poll() == 1
    await env.run()
    [mail] = env.mails()
    assert (mail.status, mail.mdn_code, mail.detail["size"]) == ("rejected", "906", 90_000_000)
    assert "trop volumineux" in (mail.reason or "") and env.count(Job, Job.kind == JobKind.MSS_INTEGRATE) == 0
    [mdn] = env.mdns()
    assert mdn.error_code == "906" and mdn.original_message_id == mail.message_id


# ------------------------------------------------------------------------------------------------------------
# Durability


async def test_same_mail_polled_twice_is_stored_once(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    raw = document_mail(cr_img)
    env.reader.deliver(raw)
    env.reader.deliver(raw)  # the operator hands it over twice (two UIDs)
    assert await env.poll() == 1
    await env.run()
    assert len(env.mails()) == 1 and env.count(Document) == 1 and len(env.dpi.received) == 1
    assert env.reader.done == {(BOX, 1), (BOX, 2)}


async def test_crash_between_store_and_mark_done_creates_no_duplicate(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    env.reader.deliver(document_mail(cr_img))
    env.reader.crash_on_mark = True
    with pytest.raises(ConnectionResetError):
        await env.poll()
    assert len(env.mails()) == 1  # committed before the mailbox was told
    env.reader.crash_on_mark = False
    assert await env.poll() == 0
    assert env.reader.done == {(BOX, 1)}
    await env.run()
    assert len(env.mails()) == 1 and env.count(Job, Job.kind == JobKind.MSS_INTEGRATE) == 1
    assert len(env.dpi.received) == 1


async def test_dpi_down_is_retried_and_nothing_is_lost(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    env.reader.deliver(document_mail(cr_img))
    await env.poll()
    env.dpi.down = True
    for _ in range(3):
        await env.pool.run_once()
    with env.db.session() as s:
        job = s.scalars(select(Job).where(Job.kind == JobKind.MSS_TO_DPI)).one()
        assert job.status == "pending" and job.attempts == 2 and "refused" in (job.last_error or "")
        assert "DPI injoignable" in (s.scalars(select(Document)).one().status_reason or "")
    assert env.smtp.sent == []
    env.dpi.down = False
    await env.run()
    assert env.mails()[0].status == "integrated" and len(env.dpi.received) == 1
    assert env.mdns()[0].ok


async def test_dpi_refusal_is_reported_with_its_code(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    env.dpi.answer = "AE"
    env.dpi.error = "ERR||PID^1^3|207^Application error^HL70357|E|902^Identifiant de patient inconnu^L\r"
    env.reader.deliver(document_mail(cr_img))
    await env.poll()
    await env.run()
    [mail] = env.mails()
    assert (mail.status, mail.mdn_code) == ("rejected", "902")
    [mdn] = env.mdns()
    assert mdn.error_code == "902" and "[KO Intégration système !][902]" in mdn.subject


async def test_dsn_or_mdn_reports_go_to_the_outbound_flow(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    report = (
        b"From: mailer-daemon@ch-test.mssante.fr\r\nTo: " + BOX.encode() + b"\r\nMessage-ID: <dsn1@x>\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nechec\r\n--B--\r\n"
    )
    calls: list[str] = []

    def recorded(s: Any, raw: bytes, mailbox: str) -> bool:
        calls.append(mailbox)
        return True

    monkeypatch.setattr(polling, "record_report", recorded)
    env.reader.deliver(report)
    assert await env.poll() == 1
    assert calls == [BOX] and env.mails() == [] and env.count(Job) == 0

    monkeypatch.setattr(polling, "record_report", lambda s, raw, mailbox: False)
    env.reader.deliver(report.replace(b"dsn1", b"dsn2"))
    await env.poll()
    [kept] = env.mails()
    assert kept.status == "triage" and "DSN/MDN" in (kept.reason or "")


# ------------------------------------------------------------------------------------------------------------
# Triage actions


async def test_attach_from_triage_integrates_on_the_chosen_patient(env: Env, cr_img: bytes) -> None:
    env.reader.deliver(document_mail(cr_img))
    await env.poll()
    await env.run()
    [mail] = env.mails()
    chosen = add_patient(env.db, status="VALI", ins=None, ipp="IPP77")
    doc_ids = await asyncio.to_thread(attach, env.db, mail.id, chosen, "secretaire.x", "patient reconnu")
    await env.run()
    assert len(doc_ids) == 1
    [mail] = env.mails()
    assert (mail.status, mail.patient_id) == ("integrated", chosen)
    pid = segments(parse(env.dpi.received[0])[0], "PID")[0]
    assert get_field(pid, 3, 1, 1) == "IPP77" and get_field(pid, 3, 1, 5) == "PI"  # no INS: not qualified
    [mdn] = env.mdns()
    assert mdn.ok and mdn.action_mode == "manual-action"
    with env.db.session() as s:
        audit = s.scalars(select(AuditEvent).where(AuditEvent.action == "mss_attach")).one()
        assert audit.actor == "secretaire.x" and audit.patient_id == chosen
    with pytest.raises(InboundError):
        attach(env.db, mail.id, chosen, "secretaire.x", "deux fois")


async def test_attach_refuses_a_qualified_patient_with_another_ins(env: Env, cr_img: bytes) -> None:
    env.reader.deliver(document_mail(cr_img))
    await env.poll()
    await env.run()
    other = add_patient(env.db, ins=OTHER_INS, ipp="IPP43")
    with pytest.raises(InboundError) as exc:
        attach(env.db, env.mails()[0].id, other, "secretaire.x", "erreur")
    assert exc.value.code == "INS_CONFLICT"
    assert env.mails()[0].status == "triage"


async def test_reject_from_triage_sends_the_refusal_code(env: Env, cr_img: bytes) -> None:
    env.reader.deliver(document_mail(cr_img))
    await env.poll()
    await env.run()
    [mail] = env.mails()
    reject(env.db, mail.id, "Patient non pris en charge dans l'établissement", "secretaire.x")
    await env.run()
    [mail] = env.mails()
    assert (mail.status, mail.mdn_code) == ("rejected", "902")
    [mdn] = env.mdns()
    assert mdn.error_code == "902" and mdn.action_mode == "manual-action"
    assert env.count(AuditEvent, AuditEvent.action == "mss_reject") == 1


# ------------------------------------------------------------------------------------------------------------
# Biology results to the DPI as ORU^R01


async def _bio_mail(env: Env, *, drain: bool = True) -> None:
    env.ctx.forward_results_oru = True
    add_patient(env.db)
    env.reader.deliver(document_mail(CR_BIO.read_bytes(), document_label="CR de biologie"))
    await env.poll()
    if drain:
        await env.run()


def _oru_exchanges(env: Env) -> list[tuple[str, str]]:
    with env.db.session() as s:
        rows = s.scalars(select(Exchange).where(Exchange.transaction == "ORU").order_by(Exchange.id))
        return [(e.outcome, e.detail or "") for e in rows]


async def test_cr_bio_results_go_to_the_dpi_as_oru_after_the_document(env: Env) -> None:
    await _bio_mail(env)
    [mdm, oru] = env.dpi.received  # the document first, then its results
    assert parse(mdm)[1].message_type == "MDM"
    message, header = parse(oru)
    assert (header.message_type, header.trigger, header.version) == ("ORU", "R01", "2.5")
    pid = segments(message, "PID")[0]
    assert get_field(pid, 3, 1, 1) == INS and get_field(pid, 3, 2, 1) == "IPP42"
    with env.db.session() as s:
        doc = s.scalars(select(Document)).one()
        loincs = list(s.scalars(select(LabResult.loinc).order_by(LabResult.id)))
        assert doc.context["oru_ack"] == "AA" and doc.status == "acknowledged"
        assert doc.context["oru_control_id"] == header.control_id
        assert (
            s.scalars(select(AuditEvent).where(AuditEvent.action == "mss_results_dpi_ack")).one().reason
            == "AA"
        )
    assert [get_field(obx, 3) for obx in segments(message, "OBX")] == loincs
    assert get_field(segments(message, "OBR")[0], 4) == "11502-2"
    assert _oru_exchanges(env) == [("success", "Résultats de biologie intégrés par le DPI")]
    assert env.count(Job, Job.kind == JobKind.MSS_RESULTS_TO_DPI) == 1
    assert env.mails()[0].status == "integrated" and env.mdns()[0].ok


async def test_no_oru_unless_configured_or_without_results(env: Env, cr_img: bytes) -> None:
    add_patient(env.db)
    env.reader.deliver(document_mail(CR_BIO.read_bytes(), document_label="CR de biologie"))
    await env.poll()
    await env.run()
    assert env.dpi.of_type("ORU") == [] and env.count(Job, Job.kind == JobKind.MSS_RESULTS_TO_DPI) == 0

    env.ctx.forward_results_oru = True
    env.reader.deliver(document_mail(cr_img))
    await env.poll()
    await env.run()
    assert len(env.dpi.of_type("MDM")) == 2
    assert env.dpi.of_type("ORU") == [] and env.count(Job, Job.kind == JobKind.MSS_RESULTS_TO_DPI) == 0


async def test_oru_waits_while_the_dpi_is_down(env: Env) -> None:
    env.dpi.down_types = {"ORU"}
    await _bio_mail(env, drain=False)
    for _ in range(5):  # integration, MDM, MDN and two ORU attempts
        await env.pool.run_once()
    with env.db.session() as s:
        job = s.scalars(select(Job).where(Job.kind == JobKind.MSS_RESULTS_TO_DPI)).one()
        assert job.status == "pending" and job.attempts == 2 and "refused" in (job.last_error or "")
        assert "oru_ack" not in s.scalars(select(Document)).one().context
    assert [o for o, _ in _oru_exchanges(env)] == ["retry", "retry"]
    assert "DPI injoignable" in _oru_exchanges(env)[0][1]
    env.dpi.down_types = set()
    await env.run()
    assert len(env.dpi.of_type("ORU")) == 1
    assert [o for o, _ in _oru_exchanges(env)] == ["retry", "retry", "success"]


async def test_oru_refusal_shows_on_the_document(env: Env) -> None:
    env.dpi.answers["ORU"] = (
        "AE",
        "ERR||OBX^1^3|103^Table value not found^HL70357|E||||Code LOINC inconnu\r",
    )
    await _bio_mail(env)
    with env.db.session() as s:
        doc = s.scalars(select(Document)).one()
        assert (
            doc.status == "acknowledged" and doc.context["oru_ack"] == "AE"
        )  # the document itself was taken
        assert doc.status_reason == "Résultats de biologie refusés par le DPI (AE) : Code LOINC inconnu"
        [finding] = [f for f in doc.findings if f["source"] == "dpi"]
        assert (finding["severity"], finding["code"]) == ("blocking", "ORU-AE")
        assert (
            s.scalars(select(AuditEvent).where(AuditEvent.action == "mss_results_dpi_ack")).one().reason
            == "AE"
        )
    assert [o for o, _ in _oru_exchanges(env)] == ["rejected"]
    assert env.mails()[0].status == "integrated" and env.mdns()[0].ok  # the MDN is about the document


async def test_oru_ar_is_retried_then_final(env: Env) -> None:
    env.ctx.ar_attempts = 2
    env.dpi.answers["ORU"] = ("AR", "")
    await _bio_mail(env)
    assert len(env.dpi.of_type("ORU")) == 2
    assert [o for o, _ in _oru_exchanges(env)] == ["retry", "rejected"]
    with env.db.session() as s:
        doc = s.scalars(select(Document)).one()
        assert doc.context["oru_ack"] == "AR" and "aucun motif donné" in (doc.status_reason or "")


# ------------------------------------------------------------------------------------------------------------
# The poller: one loop per mailbox, IDLE where the reader offers it


@dataclass
class CountingReader(FakeReader):
    fetches: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # fetches that fail before the operator answers again
    hang: set[str] = field(default_factory=set)  # mailboxes whose fetch never answers

    async def fetch_new(self, mailbox: str, limit: int) -> list[FetchedMail]:
        self.fetches[mailbox] = self.fetches.get(mailbox, 0) + 1
        if mailbox in self.hang:
            await asyncio.Event().wait()
        if self.failures:
            self.failures -= 1
            raise MailUnavailableError("Serveur IMAP MSSanté injoignable")
        return await super().fetch_new(mailbox, limit)


@dataclass
class IdleReader(CountingReader):
    news: dict[str, asyncio.Event] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)
    broken_waits: int = 0

    def _event(self, mailbox: str) -> asyncio.Event:
        return self.news.setdefault(mailbox, asyncio.Event())

    def deliver(self, raw: bytes, mailbox: str = BOX) -> None:
        super().deliver(raw, mailbox)
        self._event(mailbox).set()

    async def wait_for_news(self, mailbox: str, timeout: float) -> bool:
        if self.broken_waits:
            self.broken_waits -= 1
            raise RuntimeError("IDLE answered nonsense")
        event = self._event(mailbox)
        self.waiting.add(mailbox)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self.waiting.discard(mailbox)
        event.clear()
        return True


async def _until(check: Any, timeout: float = 5.0) -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        assert loop.time() - start < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return loop.time() - start


def _start(env: Env, reader: FakeReader, boxes: list[str], interval_s: float, **kwargs: Any) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_poller(env.db, reader, boxes, interval_s=interval_s, limit=kwargs.get("limit", 10), stop=stop)
    )
    return stop, task


async def _stop(stop: asyncio.Event, task: Any) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop.set()
    await asyncio.wait_for(task, 2.0)
    return loop.time() - start


def test_the_imap_reader_offers_idle_and_the_fakes_say_what_they_offer() -> None:
    assert isinstance(ImapMailboxReader("localhost", 993, credentials={}), IdleMailboxReader)
    assert isinstance(IdleReader(), IdleMailboxReader)
    assert not isinstance(FakeReader(), IdleMailboxReader)


async def test_news_wakes_the_idle_poller_long_before_the_interval(env: Env, cr_img: bytes) -> None:
    reader, woken = IdleReader(), []
    env.db.on_jobs_committed(lambda: woken.append(1))  # the stored mail's mss.integrate job wakes the workers
    stop, task = _start(env, reader, [BOX], 60.0)
    await _until(lambda: BOX in reader.waiting)
    reader.deliver(document_mail(cr_img))
    assert await _until(lambda: woken == [1]) < 2.0
    assert len(env.mails()) == 1 and reader.done == {(BOX, 1)}
    await _until(lambda: BOX in reader.waiting)  # back to waiting, not polling in a loop
    assert reader.fetches[BOX] == 2
    assert await _stop(stop, task) < 0.5


async def test_without_idle_the_poller_sleeps_the_interval(env: Env, cr_img: bytes) -> None:
    reader = CountingReader()
    stop, task = _start(env, reader, [BOX], 0.3)
    await _until(lambda: reader.fetches.get(BOX) == 1)
    reader.deliver(document_mail(cr_img))
    await _until(lambda: len(env.mails()) == 1)
    await asyncio.sleep(0.65)
    assert 3 <= reader.fetches[BOX] <= 5  # about one poll per interval
    assert await _stop(stop, task) < 0.5


async def test_stop_ends_every_loop_promptly(env: Env) -> None:
    idle, plain = IdleReader(), CountingReader()
    other = "dpi-bio@ch-test.mssante.fr"
    runs = [_start(env, idle, [BOX, other], 60.0), _start(env, plain, [BOX, other], 60.0)]
    await _until(lambda: idle.waiting == {BOX, other} and plain.fetches == {BOX: 1, other: 1})
    for stop, task in runs:
        assert await _stop(stop, task) < 0.5


async def test_one_stuck_mailbox_does_not_hold_the_others(env: Env, cr_img: bytes) -> None:
    reader = IdleReader(hang={"bloquee@ch-test.mssante.fr"})
    stop, task = _start(env, reader, ["bloquee@ch-test.mssante.fr", BOX], 60.0)
    await _until(lambda: BOX in reader.waiting)
    reader.deliver(document_mail(cr_img))
    await _until(lambda: len(env.mails()) == 1)
    assert await _stop(stop, task) < 0.5


async def test_failures_back_off_and_never_end_the_loop(env: Env, cr_img: bytes) -> None:
    reader = IdleReader(failures=2, broken_waits=1)
    FakeReader.deliver(reader, document_mail(cr_img))  # there before the poller starts: no news to announce
    stop, task = _start(env, reader, [BOX], 0.2)
    # Two failed polls, then a stored mail, then a broken wait: each followed by one interval, no more.
    elapsed = await _until(lambda: len(env.mails()) == 1)
    assert 0.35 < elapsed < 2.0 and reader.fetches[BOX] == 3
    await _until(lambda: BOX in reader.waiting)
    assert reader.broken_waits == 0 and reader.fetches[BOX] == 4
    assert not task.done()
    await _stop(stop, task)


async def test_a_backlog_is_drained_without_waiting(env: Env, cr_img: bytes) -> None:
    reader = CountingReader()
    for n in range(3):
        reader.deliver(handmade_mail([(cr_img, "text", "xml", f"cr{n}.xml")]))
    stop, task = _start(env, reader, [BOX], 60.0, limit=1)
    assert await _until(lambda: len(env.mails()) == 3) < 2.0
    await _stop(stop, task)


async def test_news_the_poll_does_not_find_does_not_spin(env: Env) -> None:
    @dataclass
    class Liar(IdleReader):
        async def wait_for_news(self, mailbox: str, timeout: float) -> bool:
            return True  # e.g. a mail read in a webmail above the reader's last UID: never fetched

    reader = Liar()
    stop, task = _start(env, reader, [BOX], 0.2)
    await asyncio.sleep(0.7)
    # Each spurious announcement costs one extra poll, then a plain interval: about two polls per interval.
    assert 4 <= reader.fetches[BOX] <= 10
    await _stop(stop, task)
