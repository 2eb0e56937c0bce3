from __future__ import annotations

import base64
import re
from datetime import datetime
from email import policy
from email.parser import BytesParser
from zoneinfo import ZoneInfo

import pytest

from opensegur.transactions.mss_mail import (
    MailError,
    build_document_mail,
    build_patient_appointment_mail,
    document_subject,
    open_packages,
    parse_inbound_mail,
    patient_mailbox,
    smtp_envelope,
    verify_ins_claim,
)
from tests.mssante.conftest import INS, MSS_EXAMPLES, OTHER_INS, PATIENT, other_patient_cda, package

SENDER = "dpi-auto@ch-test.mssante.fr"
DOCTOR = "thomas.eric@medecin.mssante.fr"
SUBJECT_RE = re.compile(r"^XDM/1\.0/DDM\+(.+) (\S+) (\S+) (\d{2}/\d{2}/\d{4})$")


def mail(xdm: bytes, **kwargs: object) -> bytes:
    args: dict[str, object] = {
        "sender": SENDER,
        "recipients": [DOCTOR],
        "patient": PATIENT,
        "document_label": "CR d'imagerie médicale",
        "xdm_zip": xdm,
        "body_text": "Bonjour,\nVeuillez trouver le compte rendu ci-joint.",
        "nil": "DEV935997",
        "ins_qualified": True,
        "read_receipt_to": SENDER,
        "pdf_attachments": [("CR.pdf", b"%PDF-1.4\n%fake but magic-correct\n")],
    }
    args.update(kwargs)
    return build_document_mail(**args).as_bytes()  # type: ignore[arg-type]


def test_subject_matches_the_ans_examples_form() -> None:
    subject = document_subject("CR d'imagerie médicale", PATIENT)
    assert subject == "XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979"
    # The subject the PFI copied into OBX-3.2 of the ANS MDM example has the same shape.
    er7 = (
        MSS_EXAMPLES / "Transmission initiale MDM" / "message_MDM__LPS_MSS_CR_Radio_INIT_N1.er7"
    ).read_text()
    obx = next(line for line in er7.splitlines() if "XDM/1.0/DDM" in line)
    example_subject = obx.split("|")[3].split("^")[1]
    assert SUBJECT_RE.match(example_subject)
    assert SUBJECT_RE.match(subject)
    assert base64.b64decode(obx.split("|")[5].split("^")[4]) == b"Corps du courriel"


def test_document_mail_round_trip(xdm: bytes, cda: bytes) -> None:
    raw = mail(xdm, send_to_patient=True, patient_no_reply=True)
    parsed = parse_inbound_mail(raw)
    assert parsed.subject == "XDM/1.0/DDM+CR d'imagerie médicale PAT-TROIS DOMINIQUE 28/03/1979"
    assert parsed.from_addr == SENDER
    assert parsed.to == [DOCTOR, f"{INS}@patient.mssante.fr"]
    assert parsed.mss_headers == {
        "X-MSS-NIL": "DEV935997",
        "X-MSS-CODECDA": "18748-4",
        "X-MSS-INS": "O",
        "X-MSS-MES": "FIN",
    }
    assert parsed.cda_codes == ["18748-4"]
    assert parsed.disposition_notification_to == SENDER
    assert parsed.message_id and parsed.message_id.endswith("@ch-test.mssante.fr>")
    assert parsed.body_text.replace("\r\n", "\n").startswith("Bonjour,\nVeuillez")
    assert parsed.xdm_zips == [xdm]
    assert [a.filename for a in parsed.pdf_attachments] == ["CR.pdf"]
    assert (
        parsed.ins_claim is not None and parsed.ins_claim.qualified is True and not parsed.ins_claim.trusted
    )
    packages, bare = open_packages(parsed)
    assert packages[0].documents[0].content == cda and bare == []
    assert verify_ins_claim(parsed, packages) is parsed.ins_claim and parsed.ins_claim.trusted


