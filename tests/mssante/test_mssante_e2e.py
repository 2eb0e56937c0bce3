"""MSSanté end to end through the running platform and its sandbox operator (real SMTP, IMAP and MLLP).

Outbound: the ANS MDM example over MLLP → ACK AA → mail in the professional's (and the patient's) sandbox mailbox
→ DSN → ZAM^Z02 at the DPI → the recipient reads → MDN → ZAM^Z03.
Inbound: ANS example CDAs mailed to a hospital mailbox → polled → MDM to the DPI → DPI ACK → MDN to the sender;
lab results of a CR-BIO on the API and the patient page; an unknown patient's mail in triage.
"""

from __future__ import annotations

import asyncio
import email.utils
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from opensegur.server import Runtime
from opensegur.store.models import Delivery, Mail
from opensegur.transactions.hl7v2 import parse
from opensegur.transactions.hl7v2_message import get_field, segments
from opensegur.transactions.mdn import Mdn, parse_mdn
from opensegur.transactions.mss_mail import MailPatient
from opensegur.transactions.xdm import read_xdm
from opensegur.transactions.zam import ZamMessage
from tests.dmp.helpers import MDM_EXAMPLES, cda_of, send_raw
from tests.mssante.conftest import OTHER_INS, VAGUE2, other_patient_cda
from tests.mssante.helpers import (
    CR_BIO,
    CR_IMG,
    DOCTOR,
    HOSPITAL_SENDER,
    INS,
    PATIENT_BOX,
    PRT_RECIPIENT,
    RADIOLOGY,
    DpiStub,
    admin,
    deliver,
    document_mail,
    imap_messages,
    inspect,
    mss_platform,
    obx_cda,
    parse_mail,
    published_endpoints,
    schematron_cache,
    set_obx,
    wait_for,
)
from tests.test_server import chromium

__all__ = ["mss_platform", "schematron_cache"]  # fixtures, imported for pytest


def example_mdm(**flags: str) -> bytes:
    raw = MDM_EXAMPLES["initial"].read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    for code, value in flags.items():
        raw = set_obx(raw, code, value)
    return raw


async def _document_mail(endpoints: dict[str, Any], mailbox: str) -> Any:
    """The platform's document mail in ``mailbox``, read over IMAP as its owner, once it is there: (uid, raw)."""

    async def arrived() -> tuple[int, bytes] | None:
        for uid, raw in (await imap_messages(endpoints, mailbox)).items():
            if str(parse_mail(raw)["Subject"] or "").startswith("XDM/1.0/DDM+"):
                return uid, raw
        return None

    return await wait_for(arrived, f"the document mail in {mailbox}")


def _check_document_mail(raw: bytes, recipient: str, cda: bytes) -> str:
    msg = parse_mail(raw)
    assert str(msg["Subject"]).startswith("XDM/1.0/DDM+"), msg["Subject"]
    assert "PAT-TROIS" in str(msg["Subject"])
    assert email.utils.parseaddr(str(msg["From"]))[1].lower() == HOSPITAL_SENDER
    assert recipient in str(msg["To"]).lower()
    assert msg["X-MSS-INS"] == "O"
    assert msg["X-MSS-CODECDA"] == "18748-4"
    assert msg["X-MSS-NIL"]
    [xdm] = [p for p in msg.iter_attachments() if p.get_filename() == "IHE_XDM.ZIP"]
    package = read_xdm(xdm.get_content())
    [document] = package.documents
    assert document.content == cda
    assert document.cda is not None and document.cda.patient.ins_matricule == "279035121518989"
    return str(msg["Message-ID"])


async def test_outbound_mdm_example_reaches_the_professional_mailbox(
    mss_platform: tuple[Runtime, DpiStub],
) -> None:
    rt, _dpi = mss_platform
    endpoints = await published_endpoints(rt)
    raw = example_mdm(DESTMSSANTEPS="Y")
    sent = await send_raw(rt, raw)
    assert sent.code == "AA", sent.ack

    _uid, mail = await _document_mail(endpoints, PRT_RECIPIENT)
    _check_document_mail(mail, PRT_RECIPIENT, cda_of(raw))
    # DESTMSSANTEPAT=N: nothing for the patient (the operator creates a patient mailbox on first delivery).
    with rt.db.session() as s:
        destinations = set(s.scalars(select(Delivery.destination)))
    assert "MSSANTE_PS" in destinations and "MSSANTE_PAT" not in destinations, destinations
    async with httpx.AsyncClient() as c:
        r = await c.get(endpoints["mssante"]["inspect"], params={"mailbox": PATIENT_BOX})
    assert r.status_code == 404, r.text


