"""SMTP submission and IMAP access of the sandbox operator, with smtplib and imapclient as real clients."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from opensegur.sandbox.mssante import MssOperator
from opensegur.security.pki import ensure_test_pki, server_ssl_context
from opensegur.transactions.mdn import parse_dsn
from opensegur.transactions.mss_mail import build_document_mail, parse_inbound_mail, smtp_envelope
from tests.mssante.conftest import CR_RADIO_V1, package
from tests.mssante.conftest import PATIENT as MAIL_PATIENT
from tests.sandbox_mssante.helpers import (
    DOCTOR,
    DPI,
    PASSWORD,
    PATIENT,
    PATIENT_BAD_KEY,
    RADIO,
    imap,
    inbox,
    mail,
    send,
)


async def test_mail_reaches_the_recipient_and_the_sender_gets_a_delivered_dsn(operator: MssOperator) -> None:
    msg = mail(DPI, [DOCTOR, RADIO], "Compte rendu d'imagerie")
    envid = str(msg["Message-ID"])
    refused = await asyncio.to_thread(
        send,
        operator,
        msg,
        mail_options=["RET=HDRS", f"ENVID={envid}"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;thomas.eric@medecin.mssante.fr"],
    )
    assert refused == {}

    [received] = await asyncio.to_thread(inbox, operator, DOCTOR)
    assert received.startswith(b"Return-Path: <dpi@hopitala.mssante.fr>\r\nReceived: from ")
    assert b"for <thomas.eric@medecin.mssante.fr>" in received
    assert b"Original-Recipient: rfc822; thomas.eric@medecin.mssante.fr" in received
    assert b"Subject: Compte rendu d'imagerie" in received
    assert len(await asyncio.to_thread(inbox, operator, RADIO)) == 1

    [report] = await asyncio.to_thread(inbox, operator, DPI)
    dsn = parse_dsn(report)
    assert dsn.envelope_id == envid
    assert dsn.original_message_id == envid
    assert dsn.reporting_mta == operator.hostname
    assert sorted(r.final_recipient or "" for r in dsn.recipients) == sorted([DOCTOR, RADIO])
    assert {(r.action, r.status) for r in dsn.recipients} == {("delivered", "2.0.0")}
    doctor = next(r for r in dsn.recipients if r.final_recipient == DOCTOR)
    assert doctor.original_recipient == DOCTOR


async def test_no_dsn_without_notify_success(operator: MssOperator) -> None:
    await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]))
    await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]), rcpt_options=["NOTIFY=NEVER"])
    assert len(await asyncio.to_thread(inbox, operator, DOCTOR)) == 2
    assert await asyncio.to_thread(inbox, operator, DPI) == []


async def test_imap_search_store_move_and_expunge(operator: MssOperator) -> None:
    for subject in ("un", "deux", "trois"):
        await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR], subject))

    def client_side() -> None:
        with imap(operator, DOCTOR) as client:
            assert client.list_folders()[0][2] == "INBOX"
            selected = client.select_folder("INBOX")
            assert selected[b"EXISTS"] == 3
            assert client.search(["UNSEEN"]) == [1, 2, 3]
            assert client.search(["SINCE", date(2020, 1, 1)]) == [1, 2, 3]
            assert client.search(["SUBJECT", "deux"]) == [2]
            data = client.fetch(
                [1], ["FLAGS", "RFC822.SIZE", "INTERNALDATE", "BODY.PEEK[HEADER]", "ENVELOPE"]
            )
            assert data[1][b"FLAGS"] == ()
            assert data[1][b"RFC822.SIZE"] > 100
            assert b"Subject: un\r\n" in data[1][b"BODY[HEADER]"]
            assert data[1][b"ENVELOPE"].subject == b"un"
            client.add_flags([1], [b"\\Seen"])
            assert client.search(["UNSEEN"]) == [2, 3]
            assert client.search(["SEEN"]) == [1]
            # BODY[] (not PEEK) marks the message read, as RFC 3501 requires.
            body = client.fetch([2], ["BODY[]"])[2]
            assert b"\\Seen" in body[b"FLAGS"]
            assert body[b"BODY[]"].endswith(b"compte rendu.\r\n")
            client.move([1], "Traites")
            assert client.search(["ALL"]) == [2, 3]
            client.create_folder("Archives")
            client.copy([2], "Archives")
            client.add_flags([3], [b"\\Deleted"])
            client.expunge()
            assert client.search(["ALL"]) == [2]
            assert client.folder_status("Traites", [b"MESSAGES", b"UNSEEN"]) == {b"MESSAGES": 1, b"UNSEEN": 0}
            assert client.folder_status("Archives", [b"MESSAGES"])[b"MESSAGES"] == 1

    await asyncio.to_thread(client_side)


async def test_idle_is_woken_by_a_delivery(operator: MssOperator) -> None:
    idling = threading.Event()

    def idle_client() -> list[tuple[int, bytes]]:
        with imap(operator, DOCTOR) as client:
            client.select_folder("INBOX")
            client.idle()
            idling.set()
            responses = client.idle_check(timeout=10)
            client.idle_done()
            return responses

    waiting = asyncio.ensure_future(asyncio.to_thread(idle_client))
    assert await asyncio.to_thread(idling.wait, 10)
    await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]))
    responses = await asyncio.wait_for(waiting, 15)
    assert (1, b"EXISTS") in responses


async def test_patient_mailbox_is_created_for_a_valid_ins_only(operator: MssOperator) -> None:
    assert PATIENT not in operator.mailboxes()
    await asyncio.to_thread(send, operator, mail(DPI, [PATIENT]))
    assert PATIENT in operator.mailboxes()
    assert len(await asyncio.to_thread(inbox, operator, PATIENT)) == 1

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(send, operator, mail(DPI, [PATIENT_BAD_KEY]))
    code, text = refused.value.recipients[PATIENT_BAD_KEY]
    assert code == 550 and text.startswith(b"5.1.1")
    assert PATIENT_BAD_KEY not in operator.mailboxes()


async def test_unknown_recipient_foreign_sender_and_missing_auth_are_refused(operator: MssOperator) -> None:
    result = await asyncio.to_thread(
        send, operator, mail(DPI, [DOCTOR]), to=[DOCTOR, "inconnu@hopitala.mssante.fr"]
    )
    assert result["inconnu@hopitala.mssante.fr"][0] == 550

    with pytest.raises(smtplib.SMTPSenderRefused) as sender:
        await asyncio.to_thread(send, operator, mail(RADIO, [DOCTOR]), login=DPI, envelope_from=RADIO)
    assert sender.value.smtp_code == 553

    def without_auth() -> None:
        with smtplib.SMTP(operator.host, operator.smtp_port, timeout=10) as smtp:
            smtp.send_message(mail(DPI, [DOCTOR]))

    with pytest.raises(smtplib.SMTPSenderRefused) as no_auth:
        await asyncio.to_thread(without_auth)
    assert no_auth.value.smtp_code == 530


async def test_wrong_password_is_refused_on_both_protocols(operator: MssOperator) -> None:
    with pytest.raises(smtplib.SMTPAuthenticationError) as smtp_error:
        await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]), password="faux")
    assert smtp_error.value.smtp_code == 535

    def imap_login(login: str, password: str) -> None:
        with IMAPClient(operator.host, port=operator.imap_port, ssl=False, timeout=10) as client:
            client.login(login, password)

    with pytest.raises(LoginError):
        await asyncio.to_thread(imap_login, DPI, "faux")
    with pytest.raises(LoginError):
        await asyncio.to_thread(imap_login, "personne@hopitala.mssante.fr", PASSWORD)

    def plain_login() -> list[int]:
        with IMAPClient(operator.host, port=operator.imap_port, ssl=False, timeout=10) as client:
            client.plain_login(DPI, PASSWORD)
            client.select_folder("INBOX")
            return list(client.search())

    assert await asyncio.to_thread(plain_login) == []


async def test_size_limit(tmp_path: Path) -> None:
    op = MssOperator(tmp_path, [DPI], PASSWORD, max_message_bytes=5_000, include_ans_examples=False)
    await op.start()
    try:
        big = mail(DPI, [DPI])
        big.set_content(("x" * 70 + "\n") * 150)
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await asyncio.to_thread(send, op, big)
        assert refused.value.smtp_code == 552

        def without_size_announcement() -> None:
            with smtplib.SMTP(op.host, op.smtp_port, timeout=10) as smtp:
                smtp.login(DPI, PASSWORD)
                smtp.esmtp_features.pop("size", None)
                smtp.sendmail(DPI, [DPI], big.as_string())

        with pytest.raises(smtplib.SMTPDataError) as data_error:
            await asyncio.to_thread(without_size_announcement)
        assert data_error.value.smtp_code == 552
        assert await asyncio.to_thread(inbox, op, DPI) == []
    finally:
        await op.stop()


async def test_mailboxes_and_uids_survive_a_restart(tmp_path: Path) -> None:
    op = MssOperator(tmp_path, [DPI], PASSWORD)
    await op.start()
    try:
        for subject in ("a", "b", "c"):
            await op.deliver(DOCTOR, mail(DPI, [DOCTOR], subject).as_bytes())
        await op.deliver(PATIENT, mail(DPI, [PATIENT]).as_bytes())

        def delete_second() -> int:
            with imap(op, DOCTOR) as client:
                validity = client.select_folder("INBOX")[b"UIDVALIDITY"]
                client.add_flags([2], [b"\\Deleted"])
                client.uid_expunge([2])
                return int(validity)

        validity = await asyncio.to_thread(delete_second)
    finally:
        await op.stop()

    again = MssOperator(tmp_path, [], PASSWORD)
    await again.start()
    try:
        assert PATIENT in again.mailboxes() and DPI in again.mailboxes()
        await again.deliver(DOCTOR, mail(DPI, [DOCTOR], "d").as_bytes())

        def reread() -> tuple[int, dict[int, bytes]]:
            with imap(again, DOCTOR) as client:
                selected = client.select_folder("INBOX")
                data = client.fetch(client.search(), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
                return int(selected[b"UIDVALIDITY"]), {
                    uid: d[b"BODY[HEADER.FIELDS (SUBJECT)]"] for uid, d in data.items()
                }

        new_validity, subjects = await asyncio.to_thread(reread)
    finally:
        await again.stop()
    assert new_validity == validity
    assert subjects == {1: b"Subject: a\r\n\r\n", 3: b"Subject: c\r\n\r\n", 4: b"Subject: d\r\n\r\n"}


async def test_document_mail_from_the_platform_builders_is_received_intact(operator: MssOperator) -> None:
    cda = CR_RADIO_V1.read_bytes()
    msg = build_document_mail(
        sender=DPI,
        recipients=[DOCTOR],
        patient=MAIL_PATIENT,
        document_label="CR d'imagerie médicale",
        xdm_zip=package(cda),
        body_text="Bonjour, veuillez trouver le compte rendu.",
        nil="OPENSEGUR-TEST",
        ins_qualified=True,
        read_receipt_to=DPI,
    )
    envelope = smtp_envelope(msg, return_receipt=True)

    def submit() -> None:
        with smtplib.SMTP(operator.host, operator.smtp_port, timeout=10) as smtp:
            smtp.login(DPI, PASSWORD)
            smtp.send_message(
                msg,
                envelope.mail_from,
                list(envelope.rcpt_to),
                list(envelope.mail_options),
                list(envelope.rcpt_options),
            )

    await asyncio.to_thread(submit)
    [raw] = await asyncio.to_thread(inbox, operator, DOCTOR)
    inbound = parse_inbound_mail(raw)
    assert inbound.message_id == msg["Message-ID"]
    assert inbound.mss_headers["X-MSS-INS"] == "O"
    assert inbound.disposition_notification_to == DPI
    assert len(inbound.xdm_zips) == 1
    [report] = await asyncio.to_thread(inbox, operator, DPI)
    assert parse_dsn(report).recipients[0].action == "delivered"


async def test_nested_folders_append_and_namespace(operator: MssOperator) -> None:
    raw = mail(DPI, [DOCTOR], "Archivé").as_bytes().replace(b"\n", b"\r\n")

    def client_side() -> None:
        with imap(operator, DOCTOR) as client:
            assert client.namespace().personal == (("", "/"),)
            client.create_folder("OpenSegur/Traites")
            listed = {name: attributes for attributes, _, name in client.list_folders()}
            assert b"\\HasChildren" in listed["OpenSegur"]
            assert b"\\HasNoChildren" in listed["OpenSegur/Traites"]
            assert "OpenSegur/Traites" not in {name for _, _, name in client.list_folders("", "%")}
            answer = client.append(
                "OpenSegur/Traites", raw, flags=[b"\\Seen"], msg_time=datetime(2024, 2, 1, 9, 30, tzinfo=UTC)
            )
            assert b"[APPENDUID " in answer
            with pytest.raises(IMAPClientError, match="TRYCREATE"):
                client.append("Nulle/Part", raw)
            with pytest.raises(IMAPClientError, match="CANNOT"):
                client.create_folder("../evasion")
            client.select_folder("OpenSegur/Traites")
            assert client.search(["SEEN", "BEFORE", date(2024, 2, 2), "SINCE", date(2024, 2, 1)]) == [1]
            data = client.fetch([1], ["INTERNALDATE", "BODY.PEEK[]"])[1]
            assert data[b"BODY[]"] == raw
            assert data[b"INTERNALDATE"].replace(tzinfo=None) == datetime(2024, 2, 1, 9, 30)
            # "n:*" matches the last message even when its UID is below n (RFC 3501 §6.4.8).
            assert client.search(["UID", "5:*"]) == [1]
            assert client.search(["NOT", "DELETED", "UID", "1:*"]) == [1]

    await asyncio.to_thread(client_side)


async def test_starttls_is_required_before_authentication_when_tls_is_configured(tmp_path: Path) -> None:
    pki = await asyncio.to_thread(ensure_test_pki, tmp_path / "pki")
    op = MssOperator(tmp_path, [DPI], PASSWORD, tls=server_ssl_context(pki, require_client_cert=False))
    await op.start()
    client_tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    try:

        def smtp_side() -> None:
            with smtplib.SMTP(op.host, op.smtp_port, timeout=10) as smtp:
                with pytest.raises(smtplib.SMTPNotSupportedError):
                    smtp.login(DPI, PASSWORD)  # AUTH is not even offered in clear
                smtp.starttls(context=client_tls)
                smtp.login(DPI, PASSWORD)
                assert smtp.send_message(mail(DPI, [DPI])) == {}

        def imap_side() -> list[int]:
            with IMAPClient(op.host, port=op.imap_port, ssl=False, timeout=10) as client:
                assert b"LOGINDISABLED" in client.capabilities()
                with pytest.raises(LoginError):
                    client.login(DPI, PASSWORD)
                client.starttls(client_tls)
                client.login(DPI, PASSWORD)
                client.select_folder("INBOX")
                return list(client.search(["ALL"]))

        await asyncio.to_thread(smtp_side)
        assert await asyncio.to_thread(imap_side) == [1]
    finally:
        await op.stop()
