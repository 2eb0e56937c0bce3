"""Flow: a mail polled from a hospital MSSanté mailbox → patient matched on the CDA's INS → MDM to the DPI → MDN.

Steps, each durable so a crash resumes where it stopped and nothing received is ever lost:
- :func:`poll_mailbox`: every fetched mail is stored (raw payload + ``Mail`` row + ``mss.integrate`` job) and
  committed *before* the mailbox is told it was processed; the idempotence key ``in:<mailbox>:<Message-ID>``
  absorbs the re-read after a crash in between. DSN/MDN reports go to the outbound flow instead.
  :func:`run_poller` keeps one loop per mailbox and, between polls, waits on IMAP IDLE where the reader offers it.
- ``mss.integrate`` (:func:`integrate_mail`): the mail is opened by :mod:`opensegur.transactions.mss_mail` (safe
  against zip bombs, traversal, XXE); the patient is the local *qualified* identity carrying the CDA's INS,
  with identical strict traits. ``X-MSS-INS`` is only a claim, checked against the CDA and never matched on.
  Anything that a machine cannot decide goes to triage with a French reason; anything unsafe or unreadable is
  rejected. The raw mail is kept in both cases.
- ``mss.to_dpi`` (:func:`send_to_dpi`): one MDM per CDA (volet "Transmission au LPS d'un document CDA provenant
  d'un courriel MSSanté"); a DPI outage is retried by the job queue.
- ``mss.results_to_dpi`` (:func:`send_results_to_dpi`, when ``forward_results_oru`` is on): once the DPI took a
  CR de biologie that yielded structured results, they follow as an ORU^R01
  (:mod:`opensegur.transactions.oru_results`); a refusal shows on the document, not on the mail nor its MDN.
- ``mss.mdn`` (:func:`send_mdn`): once every document of the mail has the DPI's answer (or a human rejected the
  mail), the MDN goes back — only when the sender asked for it (``Disposition-Notification-To``, RFC 8098) and,
  when sent automatically, only if that address is the Return-Path (RFC 8098 §2.1, repeated by the volet);
  otherwise it waits for a person's confirmation (:func:`confirm_mdn`).

Volet codes (error-codes.md) reused as MDN codes: 902 unknown patient, 903 no INS in the CDA, 904 INS or traits
not matching a qualified local identity, 905 incomplete INS traits, 906 anything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.errors import HeaderParseError
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opensegur.content.cda import CdaHeader, parse_cda
from opensegur.content.crbio import LOINC_OID, extract_results, parse_ts
from opensegur.content.jdv import VISIBILITY_CODES
from opensegur.documents.lifecycle import DocumentStatus, set_status
from opensegur.errors import OpenSegurError, RetryLater
from opensegur.flows.dmp_feed import document_flags
from opensegur.flows.jobs import JobKind
from opensegur.flows.mssante_ports import (
    DpiSender,
    FetchedMail,
    IdleMailboxReader,
    MailboxReader,
    MailSender,
    MailUnavailableError,
)
from opensegur.flows.worker import PermanentError
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins
from opensegur.identity.rniv import IdentityStatus
from opensegur.identity.traits import normalise_name
from opensegur.logsafe import failure
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import (
    AuditEvent,
    Document,
    Exchange,
    Job,
    LabResult,
    Mail,
    Patient,
    Structure,
)
from opensegur.store.payloads import load_payload, store_payload
from opensegur.transactions.hl7v2 import ERROR_LABELS, Hl7Error
from opensegur.transactions.lps_mdm import (
    LpsAck,
    LpsDocument,
    LpsMail,
    LpsMdmRequest,
    LpsParticipant,
    LpsPatient,
    MessageRoute,
    MetaDmpMss,
    build_lps_mdm,
    parse_lps_ack,
)
from opensegur.transactions.mdn import ERROR_LABELS as VOLET_ERROR_LABELS
from opensegur.transactions.mdn import MdnError, build_mdn
from opensegur.transactions.mss_mail import (
    DEFAULT_MAX_ATTACHMENT,
    DEFAULT_MAX_BYTES,
    InboundMail,
    MailError,
    open_packages,
    parse_inbound_mail,
    smtp_envelope,
    verify_ins_claim,
)
from opensegur.transactions.oru_results import (
    LOINC_CR_BIO,
    OruReport,
    build_oru_results,
    observation_from_lab,
)
from opensegur.transactions.xdm import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL,
    XdmError,
    cda_unique_id,
)

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "mss-inbound"
# Mail errors a person could act on (identity questions); every other MailError/XdmError means the mail is
# unreadable or unsafe, so it is rejected outright.
_TRIAGE_ERRORS: dict[str, str] = {
    "MSS_MULTIPLE_PATIENTS": "906",
    "XDM_MULTIPLE_PATIENTS": "906",
    "MSS_INS_MISMATCH": "904",
    "XDM_PATIENT_MISMATCH": "904",
}
_TRAIT_LABELS = {
    "birth_name": "nom de naissance",
    "first_names": "prénoms de naissance",
    "birth_date": "date de naissance",
    "sex": "sexe",
}
# Mail statuses (``Mail.status`` for direction "in") and their French labels for the pages.
STATUS_LABELS = {
    "received": "Reçu",
    "integrated": "Intégré",
    "triage": "À trier",
    "rejected": "Rejeté",
}


@dataclass(frozen=True)
class MailLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_attachment: int = DEFAULT_MAX_ATTACHMENT
    xdm_max_total: int = DEFAULT_MAX_TOTAL
    xdm_max_ratio: float = DEFAULT_MAX_RATIO
    xdm_max_files: int = DEFAULT_MAX_FILES


@dataclass
class MssInboundContext:
    db: Database
    dpi: DpiSender
    mail_sender: MailSender
    # MSH-3 to MSH-6 and MSH-11/18 of the messages sent to the DPI.
    endpoint: MessageRoute = MessageRoute()
    limits: MailLimits = field(default_factory=MailLimits)
    # Hospital mailbox (lower case) → site id: patients are then matched in that site only (one GHT, several
    # DPIs), and a mail in triage is seen by that site's staff.
    mailbox_structures: dict[str, int] = field(default_factory=dict)
    # An AR means "rejected for a circumstantial reason, send again later" (volet): that many attempts first.
    ar_attempts: int = 3
    reporting_ua: str = "OpenSegur"
    # Also send the structured results of a CR de biologie to the DPI as an ORU^R01, once it took the document.
    forward_results_oru: bool = False


class InboundError(OpenSegurError, ValueError):
    """A triage action that cannot be done. ``message_fr`` is shown to the user."""

    def __init__(self, code: str, message_fr: str) -> None:
        super().__init__(f"{code}: {message_fr}")
        self.code = code
        self.message_fr = message_fr


@dataclass(frozen=True)
class _Verdict:
    status: str  # triage or rejected
    reason: str
    code: str


@dataclass
class _Cda:
    content: bytes
    header: CdaHeader
    confidentiality: frozenset[str]


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _audit(s: Session, actor: str, action: str, mail: Mail, reason: str | None, **detail: Any) -> None:
    s.add(
        AuditEvent(
            actor=actor,
            action=action,
            patient_id=mail.patient_id,
            reason=(reason or "")[:200] or None,
            detail={"mail_id": mail.id, **detail},
        )
    )


def _set_status(
    s: Session, mail: Mail, status: str, reason: str | None, code: str | None, actor: str, action: str
) -> None:
    before = mail.status
    mail.status, mail.reason, mail.mdn_code = status, reason, code
    _audit(s, actor, action, mail, reason, status_before=before, status_after=status, code=code)


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError, HeaderParseError):
        return None
    return " ".join(str(value).split()) if value is not None else None


def _headers(raw: bytes) -> Message:
    # Headers only: enough to key, route and answer a mail whose body may be hostile or unreadable.
    return BytesHeaderParser(policy=policy.default).parsebytes(raw)


def _enqueue_mdn(s: Session, mail: Mail, code: str | None, manual: bool, key_suffix: str = "") -> None:
    jobs.enqueue(
        s,
        JobKind.MSS_MDN,
        f"{JobKind.MSS_MDN}:{mail.id}:{code or 'ok'}{key_suffix}",
        {"mail_id": mail.id, "code": code, "manual": manual},
        structure_id=mail.structure_id,
        patient_id=mail.patient_id,
    )


# --------------------------------------------------------------------------------------------------------------
# Polling


def _is_report(headers: Message) -> bool:
    try:
        return headers.get_content_type() == "multipart/report"
    except (ValueError, TypeError, IndexError, HeaderParseError):
        return False


def _record_report(s: Session, raw: bytes, mailbox: str) -> bool:
    try:
        from opensegur.flows.mss_outbound import record_report
    except ImportError:
        return False
    return record_report(s, raw, mailbox)


def _store_one(s: Session, mailbox: str, fetched: FetchedMail) -> bool:
    """Store one fetched mail; False when it was already stored (re-read after a crash, or polled twice).

    A reader may hand over only the header block of a mail above its size limit, announcing the real size in
    ``size``: that mail is rejected at once (the headers are enough to answer the sender) and its header kept.
    """
    raw = fetched.raw
    announced = int(getattr(fetched, "size", 0) or 0)
    headers = _headers(raw)
    if _is_report(headers) and _record_report(s, raw, mailbox):
        return True
    digest = store_payload(s, raw)
    message_id = _header(headers, "Message-ID")
    key = f"in:{mailbox}:{message_id}" if message_id and len(message_id) <= 300 else f"in:{mailbox}:{digest}"
    existing = s.scalar(select(Mail).where(Mail.key == key))
    if existing is not None:
        if existing.payload_sha256 == digest:
            return False
        # Same Message-ID, other bytes: a different mail all the same, and nothing received is dropped.
        key = f"in:{mailbox}:{digest}"
        if s.scalar(select(Mail).where(Mail.key == key)) is not None:
            return False
    mail = Mail(
        direction="in",
        key=key,
        mailbox=mailbox,
        message_id=message_id[:300] if message_id else None,
        sender=(parseaddr(_header(headers, "From") or "")[1] or None),
        recipients=[a for _, a in getaddresses([_header(headers, "To") or ""]) if a][:50],
        subject=(_header(headers, "Subject") or "")[:500] or None,
        payload_sha256=digest,
        status="received",
        detail={"size": max(len(raw), announced)},
    )
    if announced > len(raw):
        mail.status, mail.mdn_code = "rejected", "906"
        mail.reason = f"Courriel refusé : trop volumineux ({announced} octets), seul son en-tête est conservé"
    elif _is_report(headers):
        mail.status, mail.reason = (
            "triage",
            "Accusé (DSN/MDN) qui ne se rapporte à aucun courriel envoyé connu",
        )
    try:
        with s.begin_nested():
            s.add(mail)
    except IntegrityError:
        return False  # another poller stored it between our read and our insert
    _audit(s, SYSTEM_ACTOR, "mss_receive", mail, None, mailbox=mailbox, status_after=mail.status)
    if mail.status == "received":
        jobs.enqueue(s, JobKind.MSS_INTEGRATE, f"{JobKind.MSS_INTEGRATE}:{mail.id}", {"mail_id": mail.id})
    elif mail.status == "rejected":
        _enqueue_mdn(s, mail, mail.mdn_code, False)
    return True


async def _poll(db: Database, reader: MailboxReader, mailbox: str, limit: int) -> tuple[int, int]:
    """(fetched, newly stored) for one poll of one mailbox."""
    fetched = await reader.fetch_new(mailbox, limit)
    if not fetched:
        return 0, 0

    def _store() -> int:
        with db.session() as s:
            return sum(_store_one(s, mailbox, f) for f in fetched)

    stored = await asyncio.to_thread(_store)
    await reader.mark_done(mailbox, [f.uid for f in fetched])
    if stored:
        log.info("mailbox poll: %d new mail(s) stored", stored)
    return len(fetched), stored


async def poll_mailbox(db: Database, reader: MailboxReader, mailbox: str, limit: int) -> int:
    """Fetch new mails, store them, then mark them done on the server. Returns how many were new."""
    return (await _poll(db, reader, mailbox, limit))[1]


async def _poll_loop(
    db: Database,
    reader: MailboxReader,
    mailbox: str,
    *,
    interval_s: float,
    limit: int,
    stop: asyncio.Event,
    on_stored: Callable[[], None] | None,
) -> None:
    """Poll one mailbox until cancelled (by :func:`run_poller` once ``stop`` is set)."""
    idle = reader if isinstance(reader, IdleMailboxReader) else None
    loop = asyncio.get_running_loop()
    announced = False  # the last wait said there was news
    while True:
        try:
            fetched, stored = await _poll(db, reader, mailbox, limit)
            if stored and on_stored is not None:
                on_stored()
            if stored and fetched >= limit:
                continue  # a backlog: the next batch at once
            # News that the poll did not find (a mail someone already read in a webmail is above the reader's
            # last UID but not unread): waiting again would answer at once, so this round is a plain sleep.
            spurious, announced = announced and not fetched, False
            if idle is not None and not spurious:
                started = loop.time()
                announced = await idle.wait_for_news(mailbox, interval_s)
                if announced:
                    continue
                # No news: still at most one poll per interval, even when the wait ended early (IDLE capped by
                # the reader, a reader answering at once).
                await asyncio.sleep(interval_s - (loop.time() - started))
                continue
        except MailUnavailableError as exc:
            # Stopping closes the reader under a poll or an IDLE in progress: nothing to warn about.
            if not stop.is_set():
                log.warning("mailbox %s: poll failed, retried in %g s: %s", mailbox, interval_s, exc)
        except Exception as exc:  # the loop must outlive any one bad poll
            if not stop.is_set():
                log.error("mailbox %s: poll crashed, retried in %g s: %s", mailbox, interval_s, failure(exc))
        await asyncio.sleep(interval_s)


async def run_poller(
    db: Database,
    reader: MailboxReader,
    mailboxes: Sequence[str],
    *,
    interval_s: float,
    limit: int,
    stop: asyncio.Event,
    on_stored: Callable[[], None] | None = None,
) -> None:
    """Poll every mailbox, each in its own loop, until ``stop`` is set; survives operator outages.

    After each poll a loop waits for news when the reader offers it (:class:`IdleMailboxReader`: IMAP IDLE),
    polling again as soon as news comes and at the latest after ``interval_s``; otherwise it sleeps
    ``interval_s``. A failed poll or wait is retried after ``interval_s``. A mailbox whose server hangs holds
    only its own loop.
    """
    loops = [
        asyncio.create_task(
            _poll_loop(db, reader, box, interval_s=interval_s, limit=limit, stop=stop, on_stored=on_stored),
            name=f"mss-poll:{box}",
        )
        for box in dict.fromkeys(mailboxes)
    ]
    try:
        await stop.wait()
    finally:
        # Cutting a poll short loses nothing: stored mails are committed before the server is told, the others
        # are still on the server and the idempotence key absorbs the re-read. A wait abandoned in a reader's
        # thread ends when the platform closes the reader (that breaks the IDLE).
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


# --------------------------------------------------------------------------------------------------------------
# Opening a mail and matching its patient


def _open(
    raw: bytes, limits: MailLimits, *, check_claim: bool = True
) -> tuple[InboundMail, list[_Cda], list[str]]:
    """Parse the mail and collect its CDAs, with what the sender's XDM metadata left out or got wrong (French
    warnings, shown with the mail). Raises MailError/XdmError (mapped by the caller).

    ``check_claim=False`` when a person attaches the mail: they judged the document itself, whatever the
    sender's ``X-MSS-INS`` said.
    """
    mail = parse_inbound_mail(raw, max_bytes=limits.max_bytes, max_attachment=limits.max_attachment)
    packages, bare = open_packages(
        mail,
        max_total=limits.xdm_max_total,
        max_ratio=limits.xdm_max_ratio,
        max_files=limits.xdm_max_files,
    )
    if check_claim:
        verify_ins_claim(mail, packages)
    cdas = [
        _Cda(
            d.content,
            d.cda,
            d.confidentiality & VISIBILITY_CODES,
        )
        for p in packages
        for d in p.documents
        if d.cda is not None
    ]
    # open_packages parsed every bare CDA attachment, in order, or raised.
    cdas += [_Cda(a.content, h, frozenset()) for a, h in zip(mail.cda_attachments, bare, strict=True)]
    return mail, cdas, [w for p in packages for w in p.warnings]


def _verdict_for(exc: MailError | XdmError) -> _Verdict:
    code = _TRIAGE_ERRORS.get(exc.code)
    if code is not None:
        return _Verdict("triage", exc.message_fr, code)
    return _Verdict("rejected", f"Courriel refusé : {exc.message_fr}", "906")


def _trait_differences(header: CdaHeader, patient: Patient) -> list[str]:
    p = header.patient
    diffs = []
    if normalise_name(p.birth_family or "") != normalise_name(patient.birth_name):
        diffs.append("birth_name")
    cda_firsts = " ".join(p.given_names) if p.given_names else (p.first_given or "")
    local_firsts = patient.first_names if p.given_names else patient.first_names.split(" ", 1)[0]
    if normalise_name(cda_firsts) != normalise_name(local_firsts):
        diffs.append("first_names")
    birth = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    if (p.birth_time or "")[:8] != birth:
        diffs.append("birth_date")
    if (p.gender or "") != patient.sex:
        diffs.append("sex")
    return diffs


def _identity_verdict(cdas: list[_Cda]) -> tuple[Ins | None, _Verdict | None]:
    """The INS every CDA names, or why no automatic matching is possible."""
    if not cdas:
        return None, _Verdict(
            "triage", "Aucun document CDA dans le courriel (PDF ou texte seul) : traitement manuel", "906"
        )
    if any(not c.header.patient.ins_matricule for c in cdas):
        return None, _Verdict("triage", "INS absent du document CDA (recordTarget)", "903")
    named = {(c.header.patient.ins_matricule or "", c.header.patient.ins_oid or "") for c in cdas}
    if len(named) > 1:
        return None, _Verdict("triage", "Les documents du courriel concernent plusieurs patients", "906")
    matricule, oid = named.pop()
    try:
        ins = Ins.parse(matricule, oid)
    except IdentityError as exc:
        return None, _Verdict("triage", f"INS du document invalide : {exc.message}", "904")
    for c in cdas:
        p = c.header.patient
        if not (p.birth_family and (p.given_names or p.first_given) and p.birth_time and p.gender):
            return None, _Verdict("triage", "Traits d'identité INS incomplets dans le document CDA", "905")
    return ins, None


def _match(s: Session, ctx: MssInboundContext, mail: Mail, cdas: list[_Cda]) -> Patient | _Verdict:
    ins, verdict = _identity_verdict(cdas)
    if verdict is not None:
        return verdict
    assert ins is not None
    query = select(Patient).where(
        Patient.ins_matricule == ins.matricule,
        Patient.ins_oid == ins.oid,
        Patient.active.is_(True),
        Patient.merged_into_id.is_(None),
    )
    site = ctx.mailbox_structures.get(mail.mailbox.lower())
    if site is not None:
        query = query.where(Patient.structure_id == site)
    found = list(s.scalars(query))
    if not found:
        return _Verdict(
            "triage", "Patient inconnu : aucune identité locale ne porte l'INS du document", "902"
        )
    if len(found) > 1:
        return _Verdict("triage", "Plusieurs identités locales portent l'INS du document", "906")
    patient = found[0]
    if patient.status != IdentityStatus.QUAL.value:
        return _Verdict(
            "triage",
            f"Identité locale non qualifiée ({IdentityStatus(patient.status).label}) : "
            "rapprochement automatique impossible",
            "904",
        )
    diffs = sorted(
        {d for c in cdas for d in _trait_differences(c.header, patient)}, key=list(_TRAIT_LABELS).index
    )
    if diffs:
        labels = ", ".join(_TRAIT_LABELS[d] for d in diffs)
        return _Verdict(
            "triage", f"Traits du document différents de l'identité qualifiée locale : {labels}", "904"
        )
    return patient


# --------------------------------------------------------------------------------------------------------------
# Integration


def _lab_results(s: Session, doc: Document, content: bytes) -> int:
    """LabResult rows of a CR-BIO; how many."""
    assert doc.patient_id is not None
    observations = extract_results(content)
    for o in observations:
        s.add(
            LabResult(
                patient_id=doc.patient_id,
                document_id=doc.id,
                loinc=o.loinc[:16],
                label=(o.label or o.loinc)[:300],
                value=o.value[:100] if o.value is not None else None,
                value_num=o.value_num,
                unit=o.unit[:40] if o.unit else None,
                reference_low=o.reference_low,
                reference_high=o.reference_high,
                reference_text=o.reference_text[:200] if o.reference_text else None,
                interpretation=o.interpretation[:8] if o.interpretation else None,
                observed_at=o.observed_at,
            )
        )
    return len(observations)


def _create_documents(
    s: Session, mail: Mail, inbound: InboundMail, patient: Patient, cdas: list[_Cda]
) -> _Verdict | tuple[list[int], list[int]]:
    """Document rows and their ``mss.to_dpi`` jobs; (new ids, ids already received by another mail)."""
    planned: list[tuple[_Cda, str, str, str | None, Document | None]] = []
    for c in cdas:
        unique_id = cda_unique_id(c.header)
        replaced = c.header.replaced_document
        kind = "replacement" if replaced is not None else "initial"
        parent = (
            (replaced.root if not replaced.extension else f"{replaced.root}^{replaced.extension}")
            if replaced
            else None
        )
        existing = s.scalar(
            select(Document).where(
                Document.structure_id == patient.structure_id,
                Document.unique_id == unique_id,
                Document.kind == kind,
            )
        )
        if existing is not None and existing.payload_sha256 != hashlib.sha256(c.content).hexdigest():
            return _Verdict("triage", "Identifiant de document déjà utilisé pour un autre contenu", "906")
        planned.append((c, unique_id, kind, parent, existing))
    created: list[int] = []
    duplicates: list[int] = []
    for c, unique_id, kind, parent_id, existing in planned:
        if existing is not None:
            duplicates.append(existing.id)
            continue
        previous = (
            s.scalar(
                select(Document).where(
                    Document.structure_id == patient.structure_id, Document.unique_id == parent_id
                )
            )
            if parent_id
            else None
        )
        confidentiality = set(c.confidentiality)
        flags = document_flags(
            dest_dmp=False,
            masque_ps="MASQUE_PS" in confidentiality,
            invisible_patient="INVISIBLE_PATIENT" in confidentiality,
            invisible_rep_legaux="INVISIBLE_REPRESENTANTS_LEGAUX" in confidentiality,
            modif_conf_code=previous is not None
            and set(previous.flags.get("confidentiality", [])) != confidentiality,
        )
        doc = Document(
            structure_id=patient.structure_id,
            patient_id=patient.id,
            source="mssante",
            kind=kind,
            unique_id=unique_id,
            parent_unique_id=parent_id,
            type_code=c.header.code.code if c.header.code else None,
            title=(c.header.title or "")[:300] or None,
            payload_sha256=store_payload(s, c.content),
            mime_type="text/xml",
            size=len(c.content),
            ins_matricule=c.header.patient.ins_matricule,
            ins_oid=c.header.patient.ins_oid,
            status="integrated",
            findings=[],
            flags=flags,
            context={
                "mail_id": mail.id,
                "mailbox": mail.mailbox,
                "sender": inbound.from_addr,
                "message_id": inbound.message_id,
            },
        )
        s.add(doc)
        s.flush()
        if doc.type_code == LOINC_CR_BIO:
            try:
                count = _lab_results(s, doc, c.content)
            except ValueError as exc:
                doc.findings = [
                    {"severity": "warning", "source": "crbio", "code": "CRBIO", "message": str(exc)[:300]}
                ]
            else:
                doc.flags = {**doc.flags, "lab_results": count}
        jobs.enqueue(
            s,
            JobKind.MSS_TO_DPI,
            f"{JobKind.MSS_TO_DPI}:{doc.id}",
            {"document_id": doc.id},
            structure_id=doc.structure_id,
            patient_id=doc.patient_id,
        )
        created.append(doc.id)
    return created, duplicates


def _integrate(
    s: Session,
    mail: Mail,
    inbound: InboundMail,
    patient: Patient,
    cdas: list[_Cda],
    actor: str,
    action: str,
    reason: str | None,
    manual: bool,
) -> str:
    result = _create_documents(s, mail, inbound, patient, cdas)
    if isinstance(result, _Verdict):
        _set_status(s, mail, result.status, result.reason, result.code, actor, "mss_triage")
        return mail.status
    created, duplicates = result
    mail.patient_id, mail.structure_id = patient.id, patient.structure_id
    mail.document_id = (created or duplicates)[0]
    mail.detail = {
        **mail.detail,
        "document_ids": created,
        "duplicate_document_ids": duplicates,
        "manual": manual,
    }
    text = reason or (
        "Transmis au DPI"
        if created
        else "Document(s) déjà reçu(s) par un autre courriel : pas de nouvel envoi"
    )
    _set_status(s, mail, "integrated", text, None, actor, action)
    if not created:
        _enqueue_mdn(s, mail, None, manual)
    return mail.status


def integrate_mail(ctx: MssInboundContext, mail_id: int) -> str:
    """The ``mss.integrate`` job: returns the mail's new status (integrated, triage or rejected)."""
    with ctx.db.session() as s:
        mail = s.get_one(Mail, mail_id)
        if mail.status != "received":
            return mail.status  # already done by a previous run of this job
        raw = load_payload(s, mail.payload_sha256 or "")
    # Parsing and unzipping are the costly part: outside any transaction.
    verdict: _Verdict | None = None
    inbound: InboundMail | None = None
    cdas: list[_Cda] = []
    warnings: list[str] = []
    try:
        inbound, cdas, warnings = _open(raw, ctx.limits)
    except (MailError, XdmError) as exc:
        verdict = _verdict_for(exc)
    with ctx.db.session() as s:
        mail = s.get_one(Mail, mail_id, with_for_update=True)
        if mail.status != "received":
            return mail.status
        if warnings:
            mail.detail = {**mail.detail, "xdm_warnings": warnings}
        # The mailbox's site: a mail waiting in triage is then seen by that site's staff, not only GHT-wide.
        mail.structure_id = mail.structure_id or ctx.mailbox_structures.get(mail.mailbox.lower())
        if verdict is None:
            assert inbound is not None
            matched = _match(s, ctx, mail, cdas)
            if isinstance(matched, Patient):
                status = _integrate(
                    s, mail, inbound, matched, cdas, SYSTEM_ACTOR, "mss_integrate", None, False
                )
                log.info("mail %s: %s", mail_id, status)
                return status
            verdict = matched
        _set_status(
            s, mail, verdict.status, verdict.reason, verdict.code, SYSTEM_ACTOR, f"mss_{verdict.status}"
        )
        if verdict.status == "rejected":
            _enqueue_mdn(s, mail, verdict.code, False)
        log.info("mail %s: %s (code %s)", mail_id, verdict.status, verdict.code)
        return verdict.status