async def test_outbound_to_professional_and_patient_with_receipts_gives_z02_then_z03(
    mss_platform: tuple[Runtime, DpiStub],
) -> None:
    rt, dpi = mss_platform
    endpoints = await published_endpoints(rt)
    raw = example_mdm(
        DESTMSSANTEPS="Y", DESTMSSANTEPAT="Y", ACK_RECEPTION="Y", ACK_LECTURE_MSS="Y", DESTDMP="N"
    )
    sent = await send_raw(rt, raw)
    assert sent.code == "AA", sent.ack
    cda = cda_of(raw)

    uid_ps, mail_ps = await _document_mail(endpoints, PRT_RECIPIENT)
    message_id = _check_document_mail(mail_ps, PRT_RECIPIENT, cda)
    _uid_pat, mail_pat = await _document_mail(endpoints, PATIENT_BOX)
    _check_document_mail(mail_pat, PATIENT_BOX, cda)
    assert parse_mail(mail_ps)["Disposition-Notification-To"]

    # The operator's DSN lands in the hospital mailbox the platform polls: one Z02 per recipient.
    async def z02() -> list[ZamMessage]:
        found = [z for z in dpi.zams(sent.cid) if z.header.trigger == "Z02"]
        return found if len(found) >= 2 else []

    receptions = await wait_for(z02, "ZAM^Z02 for both recipients")
    assert {z.status.recipient_address for z in receptions} == {PRT_RECIPIENT, PATIENT_BOX}
    assert all(z.status.success and z.status.kind == "reception_mss" for z in receptions)

    # The professional opens the mail: the sandbox sends the MDN, the platform answers Z03.
    read = await admin(rt, "POST", "/read", params={"mailbox": PRT_RECIPIENT, "uid": uid_ps})
    assert read["mdn"] == "delivered", read

    async def z03() -> list[ZamMessage]:
        return [z for z in dpi.zams(sent.cid) if z.header.trigger == "Z03"]

    [lecture] = await wait_for(z03, "ZAM^Z03 after the recipient read the mail")
    assert lecture.status.success and lecture.status.kind == "lecture_mss"
    assert lecture.status.recipient_address == PRT_RECIPIENT

    with rt.db.session() as s:
        outgoing = {
            tuple(m.recipients): (m.status, m.message_id)
            for m in s.scalars(select(Mail).where(Mail.direction == "out", Mail.document_id.is_not(None)))
        }
    assert outgoing[(PRT_RECIPIENT,)] == ("read", message_id)
    assert outgoing[(PATIENT_BOX,)][0] == "delivered" and len(outgoing) == 2


# ---- inbound ------------------------------------------------------------------------------------------------

PAM_EXAMPLE = VAGUE2 / "Consentement_DMP_PAMFR" / "ConsentementConsultation_NonOppositionAlimentation.er7"


async def _qualified_patient(rt: Runtime) -> int:
    """The patient of the ANS CDA examples, qualified through the ANS PAM example (GAM: VALI, checked by INSi).

    The PAM example gives PID-5.3 (birth first names) as "DOMINIQUE" only, whereas the INS reference identity
    (sandbox INSi) and every CDA example give "DOMINIQUE MARIE-LOUISE": with the example as published, the
    inbound flow rightly refuses to match (traits differ, code 904). The list is corrected to the INS one.
    """
    raw = PAM_EXAMPLE.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    published = b"|PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L|"
    assert published in raw
    raw = raw.replace(published, b"|PAT-TROIS^DOMINIQUE^DOMINIQUE MARIE-LOUISE^^^^L|")
    sent = await send_raw(rt, raw)
    assert sent.code == "AA", sent.ack

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}") as c:

        async def qualified() -> int | None:
            r = await c.get("/api/v1/patients", params={"ins": INS})
            r.raise_for_status()
            items = [p for p in r.json()["items"] if p["status"]["code"] == "QUAL"]
            return int(items[0]["id"]) if items else None

        return int(await wait_for(qualified, f"the PAM example's patient qualified (INS {INS})"))


async def _mdm(dpi: DpiStub, count: int = 1) -> list[bytes]:
    async def arrived() -> list[bytes]:
        found = dpi.of_type("MDM")
        return found if len(found) >= count else []

    return list(await wait_for(arrived, f"{count} MDM at the DPI"))


async def _mdn_for(endpoints: dict[str, Any], message_id: str) -> Mdn:
    async def arrived() -> Mdn | None:
        for raw in (await imap_messages(endpoints, DOCTOR)).values():
            if "disposition-notification" in str(parse_mail(raw)["Content-Type"]):
                mdn = parse_mdn(raw)
                if mdn.original_message_id == message_id:
                    return mdn
        return None

    return await wait_for(arrived, f"the MDN for {message_id} in the sender's mailbox")


