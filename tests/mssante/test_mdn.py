from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest

from opensegur.transactions.mdn import MdnError, build_mdn, parse_dsn, parse_mdn
from opensegur.transactions.mss_mail import parse_inbound_mail
from tests.mssante.test_mss_mail import SENDER, mail

PFI = "serviceY_auto@chb.mssante.fr"

# The volet's example (struct-msg-mdn.md) rewritten as RFC 8098 / RFC 6522 text: the published sample has no
# blank line between part headers and bodies, em-dash boundaries and "Content-Transfert-Encoding".
VOLET_MDN = (
    "Date: Wed, 20 Feb 2024 00:19:00 -0400\r\n"
    "From: serviceY_auto@chb.mssante.fr\r\n"
    "Message-Id: <199509200019.12345@chb.mssante.fr>\r\n"
    "Subject: =?utf-8?q?=5BKO_Int=C3=A9gration_syst=C3=A8me_!=5D=5B902=5D?= XDM/1.0/DDM+ECHOGRAPHIE\r\n"
    " ABDOMINOPELVIENNE CORSE FIGATELLIX 12/10/1988\r\n"
    "To: serviceY@chb.mssante.fr\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=disposition-notification; boundary="RAA14128.773615765"\r\n'
    "\r\n"
    "--RAA14128.773615765\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Le document n’a pas pu être intégré.\r\n"
    "--RAA14128.773615765\r\n"
    "Content-Type: message/disposition-notification\r\n"
    "\r\n"
    "Reporting-UA: pfi.chb.fr; PFI-Y\r\n"
    "Original-Recipient: rfc822;serviceY_auto@chb.mssante.fr\r\n"
    "Final-Recipient: rfc822; serviceY_auto@chb.mssante.fr\r\n"
    "Original-Message-ID: <199509192301.23456@cha.mssante.fr>\r\n"
    "Disposition: automatic-action/MDN-sent-automatically; processed/Error: 902^Identifiant de patient inconnu"
    "^messageErrorCondition| E^Error^errorSeverity\r\n"
    "\r\n"
    "--RAA14128.773615765\r\n"
    "Content-Type: text/rfc822-headers\r\n"
    "\r\n"
    "Message-ID: <199509192301.23456@cha.mssante.fr>\r\n"
    "Subject: XDM/1.0/DDM+ECHOGRAPHIE ABDOMINOPELVIENNE CORSE FIGATELLIX 12/10/1988\r\n"
    "\r\n"
    "--RAA14128.773615765--\r\n"
).encode()

DSN = (
    b"From: MAILER-DAEMON@mx.operateur.mssante.fr\r\n"
    b"To: dpi-auto@ch-test.mssante.fr\r\n"
    b"Subject: Delivery Status Notification\r\n"
    b"Date: Thu, 05 Mar 2026 10:00:00 +0100\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="DSN1"\r\n'
    b"\r\n"
    b"--DSN1\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Your message could not be delivered to one recipient.\r\n"
    b"--DSN1\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mx.operateur.mssante.fr\r\n"
    b"Original-Envelope-Id: <1234.5678@ch-test.mssante.fr>\r\n"
    b"Arrival-Date: Thu, 05 Mar 2026 09:59:58 +0100\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822; inconnu@medecin.mssante.fr\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1\r\n"
    b"Remote-MTA: dns; mx.medecin.mssante.fr\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 <inconnu@medecin.mssante.fr>: Recipient address rejected\r\n"
    b"\r\n"
    b"Original-Recipient: rfc822;thomas.eric@medecin.mssante.fr\r\n"
    b"Final-Recipient: rfc822; thomas.eric@medecin.mssante.fr\r\n"
    b"Action: delivered\r\n"
    b"Status: 2.0.0\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822; lent@autre.mssante.fr\r\n"
    b"Action: delayed\r\n"
    b"Status: 4.4.1\r\n"
    b"Will-Retry-Until: Fri, 06 Mar 2026 10:00:00 +0100\r\n"
    b"\r\n"
    b"--DSN1\r\n"
    b"Content-Type: text/rfc822-headers\r\n"
    b"\r\n"
    b"From: dpi-auto@ch-test.mssante.fr\r\n"
    b"Message-ID: <1234.5678@ch-test.mssante.fr>\r\n"
    b"Subject: XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE 28/03/1979\r\n"
    b"\r\n"
    b"--DSN1--\r\n"
)