# --------------------------------------------------------------------------------------------------------------
# To the DPI


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
        _set_status(s, mail, "rejected", refused[0].status_reason, code, SYSTEM_ACTOR, "mss_dpi_refused")
    else:
        _set_status(s, mail, "integrated", "Intégré par le DPI", None, SYSTEM_ACTOR, "mss_dpi_accepted")
    _enqueue_mdn(s, mail, mail.mdn_code, manual)


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
            if doc.status != "integrated":
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


# --------------------------------------------------------------------------------------------------------------
# MDN back to the sender


def _original_for_mdn(
    raw: bytes, limits: MailLimits
) -> tuple[InboundMail | dict[str, str], str | None, str | None]:
    """(what build_mdn quotes, Disposition-Notification-To, Return-Path) — headers only for an unreadable mail."""
    try:
        inbound = parse_inbound_mail(raw, max_bytes=limits.max_bytes, max_attachment=limits.max_attachment)
    except MailError:
        headers = _headers(raw)
        fields = {
            name: _header(headers, name) or ""
            for name in ("Message-ID", "Subject", "Disposition-Notification-To", "Original-Recipient")
        }
        notify = parseaddr(fields["Disposition-Notification-To"])[1] or None
        return_path = parseaddr(_header(headers, "Return-Path") or "")[1] or None
        return fields, notify, return_path
    return inbound, inbound.disposition_notification_to, inbound.return_path


