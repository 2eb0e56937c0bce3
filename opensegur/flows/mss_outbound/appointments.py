"""Appointments (MSSanté citoyenne): an SIU from the DPI or a REST request stores an outgoing ``Mail`` to the patient's
Mon espace santé address, and the ``mss.appointment`` step sends it.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email import policy
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.flows.identity_feed import find_by_identifier, read_ins
from opensegur.flows.jobs import JobKind
from opensegur.flows.mss_outbound.common import (
    UNCERTAIN_TEXT,
    MssOutboundConfig,
    MssOutboundError,
    norm,
    sender_for,
)
from opensegur.flows.mss_outbound.sending import Ready, send_prepared, stored_envelope
from opensegur.flows.mssante_ports import MailSender
from opensegur.hospital.sites import resolve_site
from opensegur.identity.rniv import IdentityStatus
from opensegur.store import jobs
from opensegur.store.db import Database
from opensegur.store.models import AuditEvent, Mail, Patient, Payload, Structure
from opensegur.store.payloads import store_payload
from opensegur.transactions.hl7v2 import Hl7Error
from opensegur.transactions.mss_mail import (
    MailError,
    build_patient_appointment_mail,
    patient_mailbox,
    smtp_envelope,
)
from opensegur.transactions.siu import Appointment


@dataclass
class AcceptedAppointment:
    patient_id: int
    structure_id: int
    mail_id: int | None
    warnings: list[Hl7Error]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _appointment_prefix(structure_id: int, appointment_id: str) -> str:
    # Hashed: an appointment id may hold ":" or LIKE wildcards, and the prefix must name one appointment only.
    return f"out:appt:{structure_id}:{_hash(appointment_id)}:"


def _appointment_mails(s: Session, structure_id: int, appointment_id: str) -> list[Mail]:
    prefix = _appointment_prefix(structure_id, appointment_id)
    return list(
        s.scalars(
            select(Mail)
            .where(Mail.direction == "out", Mail.key.startswith(prefix, autoescape=True))
            .order_by(Mail.id)
            .with_for_update()
        )
    )


def _new_appointment_mail(
    s: Session,
    site_id: int,
    patient: Patient,
    appointment_id: str,
    suffix: str,
    details: dict[str, Any],
) -> Mail:
    address = patient_mailbox(patient.ins_matricule or "", ins_qualified=True)
    for previous in _appointment_mails(s, site_id, appointment_id):
        if previous.status == "pending":
            # A newer version of the appointment replaces a reminder that has not left yet.
            previous.status, previous.reason = "cancelled", "Remplacé par une modification du rendez-vous"
    mail = Mail(
        direction="out",
        key=_appointment_prefix(site_id, appointment_id) + suffix,
        mailbox="",
        recipients=[address],
        structure_id=site_id,
        patient_id=patient.id,
        status="pending",
        detail={
            "kind": "appointment",
            "appointment_id": appointment_id,
            "recipients": {norm(address): {"status": "pending"}},
            **details,
        },
    )
    s.add(mail)
    s.flush()
    jobs.enqueue(
        s,
        JobKind.MSS_APPOINTMENT,
        f"{JobKind.MSS_APPOINTMENT}:{mail.id}",
        {"mail_id": mail.id},
        structure_id=site_id,
        patient_id=patient.id,
    )
    return mail


def _hl7_error(message: str, location: str, code: str = "207") -> Hl7Error:
    return Hl7Error(code, message, location=location, severity="E", application_code="906")


def _find_patient(s: Session, site: Structure, appt: Appointment) -> Patient:
    """The patient by IPP, else by INS. An appointment never creates an identity: the GAM's feed does."""
    ipp = appt.patient.ipp
    patient = find_by_identifier(s, ipp, site) if ipp is not None else None
    ins = read_ins(appt.patient)
    if patient is None and ins is not None:
        patient = s.scalar(
            select(Patient).where(
                Patient.structure_id == site.id,
                Patient.active.is_(True),
                Patient.ins_matricule == ins.matricule,
                Patient.ins_oid == ins.oid,
            )
        )
    if patient is None:
        raise _hl7_error(
            "Patient inconnu de la plateforme : son identité n'a pas été reçue du GAM", "PID^1^3"
        )
    return patient


