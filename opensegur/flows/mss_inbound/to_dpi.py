"""Sending to the DPI: the ``mss.to_dpi`` job (one MDM per received CDA, per the LPS volet) and the
``mss.results_to_dpi`` job (a CR de biologie's results as an ORU^R01); once the DPI answered for every document
of a mail, the mail's outcome and its MDN job."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from email.utils import getaddresses, parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.content.cda import parse_cda
from opensegur.content.crbio import LOINC_OID, extract_results, parse_ts
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.errors import RetryLater
from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_inbound.context import SYSTEM_ACTOR, MssInboundContext, enqueue_mdn, set_mail_status
from opensegur.flows.worker import PermanentError
from opensegur.identity.rniv import IdentityStatus
from opensegur.store import jobs
from opensegur.store.models import AuditEvent, Document, Exchange, Mail, Patient, Structure
from opensegur.store.payloads import load_payload, store_payload
from opensegur.transactions.hl7v2 import ERROR_LABELS, Hl7Error
from opensegur.transactions.lps_mdm import (
    LpsAck,
    LpsDocument,
    LpsMail,
    LpsMdmRequest,
    LpsParticipant,
    LpsPatient,
    MetaDmpMss,
    build_lps_mdm,
    parse_lps_ack,
)
from opensegur.transactions.mss_mail import parse_inbound_mail
from opensegur.transactions.oru_results import (
    LOINC_CR_BIO,
    OruReport,
    build_oru_results,
    observation_from_lab,
)


def _lps_patient(s: Session, patient: Patient) -> LpsPatient:
    structure = s.get_one(Structure, patient.structure_id)
    ipp = next((i for i in patient.identifiers if i.type_code == "PI"), None)
    qualified = patient.status == IdentityStatus.QUAL.value and bool(patient.ins_matricule)
    return LpsPatient(
        birth_name=patient.birth_name,
        first_names=patient.first_names,
        birth_date=patient.birth_date.strftime("%Y%m%d") if patient.birth_date else None,
        sex=patient.sex if patient.sex in ("M", "F") else "U",
        ins_matricule=patient.ins_matricule if qualified else None,
        ins_oid=patient.ins_oid if qualified else None,
        ipp=ipp.value if ipp else None,
        ipp_namespace=(structure.ipp_authority or "")
        if ipp and ipp.authority == structure.ipp_authority_oid
        else "",
        ipp_authority=ipp.authority if ipp else "",
        used_name=patient.used_name,
        used_first_name=patient.used_first_name,
        birth_place=patient.birth_place,
        identity_status=patient.status,
    )


def _mdm_request(ctx: MssInboundContext, s: Session, doc: Document) -> LpsMdmRequest:
    mail = s.get_one(Mail, doc.context["mail_id"])
    raw = load_payload(s, mail.payload_sha256 or "")
    content = load_payload(s, doc.payload_sha256 or "")
    inbound = parse_inbound_mail(
        raw, max_bytes=ctx.limits.max_bytes, max_attachment=ctx.limits.max_attachment
    )
    header_msg = inbound.message
    reply_to = [a for _, a in getaddresses([str(header_msg.get("Reply-To", ""))]) if a] if header_msg else []
    recipients = [LpsParticipant(mail.mailbox)]
    original = parseaddr(inbound.original_recipient or "")[1]
    if original and original.lower() != mail.mailbox.lower():
        recipients.insert(0, LpsParticipant(original))
    header = parse_cda(content)[1]
    parent = header.replaced_document
    patient = s.get_one(Patient, doc.patient_id)
    flags = doc.flags
    confidentiality = set(flags.get("confidentiality", []))
    return LpsMdmRequest(
        kind="replacement" if doc.kind == "replacement" else "initial",
        patient=_lps_patient(s, patient),
        document=LpsDocument(
            cda=content,
            type_code=header.code.code if header.code else "",
            type_label=(header.code.display if header.code else "") or (header.title or ""),
            type_system="LN" if header.code and header.code.scheme == "2.16.840.1.113883.6.1" else "TRE_A05",
            id_root=header.id.root,
            id_extension=header.id.extension,
            parent_root=parent.root if parent else None,
            parent_extension=parent.extension if parent else None,
            activity_time=header.effective_time,
        ),
        mail=LpsMail(
            message_id=inbound.message_id or "",
            subject=inbound.subject,
            body=inbound.body_text,
            sender=LpsParticipant(inbound.from_addr),
            recipients=recipients,
            reply_to=reply_to,
        ),
        meta=MetaDmpMss(
            masque_ps="MASQUE_PS" in confidentiality,
            invisible_patient="INVISIBLE_PATIENT" in confidentiality,
            invisible_rep_legaux="INVISIBLE_REPRESENTANTS_LEGAUX" in confidentiality,
            modif_conf_code=bool(flags.get("modif_conf_code")),
        ),
        route=ctx.endpoint,
    )


def _exchange(
    s: Session,
    doc_id: int,
    endpoint: str,
    request: bytes,
    response: bytes | None,
    outcome: str,
    detail: str,
    transaction: str = "MDM",
) -> None:
    s.add(
        Exchange(
            document_id=doc_id,
            transaction=transaction,
            endpoint=endpoint[:300],
            request_sha256=store_payload(s, request),
            response_sha256=store_payload(s, response) if response else None,
            outcome=outcome,
            detail=detail[:2000],
        )
    )


def _finish_mail_if_complete(s: Session, mail_id: int) -> None:
    """Once every document of the mail has the DPI's final answer, set the mail's outcome and queue the MDN."""
    mail = s.get_one(Mail, mail_id, with_for_update=True)
    ids = mail.detail.get("document_ids", [])
    docs = list(s.scalars(select(Document).where(Document.id.in_(ids)))) if ids else []
    if any(d.status not in ("acknowledged", "rejected") for d in docs):
        return
    refused = [d for d in docs if d.status == "rejected"]
    manual = bool(mail.detail.get("manual"))
    if refused:
        code = str(refused[0].context.get("dpi_code") or "906")
        set_mail_status(s, mail, "rejected", refused[0].status_reason, code, SYSTEM_ACTOR, "mss_dpi_refused")
    else:
        set_mail_status(s, mail, "integrated", "Intégré par le DPI", None, SYSTEM_ACTOR, "mss_dpi_accepted")
    enqueue_mdn(s, mail, mail.mdn_code, manual)


async def _dpi_answer(
    ctx: MssInboundContext, message: bytes, control_id: str, retry: Callable[[str, bytes | None], None]
) -> tuple[LpsAck, bytes]:
    """Send one message to the DPI and read its ACK. What cannot count as the answer to this message (DPI down,
    unreadable, another message's ACK) is recorded through ``retry`` and raised as RetryLater."""
    try:
        response = await ctx.dpi.send(message)
    except RetryLater as exc:
        await asyncio.to_thread(retry, f"DPI injoignable, nouvel essai prévu : {exc}", None)
        raise
    try:
        ack = parse_lps_ack(response)
    except Hl7Error as exc:
        await asyncio.to_thread(retry, f"Réponse du DPI illisible : {exc.message}", response)
        raise RetryLater(f"unreadable DPI acknowledgement ({exc.code})") from exc
    if ack.control_id != control_id:
        await asyncio.to_thread(retry, "Accusé du DPI pour un autre message", response)
        raise RetryLater("DPI acknowledgement for another message")
    return ack, response


async def send_to_dpi(ctx: MssInboundContext, document_id: int, attempt: int) -> dict[str, Any]:
    """The ``mss.to_dpi`` job: one MDM, one ACK. RetryLater while the DPI is unreachable."""
    endpoint = f"{ctx.endpoint.receiving_application}@{ctx.endpoint.receiving_facility}"
    control_id = f"MSS{document_id}-{attempt}"

    def _build() -> tuple[bytes | None, str]:
        with ctx.db.session() as s:
            doc = s.get_one(Document, document_id)
            if doc.status != DocumentStatus.INTEGRATED:
                return None, doc.status
            return build_lps_mdm(
                _mdm_request(ctx, s, doc), control_id=control_id, now=datetime.now().astimezone()
            ), doc.status

    message, status = await asyncio.to_thread(_build)
    if message is None:
        return {"skipped": status}

    def _retry(reason: str, response: bytes | None) -> None:
        with ctx.db.session() as s:
            doc = s.get_one(Document, document_id)
            doc.status_reason = reason
            _exchange(s, document_id, endpoint, message, response, "retry", reason)

    ack, response = await _dpi_answer(ctx, message, control_id, _retry)
    if ack.code == "AR" and attempt < ctx.ar_attempts:
        await asyncio.to_thread(_retry, f"{ack.reason_fr} : nouvel essai prévu", response)
        raise RetryLater("DPI rejected the message for a circumstantial reason (AR)")

    def _final() -> None:
        with ctx.db.session() as s:
            doc = s.get_one(Document, document_id)
            set_status(
                doc, DocumentStatus.ACKNOWLEDGED if ack.accepted else DocumentStatus.REJECTED, ack.reason_fr
            )
            doc.context = {
                **doc.context,
                "dpi_control_id": control_id,
                "dpi_ack": ack.code,
                "dpi_code": ack.volet_code,
            }
            _exchange(
                s,
                document_id,
                endpoint,
                message,
                response,
                "success" if ack.accepted else "rejected",
                ack.reason_fr,
            )
            s.add(
                AuditEvent(
                    actor=SYSTEM_ACTOR,
                    action="mss_dpi_ack",
                    patient_id=doc.patient_id,
                    reason=ack.code,
                    detail={"document_id": doc.id, "code": ack.volet_code},
                )
            )
            if ack.accepted and ctx.forward_results_oru and doc.flags.get("lab_results"):
                # After the document, so the DPI has it (and knows the patient) when its results come.
                jobs.enqueue(
                    s,
                    JobKind.MSS_RESULTS_TO_DPI,
                    f"{JobKind.MSS_RESULTS_TO_DPI}:{doc.id}",
                    {"document_id": doc.id},
                    structure_id=doc.structure_id,
                    patient_id=doc.patient_id,
                )
            _finish_mail_if_complete(s, int(doc.context["mail_id"]))

    await asyncio.to_thread(_final)
    return {"ack": ack.code, "code": ack.volet_code}


def _oru_report(s: Session, doc: Document) -> OruReport | None:
    """The ORU content of a document, None when it holds no result. PermanentError for an unreadable CDA."""
    content = load_payload(s, doc.payload_sha256 or "")
    try:
        header = parse_cda(content)[1]
        observations = extract_results(content)
    except ValueError as exc:
        raise PermanentError(f"CR de biologie illisible : {str(exc)[:200]}") from exc
    if not observations:
        return None
    code = header.code
    loinc = code is not None and code.scheme == LOINC_OID and bool(code.code)
    return OruReport(
        patient=_lps_patient(s, s.get_one(Patient, doc.patient_id)),
        id_root=header.id.root,
        id_extension=header.id.extension,
        set_root=header.set_id.root if header.set_id else None,
        set_extension=header.set_id.extension if header.set_id else None,
        observations=[observation_from_lab(o) for o in observations],
        report_code=code.code if code is not None and loinc else LOINC_CR_BIO,
        report_label=(code.display if code is not None and loinc else None) or "CR d'examens biologiques",
        reported_at=parse_ts(header.effective_time),
        corrected=doc.kind == "replacement",
    )


def _results_reason(ack: LpsAck) -> str:
    if ack.accepted:
        return "Résultats de biologie intégrés par le DPI"
    details = [e.text or e.application_label or ERROR_LABELS.get(e.hl7_code, e.hl7_code) for e in ack.errors]
    detail = next((d for d in details if d), "aucun motif donné")
    return f"Résultats de biologie refusés par le DPI ({ack.code}) : {detail}"


async def send_results_to_dpi(ctx: MssInboundContext, document_id: int, attempt: int) -> dict[str, Any]:
    """The ``mss.results_to_dpi`` job: one ORU^R01 with the document's results, one ACK.

    RetryLater while the DPI is unreachable or answers AR (``ar_attempts`` times); a final refusal shows on
    the document (reason and finding) and is audited.
    """
    endpoint = f"{ctx.endpoint.receiving_application}@{ctx.endpoint.receiving_facility}"
    control_id = f"MSSR{document_id}-{attempt}"

    def _build() -> bytes | dict[str, Any]:
        with ctx.db.session() as s:
            doc = s.get_one(Document, document_id)
            if doc.context.get("oru_ack"):
                return {"skipped": "already acknowledged"}
            report = _oru_report(s, doc)
            if report is None:
                return {"skipped": "no results"}
            return build_oru_results(
                report, ctx.endpoint, control_id=control_id, now=datetime.now().astimezone()
            )

    built = await asyncio.to_thread(_build)
    if isinstance(built, dict):
        return built
    message = built

    def _retry(reason: str, response: bytes | None) -> None:
        with ctx.db.session() as s:
            _exchange(s, document_id, endpoint, message, response, "retry", reason, "ORU")

    ack, response = await _dpi_answer(ctx, message, control_id, _retry)
    reason = _results_reason(ack)
    if ack.code == "AR" and attempt < ctx.ar_attempts:
        await asyncio.to_thread(_retry, f"{reason} : nouvel essai prévu", response)
        raise RetryLater("DPI rejected the results for a circumstantial reason (AR)")

    def _final() -> None:
        with ctx.db.session() as s:
            doc = s.get_one(Document, document_id)
            doc.context = {**doc.context, "oru_control_id": control_id, "oru_ack": ack.code}
            if not ack.accepted:
                doc.status_reason = reason
                doc.findings = [
                    *doc.findings,
                    {"severity": "blocking", "source": "dpi", "code": f"ORU-{ack.code}", "message": reason},
                ]
            outcome = "success" if ack.accepted else "rejected"
            _exchange(s, document_id, endpoint, message, response, outcome, reason, "ORU")
            s.add(
                AuditEvent(
                    actor=SYSTEM_ACTOR,
                    action="mss_results_dpi_ack",
                    patient_id=doc.patient_id,
                    reason=ack.code,
                    detail={"document_id": doc.id, "control_id": control_id},
                )
            )

    await asyncio.to_thread(_final)
    return {"ack": ack.code}