async def send_mdn(ctx: MssInboundContext, mail_id: int, code: str | None, manual: bool) -> dict[str, Any]:
    """The ``mss.mdn`` job. Sends at most one MDN per mail and outcome (``out:mdn:<mail>:<code|ok>``)."""
    out_key = f"out:mdn:{mail_id}:{code or 'ok'}"

    def _prepare() -> tuple[bytes, Any, str] | dict[str, Any]:
        with ctx.db.session() as s:
            mail = s.get_one(Mail, mail_id)
            sent = s.scalar(select(Mail).where(Mail.key == out_key))
            if sent is not None and sent.status == "sent":
                return {"skipped": "already sent"}
            raw = load_payload(s, mail.payload_sha256 or "")
            original, notify, return_path = _original_for_mdn(raw, ctx.limits)
            if not notify:
                mail.detail = {**mail.detail, "mdn": "not_requested"}
                return {"skipped": "not requested"}
            if not manual and return_path and return_path.lower() != notify.lower():
                mail.detail = {**mail.detail, "mdn": "confirmation_required", "mdn_pending_code": code}
                _audit(
                    s, SYSTEM_ACTOR, "mss_mdn_held", mail, "Return-Path différent de l'adresse de l'accusé"
                )
                return {"skipped": "confirmation required"}
            try:
                msg = build_mdn(
                    original,
                    from_addr=mail.mailbox,
                    final_recipient=mail.mailbox,
                    disposition="processed",
                    code=code,
                    automatic=not manual,
                    reporting_ua=ctx.reporting_ua,
                )
            except MdnError as exc:
                mail.detail = {**mail.detail, "mdn": "not_requested"}
                return {"skipped": exc.code}
            raw_mdn = msg.as_bytes()
            envelope = smtp_envelope(msg, return_receipt=False)
            if sent is None:
                sent = Mail(
                    direction="out",
                    key=out_key,
                    mailbox=mail.mailbox,
                    recipients=list(envelope.rcpt_to),
                    structure_id=mail.structure_id,
                    patient_id=mail.patient_id,
                    document_id=mail.document_id,
                    status="pending",
                    mdn_code=code,
                    detail={"kind": "mdn", "in_reply_to_mail_id": mail_id},
                )
                s.add(sent)
            sent.message_id = str(msg["Message-ID"])[:300]
            sent.subject = str(msg["Subject"])[:500]
            sent.sender = mail.mailbox
            sent.payload_sha256 = store_payload(s, raw_mdn)
            return raw_mdn, envelope, sent.message_id

    prepared = await asyncio.to_thread(_prepare)
    if isinstance(prepared, dict):
        return prepared
    raw_mdn, envelope, message_id = prepared
    try:
        result = await ctx.mail_sender.send(raw_mdn, envelope)
    except MailUnavailableError as exc:
        raise RetryLater(f"MSSanté operator unavailable for the MDN: {exc}") from exc

    def _record() -> None:
        with ctx.db.session() as s:
            out = s.scalar(select(Mail).where(Mail.key == out_key))
            mail = s.get_one(Mail, mail_id)
            assert out is not None
            out.status = "sent" if result.accepted else "failed"
            out.reason = "; ".join(f"{k} : {v}" for k, v in result.refused.items())[:2000] or None
            mail.detail = {**mail.detail, "mdn": out.status, "mdn_message_id": message_id}
            _audit(s, SYSTEM_ACTOR, "mss_mdn", mail, out.status, code=code, manual=manual)

    await asyncio.to_thread(_record)
    return {"mdn": "sent" if result.accepted else "refused", "code": code}


