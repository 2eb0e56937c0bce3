"""Delivery reports (RFC 3464), read receipts (RFC 8098) and injected faults of the sandbox operator."""

from __future__ import annotations

import asyncio
import smtplib
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from opensegur.sandbox.mssante import MssFault, MssOperator
from opensegur.transactions.mdn import parse_dsn, parse_mdn
from tests.sandbox_mssante.helpers import DOCTOR, DPI, PASSWORD, RADIO, inbox, mail, send

NOTIFY_ALL = ["NOTIFY=SUCCESS,FAILURE,DELAY"]


async def wait_for_messages(op: MssOperator, mailbox: str, count: int) -> list[bytes]:
    for _ in range(100):
        messages = await asyncio.to_thread(inbox, op, mailbox)
        if len(messages) >= count:
            return messages
        await asyncio.sleep(0.05)
    raise AssertionError(f"{mailbox}: fewer than {count} messages")


async def test_reading_a_message_sends_one_displayed_mdn(operator: MssOperator) -> None:
    msg = mail(DPI, [DOCTOR], "Résultats", notify_to=DPI)
    await asyncio.to_thread(send, operator, msg)
    first = await operator.read(DOCTOR, 1)
    assert first["mdn"] == "delivered" and first["mdn_to"] == DPI
    assert (await operator.read(DOCTOR, 1))["mdn"] == "already_sent"

    [raw] = await asyncio.to_thread(inbox, operator, DPI)
    mdn = parse_mdn(raw)
    assert mdn.disposition == "displayed"
    assert mdn.original_message_id == msg["Message-ID"]
    assert mdn.final_recipient == DOCTOR
    assert (mdn.action_mode, mdn.sending_mode) == ("manual-action", "MDN-sent-manually")
    assert mdn.ok
    seen = operator.inspect(DOCTOR)["folders"]["INBOX"][0]["flags"]
    assert seen == ["\\Seen"]


async def test_no_mdn_when_none_was_asked(operator: MssOperator) -> None:
    await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]))
    assert (await operator.read(DOCTOR, 1))["mdn"] is None
    assert await asyncio.to_thread(inbox, operator, DPI) == []


async def test_refused_recipient_for_a_number_of_messages(operator: MssOperator) -> None:
    operator.set_fault(MssFault(kind="refuse_recipient", recipient=DOCTOR, count=1))
    result = await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR, RADIO]))
    assert result[DOCTOR][0] == 550
    assert result[DOCTOR][1].startswith(b"5.1.1")
    assert await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR])) == {}
    assert len(await asyncio.to_thread(inbox, operator, DOCTOR)) == 1
    assert len(await asyncio.to_thread(inbox, operator, RADIO)) == 1


async def test_mailbox_full_temporary_then_permanent(operator: MssOperator) -> None:
    operator.set_fault(MssFault(kind="mailbox_full", recipient=DOCTOR))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as temporary:
        await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]))
    assert temporary.value.recipients[DOCTOR][0] == 452
    assert temporary.value.recipients[DOCTOR][1].startswith(b"4.2.2")

    operator.set_fault(MssFault(kind="mailbox_full", permanent=True))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as permanent:
        await asyncio.to_thread(send, operator, mail(DPI, [RADIO]))
    assert permanent.value.recipients[RADIO][0] == 552
    operator.clear_faults()
    assert await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR])) == {}


async def test_unavailable_answers_421_at_connection(operator: MssOperator) -> None:
    operator.set_fault(MssFault(kind="unavailable", count=1))
    with pytest.raises(smtplib.SMTPConnectError) as unavailable:
        await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]))
    assert unavailable.value.smtp_code == 421
    assert await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR])) == {}


async def test_delay_reports_delayed_then_delivered_when_cleared(operator: MssOperator) -> None:
    operator.set_fault(MssFault(kind="delay", recipient=DOCTOR, delay_s=600))
    msg = mail(DPI, [DOCTOR])
    await asyncio.to_thread(
        send, operator, msg, mail_options=[f"ENVID={msg['Message-ID']}"], rcpt_options=NOTIFY_ALL
    )
    [delayed] = await asyncio.to_thread(inbox, operator, DPI)
    report = parse_dsn(delayed)
    assert [(r.action, r.status) for r in report.recipients] == [("delayed", "4.4.7")]
    assert report.envelope_id == msg["Message-ID"]
    assert await asyncio.to_thread(inbox, operator, DOCTOR) == []

    operator.clear_faults()  # ends the delay at once
    await wait_for_messages(operator, DOCTOR, 1)
    reports = await wait_for_messages(operator, DPI, 2)
    assert [(r.action, r.status) for r in parse_dsn(reports[1]).recipients] == [("delivered", "2.0.0")]


async def test_delayed_delivery_survives_a_restart(tmp_path: Path) -> None:
    op = MssOperator(tmp_path, [DPI], PASSWORD)
    await op.start()
    try:
        op.set_fault(MssFault(kind="delay", delay_s=600))
        await asyncio.to_thread(send, op, mail(DPI, [DOCTOR], "Différé"))
    finally:
        await op.stop()
    assert len(list((tmp_path / "mssante" / ".spool").glob("*.json"))) == 1

    again = MssOperator(tmp_path, [DPI], PASSWORD)
    await again.start()
    try:
        [raw] = await wait_for_messages(again, DOCTOR, 1)
        assert BytesParser(policy=policy.default).parsebytes(raw)["Subject"] == "Différé"
    finally:
        await again.stop()
    assert list((tmp_path / "mssante" / ".spool").iterdir()) == []


async def test_bounce_reports_failed_with_the_given_status(operator: MssOperator) -> None:
    operator.set_fault(MssFault(kind="bounce", recipient=RADIO, status="5.2.2"))
    await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR, RADIO]), mail_options=["RET=FULL"])
    assert len(await asyncio.to_thread(inbox, operator, DOCTOR)) == 1
    assert await asyncio.to_thread(inbox, operator, RADIO) == []
    [raw] = await asyncio.to_thread(inbox, operator, DPI)
    report = parse_dsn(raw)
    [failed] = report.recipients
    assert (failed.final_recipient, failed.action, failed.status) == (RADIO, "failed", "5.2.2")
    assert failed.permanent_failure
    assert report.original_message_id is not None and report.original_message_id.startswith("<")


async def test_invalid_dsn_parameters_are_refused(operator: MssOperator) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as bad_notify:
        await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]), rcpt_options=["NOTIFY=SOMETIMES"])
    assert bad_notify.value.recipients[DOCTOR][0] == 501
    with pytest.raises(smtplib.SMTPSenderRefused) as bad_ret:
        await asyncio.to_thread(send, operator, mail(DPI, [DOCTOR]), mail_options=["RET=ALL"])
    assert bad_ret.value.smtp_code == 501


async def test_xtext_cannot_smuggle_header_lines(operator: MssOperator) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as orcpt:
        await asyncio.to_thread(
            send, operator, mail(DPI, [DOCTOR]), rcpt_options=["ORCPT=rfc822;a@b.fr+0D+0ABcc:+20x@y.fr"]
        )
    assert orcpt.value.recipients[DOCTOR][0] == 501
    with pytest.raises(smtplib.SMTPSenderRefused) as envid:
        await asyncio.to_thread(
            send, operator, mail(DPI, [DOCTOR]), mail_options=["ENVID=x+0D+0AX-Evil:+201"]
        )
    assert envid.value.smtp_code == 501
    assert await asyncio.to_thread(inbox, operator, DOCTOR) == []