def test_unqualified_identity_sends_n_and_never_to_the_patient(xdm: bytes) -> None:
    headers = BytesParser(policy=policy.default).parsebytes(mail(xdm, ins_qualified=False))
    assert headers["X-MSS-INS"] == "N"
    assert "X-MSS-MES" not in headers
    with pytest.raises(MailError) as exc:
        mail(xdm, ins_qualified=False, send_to_patient=True)
    assert exc.value.code == "MSS_INS_NOT_QUALIFIED"
    with pytest.raises(MailError) as exc:
        patient_mailbox(INS, ins_qualified=False)
    assert exc.value.code == "MSS_INS_NOT_QUALIFIED"


def test_patient_mailbox_rules() -> None:
    assert patient_mailbox("2 79 03 51 215 189 89", ins_qualified=True) == f"{INS}@patient.mssante.fr"
    with pytest.raises(MailError) as exc:
        patient_mailbox("279035121518988", ins_qualified=True)  # wrong key
    assert exc.value.code == "MSS_INS_INVALID"


def test_another_patients_mailbox_is_refused(xdm: bytes) -> None:
    with pytest.raises(MailError) as exc:
        mail(xdm, recipients=[f"{OTHER_INS}@patient.mssante.fr"])
    assert exc.value.code == "MSS_WRONG_PATIENT"


def test_package_of_another_patient_is_refused(cda: bytes) -> None:
    with pytest.raises(MailError) as exc:
        mail(package(other_patient_cda(cda)))
    assert exc.value.code == "MSS_WRONG_PATIENT"


def test_envelope_requests_dsn_when_a_return_receipt_is_wanted(xdm: bytes) -> None:
    msg = BytesParser(policy=policy.default).parsebytes(mail(xdm))
    env = smtp_envelope(msg, return_receipt=True)  # type: ignore[arg-type]
    assert env.mail_from == SENDER and env.rcpt_to == (DOCTOR,)
    assert env.rcpt_options == ("NOTIFY=SUCCESS,FAILURE,DELAY",)
    assert env.mail_options[0] == "RET=HDRS" and env.mail_options[1].startswith("ENVID=<")
    assert smtp_envelope(msg, return_receipt=False).rcpt_options == ()  # type: ignore[arg-type]


def test_appointment_mail_to_the_patient() -> None:
    when = datetime(2026, 3, 5, 14, 30, tzinfo=ZoneInfo("Europe/Paris"))
    msg = build_patient_appointment_mail(
        sender=SENDER, patient_ins=INS, qualified=True, when=when, place="CH Test, radiologie, bâtiment B",
        preparation="Venir à jeun.", nil="DEV935997",
    )  # fmt: skip
    assert msg["To"] == f"{INS}@patient.mssante.fr"
    assert msg["X-MSS-MES"] == "FIN" and msg["Reply-To"] is None
    assert msg["Subject"] == "Votre rendez-vous du 05/03/2026 à 14h30"
    body = msg.get_content()
    assert "Venir à jeun." in body and "pas possible d'y répondre" in body
    with pytest.raises(MailError):
        build_patient_appointment_mail(
            sender=SENDER, patient_ins=INS, qualified=False, when=when, place="x", preparation="", nil="N",
        )  # fmt: skip
    allowed = build_patient_appointment_mail(
        sender=SENDER,
        patient_ins=INS,
        qualified=True,
        when=when,
        place="x",
        preparation="",
        nil="N",
        no_reply=False,
    )
    assert "X-MSS-MES" not in allowed


# ------------------------------------------------------------------------------------------------------------
# Hostile inbound mails