# --------------------------------------------------------------------------------------------------------------
# Triage actions (pages)


def attach(
    db: Database,
    mail_id: int,
    patient_id: int,
    actor: str,
    reason: str,
    *,
    limits: MailLimits | None = None,
) -> list[int]:
    """Integrate a mail in triage on the patient a person chose; returns the new document ids.

    The CDA still has to be readable and must not name another qualified INS than the chosen patient's: the
    person decides who the patient is, not that a document about someone else belongs here.
    """
    with db.session() as s:
        mail = s.get_one(Mail, mail_id)
        if mail.direction != "in" or mail.status != "triage":
            raise InboundError("MAIL_NOT_IN_TRIAGE", "Ce courriel n'est pas à trier")
        raw = load_payload(s, mail.payload_sha256 or "")
    try:
        inbound, cdas, _warnings = _open(raw, limits or MailLimits(), check_claim=False)
    except (MailError, XdmError) as exc:
        raise InboundError(exc.code, f"Rattachement impossible : {exc.message_fr}") from exc
    if not cdas:
        raise InboundError("MAIL_NO_CDA", "Aucun document CDA à intégrer dans ce courriel")
    with db.session() as s:
        mail = s.get_one(Mail, mail_id, with_for_update=True)
        if mail.status != "triage":
            raise InboundError("MAIL_NOT_IN_TRIAGE", "Ce courriel n'est plus à trier")
        patient = s.get(Patient, patient_id)
        if patient is None or not patient.active or patient.merged_into_id is not None:
            raise InboundError("PATIENT_UNKNOWN", "Patient inconnu ou fusionné")
        for c in cdas:
            named = c.header.patient.ins_matricule
            if (
                named
                and patient.ins_matricule
                and patient.status == IdentityStatus.QUAL.value
                and named != patient.ins_matricule
            ):
                raise InboundError(
                    "INS_CONFLICT", "Le document porte un autre INS que l'identité qualifiée choisie"
                )
        mail.patient_id = patient.id
        status = _integrate(s, mail, inbound, patient, cdas, actor, "mss_attach", reason, True)
        if status != "integrated":
            raise InboundError("DOCUMENT_CONFLICT", mail.reason or "Rattachement impossible")
        return list(mail.detail.get("document_ids", []))