def accept_appointment(s: Session, appt: Appointment, sender: str) -> AcceptedAppointment:
    """Record an SIU's appointment and queue the patient's mail (inside the HL7 intake transaction).

    Raises Hl7Error (AE) for a patient without a qualified INS: Mon espace santé is addressed by the INS only.
    """
    ipp = appt.patient.ipp
    candidates = [ipp.authority_oid, ipp.assigning_authority_name] if ipp is not None else []
    site = resolve_site(s, [*candidates, appt.header.sending_facility or ""])
    if site is None:
        raise _hl7_error("Établissement émetteur inconnu : aucun site du GHT ne le déclare", "MSH^1^4")
    patient = _find_patient(s, site, appt)
    warnings: list[Hl7Error] = []
    if appt.event == "cancelled":
        return _cancel_appointment(s, site.id, patient, appt, warnings)
    ins = read_ins(appt.patient)
    if ins is None:
        raise _hl7_error(
            "INS du patient absent : rendez-vous non transmissible à Mon espace santé", "PID^1^3"
        )
    if patient.status != IdentityStatus.QUAL.value or not patient.ins_matricule:
        raise _hl7_error(
            "Identité INS du patient non qualifiée : rendez-vous non transmissible à Mon espace santé",
            "PID^1^32",
        )
    if patient.ins_matricule != ins.matricule:
        raise _hl7_error("L'INS du message n'est pas celui de l'identité qualifiée du patient", "PID^1^3")
    assert appt.start is not None  # parse_siu requires it for a booking or a modification
    if appt.start <= datetime.now(UTC):
        warnings.append(
            Hl7Error(
                "207",
                "Rendez-vous passé : aucun courriel envoyé au patient",
                location="TQ1^1^7",
                severity="W",
                application_code="906",
            )
        )
        return AcceptedAppointment(patient.id, site.id, None, warnings)
    place = appt.place
    if appt.service:
        place = f"{place} — {appt.service}"
    if appt.professionals:
        place = f"{place}, avec {', '.join(appt.professionals)}"
    mail = _new_appointment_mail(
        s,
        site.id,
        patient,
        appt.appointment_id,
        _hash(f"{sender}|{appt.header.control_id}"),
        {
            "event": appt.event,
            "start": appt.start.isoformat(),
            "place": place,
            "preparation": appt.preparation,
            "no_reply": True,
            "source": "hl7",
        },
    )
    return AcceptedAppointment(patient.id, site.id, mail.id, warnings)


def _cancel_appointment(
    s: Session, site_id: int, patient: Patient, appt: Appointment, warnings: list[Hl7Error]
) -> AcceptedAppointment:
    already_sent = False
    for mail in _appointment_mails(s, site_id, appt.appointment_id):
        if mail.status == "pending":
            mail.status, mail.reason = "cancelled", "Rendez-vous annulé avant l'envoi du courriel"
        elif mail.status in ("sending", "sent", "delivered", "read"):
            already_sent = True
    if already_sent:
        # mss_mail has no cancellation mail yet: say so to the DPI rather than let it believe the patient knows.
        warnings.append(
            Hl7Error(
                "207",
                "Annulation enregistrée mais non envoyée : le patient a reçu la confirmation, le prévenir directement",
                location="SCH^1^2",
                severity="W",
                application_code="906",
            )
        )
    return AcceptedAppointment(patient.id, site_id, None, warnings)