def test_volet_mdn_sample_is_read() -> None:
    mdn = parse_mdn(VOLET_MDN)
    assert mdn.original_message_id == "<199509192301.23456@cha.mssante.fr>"
    assert mdn.final_recipient == mdn.original_recipient == "serviceY_auto@chb.mssante.fr"
    assert (mdn.action_mode, mdn.sending_mode, mdn.disposition) == (
        "automatic-action",
        "MDN-sent-automatically",
        "processed",
    )
    assert mdn.error_code == "902" and mdn.error_label == "Identifiant de patient inconnu"
    assert not mdn.ok
    assert mdn.subject.startswith("[KO Intégration système !][902] XDM/1.0/DDM+ECHOGRAPHIE")


def test_error_mdn_round_trip(xdm: bytes) -> None:
    original = parse_inbound_mail(mail(xdm))
    raw = build_mdn(original, from_addr=PFI, final_recipient=PFI, code="902").as_bytes()
    parsed_mail = BytesParser(policy=policy.default).parsebytes(raw)
    assert parsed_mail.get_content_type() == "multipart/report"
    assert parsed_mail.get_param("report-type") == "disposition-notification"
    parts = [p.get_content_type() for p in parsed_mail.iter_parts()]
    # Human text, report, original message, then the original attachments again (volet).
    assert parts == [
        "text/plain",
        "message/disposition-notification",
        "message/rfc822",
        "application/zip",
        "application/pdf",
    ]
    assert parsed_mail["To"] == SENDER
    mdn = parse_mdn(raw)
    assert mdn.original_message_id == original.message_id
    assert mdn.final_recipient == PFI
    assert mdn.disposition == "processed" and mdn.modifiers == ["error"]
    assert (mdn.error_code, mdn.error_label) == ("902", "Identifiant patient inconnu")
    assert mdn.subject == f"[KO Intégration système !][902] {original.subject}"
    assert "Identifiant patient inconnu" in next(parsed_mail.iter_parts()).get_content()


def test_success_mdn_round_trip(xdm: bytes) -> None:
    original = parse_inbound_mail(mail(xdm))
    raw = build_mdn(original, from_addr=PFI, final_recipient=PFI, append_attachments=False).as_bytes()
    mdn = parse_mdn(raw)
    assert mdn.ok and mdn.disposition == "processed" and mdn.error_code is None
    assert mdn.subject == original.subject
    assert len(list(BytesParser(policy=policy.default).parsebytes(raw).iter_parts())) == 3


def test_displayed_mdn_from_headers_only() -> None:
    headers = {
        "Message-ID": "<abc@ch.mssante.fr>",
        "Subject": "XDM/1.0/DDM+CR X Y 01/01/2000",
        "Disposition-Notification-To": "dpi@ch.mssante.fr",
    }
    raw = build_mdn(
        headers, from_addr=PFI, final_recipient=PFI, disposition="displayed", automatic=False
    ).as_bytes()
    mdn = parse_mdn(raw)
    assert (mdn.action_mode, mdn.sending_mode, mdn.disposition) == (
        "manual-action",
        "MDN-sent-manually",
        "displayed",
    )
    assert mdn.original_message_id == "<abc@ch.mssante.fr>"


def test_mdn_only_when_requested(xdm: bytes) -> None:
    original = parse_inbound_mail(mail(xdm, read_receipt_to=None))
    with pytest.raises(MdnError) as exc:
        build_mdn(original, from_addr=PFI, final_recipient=PFI, code="903")
    assert exc.value.code == "MDN_NOT_REQUESTED"


def test_non_mdn_refused() -> None:
    with pytest.raises(MdnError) as exc:
        parse_mdn(b"From: a@b.fr\r\nSubject: hi\r\n\r\nbody\r\n")
    assert exc.value.code == "MDN_INVALID"


def test_dsn_per_recipient() -> None:
    dsn = parse_dsn(DSN)
    assert dsn.reporting_mta == "mx.operateur.mssante.fr"
    assert dsn.original_message_id == "<1234.5678@ch-test.mssante.fr>"
    assert [(r.final_recipient, r.action, r.status) for r in dsn.recipients] == [
        ("inconnu@medecin.mssante.fr", "failed", "5.1.1"),
        ("thomas.eric@medecin.mssante.fr", "delivered", "2.0.0"),
        ("lent@autre.mssante.fr", "delayed", "4.4.1"),
    ]
    failed = dsn.recipients[0]
    assert failed.permanent_failure and failed.remote_mta == "mx.medecin.mssante.fr"
    assert failed.diagnostic and "550 5.1.1" in failed.diagnostic
    assert dsn.recipients[1].original_recipient == "thomas.eric@medecin.mssante.fr"
    assert not dsn.recipients[2].permanent_failure


def test_dsn_with_a_bad_status_is_refused() -> None:
    with pytest.raises(MdnError) as exc:
        parse_dsn(DSN.replace(b"Status: 5.1.1", b"Status: 9.9"))
    assert exc.value.code == "DSN_INVALID"