def reject(db: Database, mail_id: int, reason: str, actor: str, *, code: str | None = None) -> None:
    """Refuse a mail in triage: kept with status "rejected", MDN with the refusal code if the sender asked."""
    if code is not None and code not in VOLET_ERROR_LABELS:
        raise InboundError("CODE_UNKNOWN", f"Code de refus inconnu : {code}")
    with db.session() as s:
        mail = s.get_one(Mail, mail_id, with_for_update=True)
        if mail.direction != "in" or mail.status not in ("triage", "received"):
            raise InboundError("MAIL_NOT_IN_TRIAGE", "Ce courriel n'est pas à trier")
        final = code or mail.mdn_code or "906"
        _set_status(s, mail, "rejected", reason, final, actor, "mss_reject")
        _enqueue_mdn(s, mail, final, True)


def confirm_mdn(db: Database, mail_id: int, actor: str) -> None:
    """Send an MDN held because its address differs from the Return-Path, once a person has checked it."""
    with db.session() as s:
        mail = s.get_one(Mail, mail_id, with_for_update=True)
        if mail.detail.get("mdn") != "confirmation_required":
            raise InboundError("MDN_NOT_HELD", "Aucun accusé en attente de confirmation pour ce courriel")
        code = mail.detail.get("mdn_pending_code")
        mail.detail = {**mail.detail, "mdn": "confirmed"}
        _audit(s, actor, "mss_mdn_confirm", mail, "confirmation de l'accusé", code=code)
        # Its own key: the automatic MDN job of the same code was held, not sent.
        _enqueue_mdn(s, mail, code, manual=True, key_suffix=":confirmed")


# --------------------------------------------------------------------------------------------------------------
# Job handlers


def make_integrate_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return {"status": await asyncio.to_thread(integrate_mail, ctx, int(job.args["mail_id"]))}

    return handle


def make_to_dpi_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_to_dpi(ctx, int(job.args["document_id"]), job.attempts)

    return handle


def make_mdn_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_mdn(
            ctx, int(job.args["mail_id"]), job.args.get("code"), bool(job.args.get("manual"))
        )

    return handle


def make_results_to_dpi_handler(ctx: MssInboundContext) -> Any:
    async def handle(job: Job) -> dict[str, Any]:
        return await send_results_to_dpi(ctx, int(job.args["document_id"]), job.attempts)

    return handle