def schedule_appointment(
    s: Session,
    patient_id: int,
    *,
    start: datetime,
    place: str,
    preparation: str,
    allow_reply: bool,
    actor: str,
) -> Mail:
    """An appointment mail requested through the API (same rules as an SIU)."""
    patient = s.get(Patient, patient_id)
    if patient is None or not patient.active:
        raise MssOutboundError("NOT_FOUND", "Patient inconnu")
    if patient.status != IdentityStatus.QUAL.value or not patient.ins_matricule:
        raise MssOutboundError(
            "INS_NOT_QUALIFIED",
            "Identité INS du patient non qualifiée : rendez-vous non transmissible à Mon espace santé",
        )
    if start.tzinfo is None:
        raise MssOutboundError("START_NAIVE", "Date du rendez-vous sans fuseau horaire")
    if start <= datetime.now(UTC):
        raise MssOutboundError("START_PAST", "Date du rendez-vous passée")
    if not place.strip():
        raise MssOutboundError("PLACE_MISSING", "Lieu du rendez-vous absent")
    appointment_id = f"api:{uuid.uuid4()}"
    mail = _new_appointment_mail(
        s,
        patient.structure_id,
        patient,
        appointment_id,
        "api",
        {
            "event": "booked",
            "start": start.isoformat(),
            "place": " ".join(place.split()),
            "preparation": preparation.strip(),
            "no_reply": not allow_reply,
            "source": "api",
        },
    )
    s.add(
        AuditEvent(
            actor=actor,
            action="mss_appointment",
            patient_id=patient.id,
            reason="api",
            detail={"mail_id": mail.id},
        )
    )
    return mail


def _prepare_appointment(db: Database, cfg: MssOutboundConfig, mail_id: int) -> Ready | dict[str, Any]:
    with db.session() as s:
        mail = s.scalar(select(Mail).where(Mail.id == mail_id).with_for_update())
        assert mail is not None
        if mail.status == "sending":
            mail.status, mail.reason = "failed", UNCERTAIN_TEXT
            return {"skipped": "uncertain"}
        if mail.status != "pending":
            return {"skipped": mail.status}
        detail = mail.detail
        start = datetime.fromisoformat(detail["start"])
        patient = s.get(Patient, mail.patient_id) if mail.patient_id else None
        if start <= datetime.now(UTC):
            mail.status, mail.reason = "failed", "Rendez-vous passé avant l'envoi : rappel non envoyé"
            return {"failed": "START_PAST"}
        if mail.payload_sha256 is None:
            sender = sender_for(s, cfg, mail.structure_id)
            try:
                msg = build_patient_appointment_mail(
                    sender=sender,
                    patient_ins=(patient.ins_matricule or "") if patient is not None else "",
                    qualified=patient is not None and patient.status == IdentityStatus.QUAL.value,
                    when=start,
                    place=detail["place"],
                    preparation=detail.get("preparation", ""),
                    nil=cfg.nil,
                    no_reply=bool(detail.get("no_reply", True)),
                )
            except MailError as exc:
                mail.status, mail.reason = "failed", exc.message_fr
                return {"failed": exc.code}
            envelope = smtp_envelope(msg, return_receipt=False)
            raw = msg.as_bytes(policy=policy.SMTP)
            mail.payload_sha256 = store_payload(s, raw)
            mail.message_id, mail.subject = str(msg["Message-ID"]), str(msg["Subject"])[:500]
            mail.sender = mail.mailbox = sender
            mail.detail = {**detail, "envelope": asdict(envelope)}
        else:
            raw, envelope = s.get_one(Payload, mail.payload_sha256).data, stored_envelope(mail)
        mail.status = "sending"
        return Ready(mail.id, raw, envelope)


async def send_appointment_mail(
    db: Database, mailer: MailSender, cfg: MssOutboundConfig, mail_id: int
) -> dict[str, Any]:
    ready = await asyncio.to_thread(_prepare_appointment, db, cfg, mail_id)
    return await send_prepared(
        db,
        mailer,
        ready,
        not_built="rappel de rendez-vous non envoyé",
        all_refused="adresse du patient refusée par l'opérateur",
    )
