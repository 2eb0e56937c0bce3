"""The ``mss.integrate`` job: a stored mail opened safely, its patient matched on the CDA's qualified INS, and its
documents kept (with a CR de biologie's results) and queued for the DPI — or the mail sent to triage or rejected
with a French reason."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, fields
from datetime import date
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.orm import Session

from opensegur.content.cda import CdaHeader
from opensegur.content.crbio import LabObservation, extract_results
from opensegur.content.jdv import VISIBILITY_CODES
from opensegur.documents.lifecycle import DocumentStatus
from opensegur.flows.dmp_feed import document_flags
from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_inbound.context import (
    SYSTEM_ACTOR,
    MailLimits,
    MailRow,
    MssInboundContext,
    enqueue_mdn,
    lock_mail,
    save_mail,
    set_mail_status,
)
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins
from opensegur.identity.rniv import IdentityStatus
from opensegur.identity.traits import normalise_name
from opensegur.store import jobs
from opensegur.store.models import Document, LabResult, Mail, Patient, Payload
from opensegur.store.payloads import store_payload
from opensegur.transactions.mss_mail import (
    InboundMail,
    MailError,
    open_packages,
    parse_inbound_mail,
    verify_ins_claim,
)
from opensegur.transactions.oru_results import LOINC_CR_BIO
from opensegur.transactions.xdm import XdmError, cda_unique_id

log = logging.getLogger(__name__)

# Read before the mail is parsed, outside the transaction that records the outcome: a read of two columns, which as
# an ORM session took the write lock and loaded both rows as entities only to read them.
_STATUS_AND_RAW = (
    select(Mail.status, Payload.data)
    .join(Payload, Payload.sha256 == Mail.payload_sha256)
    .where(Mail.id == bindparam("mail_id"))
)

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


@dataclass(frozen=True)
class _Verdict:
    status: str  # triage or rejected
    reason: str
    code: str


@dataclass(frozen=True)
class _Bearer:
    """The local identity that bears a document's INS: the columns matching and integration read."""

    id: int
    structure_id: int
    status: str
    birth_name: str
    first_names: str
    birth_date: date | None
    sex: str


@dataclass
class _Cda:
    content: bytes
    header: CdaHeader
    confidentiality: frozenset[str]


# Asked for every mail, built once with their values bound at each call: building them anew cost more than
# running them. Core on the table: the few columns read, no entities.
_PATIENT = cast(Table, Patient.__table__)
_BEARERS = select(*(_PATIENT.c[f.name] for f in fields(_Bearer))).where(
    _PATIENT.c.ins_matricule == bindparam("matricule"),
    _PATIENT.c.ins_oid == bindparam("oid"),
    _PATIENT.c.active.is_(True),
    _PATIENT.c.merged_into_id.is_(None),
)
_BEARERS_IN_SITE = _BEARERS.where(_PATIENT.c.structure_id == bindparam("site"))
# A document is written and queued, nothing of it read back but its id: Core statements on the table instead of
# the unit of work's flush, and reads of the few columns used instead of whole entities.
_DOCUMENT = cast(Table, Document.__table__)
_NEW_DOCUMENT = insert(_DOCUMENT).returning(_DOCUMENT.c.id)
_SAME_ID = (_DOCUMENT.c.structure_id == bindparam("structure_id")) & (
    _DOCUMENT.c.unique_id == bindparam("unique_id")
)
_PARENT_FLAGS = select(_DOCUMENT.c.flags).where(_SAME_ID)
_RECEIVED = select(_DOCUMENT.c.id, _DOCUMENT.c.payload_sha256).where(
    _SAME_ID, _DOCUMENT.c.kind == bindparam("kind")
)


# --------------------------------------------------------------------------------------------------------------
# Opening a mail and matching its patient