async def test_inbound_cr_imagerie_reaches_the_dpi_and_the_sender_gets_the_mdn(
    mss_platform: tuple[Runtime, DpiStub],
) -> None:
    rt, dpi = mss_platform
    endpoints = await published_endpoints(rt)
    patient_id = await _qualified_patient(rt)
    cda = CR_IMG.read_bytes()
    raw = document_mail(cda)
    message_id = str(parse_mail(raw)["Message-ID"])
    await deliver(rt, RADIOLOGY, raw)

    [mdm] = await _mdm(dpi)
    message, header = parse(mdm)
    # The ANS example declares itself a replacement (relatedDocument RPLC): T10.
    assert (header.message_type, header.trigger) == ("MDM", "T10")
    assert obx_cda(mdm) == cda
    assert get_field(segments(message, "PID")[0], 3, 1, 1) == INS
    assert get_field(segments(message, "PRT")[0], 15, 1, 4) == DOCTOR

    mdn = await _mdn_for(endpoints, message_id)
    assert mdn.ok and mdn.disposition == "processed", mdn
    with rt.db.session() as s:
        mail = s.scalars(select(Mail).where(Mail.direction == "in", Mail.message_id == message_id)).one()
        assert (mail.status, mail.patient_id, mail.mailbox.lower()) == (
            "integrated",
            patient_id,
            RADIOLOGY.lower(),
        )
    # The platform moved the mail out of the polled inbox once stored.
    box = await inspect(rt, RADIOLOGY)
    assert not box["folders"]["INBOX"], box["folders"]["INBOX"]


def later_tsh_report() -> bytes:
    """The ANS TSH example (BIO-CR-BIO_2024.01_TSH_1) one year later: new document id, date and value.

    The ANS's second TSH example (TSH_2) codes its result 29575-8 (blood spot), another analyte than TSH_1's
    3016-3, with the same date and value: no trend to draw from the two.
    """
    text = CR_BIO.read_text("utf-8")
    for old, new in {
        '<id root="1.2.250.1.213.1.1.1.55.2024.9.1"': '<id root="1.2.250.1.213.1.1.1.55.2025.9.1"',
        "20140402145521+0200": "20150402145521+0200",
        '<value xsi:type="PQ" value="1.950"': '<value xsi:type="PQ" value="2.410"',
        "1.950 mUI/l": "2.410 mUI/l",
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    return text.encode("utf-8")


async def test_inbound_cr_bio_shows_structured_results_on_the_api_and_the_patient_page(
    mss_platform: tuple[Runtime, DpiStub], tmp_path: Path
) -> None:
    rt, dpi = mss_platform
    patient_id = await _qualified_patient(rt)
    # A trend chart needs two values of one analyte: the ANS TSH example, then a later TSH report made from it.
    reports = [CR_BIO.read_bytes(), later_tsh_report()]
    for cda in reports:
        await deliver(rt, RADIOLOGY, document_mail(cda, label="CR de biologie", receipt=False))

    mdms = await _mdm(dpi, count=2)
    assert [parse(m)[1].trigger for m in mdms] == ["T02", "T02"]
    assert sorted(obx_cda(m) for m in mdms) == sorted(reports)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", timeout=30) as c:
        r = await c.get(f"/api/v1/patients/{patient_id}/results")
        assert r.status_code == 200, r.text
        results = r.json()
        tsh = [item for item in results["items"] if item["loinc"] == "3016-3"]
        assert sorted(item["value"] for item in tsh) == ["1.950", "2.410"], results
        page = await c.get(f"/identites/{patient_id}")
        assert page.status_code == 200
    assert "Résultats de biologie" in page.text
    assert "<svg" in page.text and "Évolution de" in page.text
    # What a clinician's browser shows: the table and the chart, with a point per TSH value.
    url = f"http://127.0.0.1:{rt.http_port}/identites/{patient_id}"
    dom = await asyncio.to_thread(chromium, tmp_path, "--dump-dom", url)
    assert 'lang="fr"' in dom and "Résultats de biologie" in dom
    chart = dom[dom.index("Évolution de") :]
    assert chart.count("<circle") >= 2, chart[:2000]
    shot = tmp_path / "patient.png"
    await asyncio.to_thread(chromium, tmp_path, "--window-size=1300,2400", f"--screenshot={shot}", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


async def test_inbound_mail_for_an_unknown_patient_waits_in_triage(
    mss_platform: tuple[Runtime, DpiStub], tmp_path: Path
) -> None:
    rt, dpi = mss_platform
    cda = other_patient_cda(CR_IMG.read_bytes())
    stranger = MailPatient(OTHER_INS, "PAT-TROIS", "DOMINIQUE", date(1979, 3, 28))
    raw = document_mail(cda, patient=stranger)
    await deliver(rt, RADIOLOGY, raw)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rt.http_port}", timeout=30) as c:

        async def triaged() -> list[dict[str, Any]]:
            r = await c.get("/api/v1/mssante/triage")
            r.raise_for_status()
            return list(r.json()["items"])

        [item] = await wait_for(triaged, "the mail in triage")
        assert item["mailbox"].lower() == RADIOLOGY.lower() and item["sender"] == DOCTOR
        assert "Patient inconnu" in (item["reason"] or ""), item
        page = await c.get("/mssante/triage")
        assert page.status_code == 200
    assert "Patient inconnu" in page.text
    assert dpi.of_type("MDM") == []
    dom = await asyncio.to_thread(
        chromium, tmp_path, "--dump-dom", f"http://127.0.0.1:{rt.http_port}/mssante/triage/{item['id']}"
    )
    assert "Patient inconnu" in dom and "Rattacher" in dom and "Rejeter" in dom