def test_forged_x_mss_ins_matricule_does_not_match_the_cda(xdm: bytes) -> None:
    raw = mail(xdm).replace(b"X-MSS-INS: O", f"X-MSS-INS: {OTHER_INS}".encode())
    parsed = parse_inbound_mail(raw)
    assert parsed.ins_claim is not None and parsed.ins_claim.matricule == OTHER_INS
    packages, _ = open_packages(parsed)
    with pytest.raises(MailError) as exc:
        verify_ins_claim(parsed, packages)
    assert exc.value.code == "MSS_INS_MISMATCH"
    assert not parsed.ins_claim.trusted


def test_x_mss_ins_o_with_a_cda_without_traits(cda: bytes) -> None:
    stripped = re.sub(rb"<administrativeGenderCode[^>]*/>", b"", cda, count=1)
    assert stripped != cda
    raw = mail(package(stripped), ins_qualified=False).replace(b"X-MSS-INS: N", b"X-MSS-INS: O")
    parsed = parse_inbound_mail(raw)
    with pytest.raises(MailError) as exc:
        verify_ins_claim(parsed, open_packages(parsed)[0])
    assert exc.value.code == "MSS_INS_MISMATCH"


def test_two_patients_in_one_message(xdm: bytes, cda: bytes) -> None:
    raw = mail(xdm, cda_attachments=[("autre.xml", other_patient_cda(cda))])
    parsed = parse_inbound_mail(raw)
    assert len(parsed.cda_attachments) == 1
    with pytest.raises(MailError) as exc:
        open_packages(parsed)
    assert exc.value.code == "MSS_MULTIPLE_PATIENTS"


HEAD = b"From: a@x.mssante.fr\r\nTo: b@y.mssante.fr\r\nSubject: t\r\nMIME-Version: 1.0\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter\r\n",
        HEAD + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\nthe boundary never appears\r\n',
        HEAD
        + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\n'
        + b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
        + b'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n\r\nUEsDBBQAAAAI',  # truncated
    ],
    ids=["missing-boundary", "boundary-not-found", "truncated"],
)
def test_malformed_mime(raw: bytes) -> None:
    with pytest.raises(MailError) as exc:
        parse_inbound_mail(raw)
    assert exc.value.code == "MAIL_MALFORMED"


def test_mail_without_from_is_refused() -> None:
    with pytest.raises(MailError) as exc:
        parse_inbound_mail(b"To: b@y.mssante.fr\r\nSubject: t\r\n\r\nbody\r\n")
    assert exc.value.code == "MAIL_MALFORMED"


def test_oversized_mail_refused_before_parsing() -> None:
    with pytest.raises(MailError) as exc:
        parse_inbound_mail(HEAD + b"\r\n" + b"x" * 2000, max_bytes=1000)
    assert exc.value.code == "MAIL_TOO_LARGE"


def test_100_mb_attachment_refused_by_size_before_decoding() -> None:
    body = base64.encodebytes(bytes(100 * 1024 * 1024))
    raw = (
        HEAD
        + b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\n'
        + b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        + b'Content-Disposition: attachment; filename="huge.pdf"\r\n\r\n'
        + body
        + b"\r\n--B--\r\n"
    )
    del body
    with pytest.raises(MailError) as exc:
        parse_inbound_mail(raw, max_bytes=200_000_000, max_attachment=25_000_000)
    assert exc.value.code == "MAIL_ATTACHMENT_TOO_LARGE"


def test_fake_pdf_refused(xdm: bytes) -> None:
    raw = mail(xdm, pdf_attachments=[("CR.pdf", b"MZ\x90\x00 an executable")])
    with pytest.raises(MailError) as exc:
        parse_inbound_mail(raw)
    assert exc.value.code == "MAIL_ATTACHMENT_INVALID"


def test_header_injection_in_label_is_neutralised(xdm: bytes) -> None:
    raw = mail(xdm, document_label="CR\r\nBcc: spy@evil.example")
    parsed = parse_inbound_mail(raw)
    assert "Bcc" not in (parsed.message or {}) and parsed.subject.startswith("XDM/1.0/DDM+CR Bcc:")
