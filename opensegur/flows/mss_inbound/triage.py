"""What a person decides on a mail in triage (the pages): attach it to the patient they chose, or reject it."""

from __future__ import annotations

from opensegur.flows.mss_inbound.context import (
    InboundError,
    MailLimits,
    enqueue_mdn,
    lock_mail,
    save_mail,
    set_mail_status,
)
from opensegur.flows.mss_inbound.integration import integrate_on_patient, open_mail
from opensegur.identity.rniv import IdentityStatus
from opensegur.store.db import Database
from opensegur.store.models import Mail, Patient
from opensegur.store.payloads import load_payload
from opensegur.transactions.mdn import ERROR_LABELS as VOLET_ERROR_LABELS
from opensegur.transactions.mss_mail import MailError
from opensegur.transactions.xdm import XdmError


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
        stored = s.get_one(Mail, mail_id)
        if stored.direction != "in" or stored.status != "triage":
            raise InboundError("MAIL_NOT_IN_TRIAGE", "Ce courriel n'est pas à trier")
        raw = load_payload(s, stored.payload_sha256 or "")
    try:
        inbound, cdas, _warnings = open_mail(raw, limits or MailLimits(), check_claim=False)
    except (MailError, XdmError) as exc:
        raise InboundError(exc.code, f"Rattachement impossible : {exc.message_fr}") from exc
    if not cdas:
        raise InboundError("MAIL_NO_CDA", "Aucun document CDA à intégrer dans ce courriel")
    with db.session() as s:
        mail = lock_mail(s, mail_id)
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
        status = integrate_on_patient(s, mail, inbound, patient, cdas, actor, "mss_attach", reason, True)
        if status != "integrated":
            raise InboundError("DOCUMENT_CONFLICT", mail.reason or "Rattachement impossible")
        save_mail(s, mail)
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
        set_mail_status(s, mail, "rejected", reason, final, actor, "mss_reject")
        enqueue_mdn(s, mail, final, True)