def open_mail(
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


def _trait_differences(header: CdaHeader, patient: _Bearer) -> list[str]:
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


def _match(s: Session, ctx: MssInboundContext, mail: MailRow, cdas: list[_Cda]) -> _Bearer | _Verdict:
    ins, verdict = _identity_verdict(cdas)
    if verdict is not None:
        return verdict
    assert ins is not None
    site = ctx.mailbox_structures.get(mail.mailbox.lower())
    params = {"matricule": ins.matricule, "oid": ins.oid, "site": site}
    found = [_Bearer(*row) for row in s.execute(_BEARERS if site is None else _BEARERS_IN_SITE, params)]
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


def _lab_results(s: Session, patient_id: int, document_id: int, observations: list[LabObservation]) -> None:
    """LabResult rows of a CR-BIO."""
    for o in observations:
        s.add(
            LabResult(
                patient_id=patient_id,
                document_id=document_id,
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


def _create_documents(
    s: Session, mail: MailRow, inbound: InboundMail, patient: Patient | _Bearer, cdas: list[_Cda]
) -> _Verdict | tuple[list[int], list[int]]:
    """Document rows and their ``mss.to_dpi`` jobs; (new ids, ids already received by another mail)."""
    planned: list[tuple[_Cda, str, str, str | None, int | None]] = []
    for c in cdas:
        unique_id = cda_unique_id(c.header)
        replaced = c.header.replaced_document
        kind = "replacement" if replaced is not None else "initial"
        parent = (
            (replaced.root if not replaced.extension else f"{replaced.root}^{replaced.extension}")
            if replaced
            else None
        )
        existing = s.execute(
            _RECEIVED, {"structure_id": patient.structure_id, "unique_id": unique_id, "kind": kind}
        ).first()
        if existing is not None and existing.payload_sha256 != hashlib.sha256(c.content).hexdigest():
            return _Verdict("triage", "Identifiant de document déjà utilisé pour un autre contenu", "906")
        planned.append((c, unique_id, kind, parent, existing.id if existing is not None else None))
    created: list[int] = []
    duplicates: list[int] = []
    for c, unique_id, kind, parent_id, existing_id in planned:
        if existing_id is not None:
            duplicates.append(existing_id)
            continue
        previous_flags: dict[str, Any] | None = (
            s.scalar(_PARENT_FLAGS, {"structure_id": patient.structure_id, "unique_id": parent_id})
            if parent_id
            else None
        )
        confidentiality = set(c.confidentiality)
        flags = document_flags(
            dest_dmp=False,
            masque_ps="MASQUE_PS" in confidentiality,
            invisible_patient="INVISIBLE_PATIENT" in confidentiality,
            invisible_rep_legaux="INVISIBLE_REPRESENTANTS_LEGAUX" in confidentiality,
            modif_conf_code=previous_flags is not None
            and set(previous_flags.get("confidentiality", [])) != confidentiality,
        )
        type_code = c.header.code.code if c.header.code else None
        findings: list[dict[str, Any]] = []
        observations: list[LabObservation] = []
        if type_code == LOINC_CR_BIO:
            try:
                observations = extract_results(c.content)
            except ValueError as exc:
                findings = [
                    {"severity": "warning", "source": "crbio", "code": "CRBIO", "message": str(exc)[:300]}
                ]
            else:
                flags = {**flags, "lab_results": len(observations)}
        doc_id: int = s.execute(
            _NEW_DOCUMENT,
            {
                "structure_id": patient.structure_id,
                "patient_id": patient.id,
                "source": "mssante",
                "kind": kind,
                "unique_id": unique_id,
                "parent_unique_id": parent_id,
                "type_code": type_code,
                "title": (c.header.title or "")[:300] or None,
                "payload_sha256": store_payload(s, c.content),
                "mime_type": "text/xml",
                "size": len(c.content),
                "ins_matricule": c.header.patient.ins_matricule,
                "ins_oid": c.header.patient.ins_oid,
                "status": DocumentStatus.INTEGRATED,
                "findings": findings,
                "flags": flags,
                "context": {
                    "mail_id": mail.id,
                    "mailbox": mail.mailbox,
                    "sender": inbound.from_addr,
                    "message_id": inbound.message_id,
                },
            },
        ).scalar_one()
        _lab_results(s, patient.id, doc_id, observations)
        jobs.enqueue(
            s,
            JobKind.MSS_TO_DPI,
            f"{JobKind.MSS_TO_DPI}:{doc_id}",
            {"document_id": doc_id},
            structure_id=patient.structure_id,
            patient_id=patient.id,
        )
        created.append(doc_id)
    return created, duplicates


def integrate_on_patient(
    s: Session,
    mail: MailRow,
    inbound: InboundMail,
    patient: Patient | _Bearer,
    cdas: list[_Cda],
    actor: str,
    action: str,
    reason: str | None,
    manual: bool,
) -> str:
    result = _create_documents(s, mail, inbound, patient, cdas)
    if isinstance(result, _Verdict):
        set_mail_status(s, mail, result.status, result.reason, result.code, actor, "mss_triage")
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
    set_mail_status(s, mail, "integrated", text, None, actor, action)
    if not created:
        enqueue_mdn(s, mail, None, manual)
    return mail.status


def integrate_mail(ctx: MssInboundContext, mail_id: int) -> str:
    """The ``mss.integrate`` job: returns the mail's new status (integrated, triage or rejected)."""
    with ctx.db.read_connection() as conn:
        status, raw = conn.execute(_STATUS_AND_RAW, {"mail_id": mail_id}).one()
    if status != "received":
        return status  # already done by a previous run of this job
    # Parsing and unzipping are the costly part: outside any transaction.
    verdict: _Verdict | None = None
    inbound: InboundMail | None = None
    cdas: list[_Cda] = []
    warnings: list[str] = []
    try:
        inbound, cdas, warnings = open_mail(raw, ctx.limits)
    except (MailError, XdmError) as exc:
        verdict = _verdict_for(exc)
    with ctx.db.session() as s:
        mail = lock_mail(s, mail_id)
        if mail.status != "received":
            return mail.status
        status = _settle(s, ctx, mail, inbound, cdas, warnings, verdict)
        save_mail(s, mail)
        return status


def _settle(
    s: Session,
    ctx: MssInboundContext,
    mail: MailRow,
    inbound: InboundMail | None,
    cdas: list[_Cda],
    warnings: list[str],
    verdict: _Verdict | None,
) -> str:
    """The outcome of a received mail, set on ``mail``; its new status."""
    if warnings:
        mail.detail = {**mail.detail, "xdm_warnings": warnings}
    # The mailbox's site: a mail waiting in triage is then seen by that site's staff, not only GHT-wide.
    mail.structure_id = mail.structure_id or ctx.mailbox_structures.get(mail.mailbox.lower())
    if verdict is None:
        assert inbound is not None
        matched = _match(s, ctx, mail, cdas)
        if isinstance(matched, _Bearer):
            status = integrate_on_patient(
                s, mail, inbound, matched, cdas, SYSTEM_ACTOR, "mss_integrate", None, False
            )
            log.info("mail %s: %s", mail.id, status)
            return status
        verdict = matched
    set_mail_status(
        s, mail, verdict.status, verdict.reason, verdict.code, SYSTEM_ACTOR, f"mss_{verdict.status}"
    )
    if verdict.status == "rejected":
        enqueue_mdn(s, mail, verdict.code, False)
    log.info("mail %s: %s (code %s)", mail.id, verdict.status, verdict.code)
    return verdict.status
