"""Flow entry for every HL7 v2 message from hospital systems: store durably, apply, then acknowledge.

Order matters: the raw message, what it changed and its ACK are committed in one transaction before the ACK
leaves, so an ACK AA is a promise that survives a crash. Messages arriving together on several connections share
that transaction (:mod:`opensegur.store.group_commit`). A repeated control id gets the stored ACK again and
changes nothing: the message's record is unique on its sender and control id, so recording a repeat fails and
takes what its processing wrote back with it. A repeat is rare (a sender that missed an ACK): no message is
asked first whether it is one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opensegur.flows.dmp_feed import accept_document
from opensegur.flows.identity_feed import apply_event
from opensegur.flows.mss_outbound import accept_appointment
from opensegur.store.db import Database
from opensegur.store.group_commit import GroupCommit
from opensegur.store.models import InboundMessage
from opensegur.store.payloads import store_payload
from opensegur.transactions import cda_hl7v2, hl7v2, pam_fr, siu
from opensegur.transactions.hl7v2_message import Hl7Message

log = logging.getLogger(__name__)

CHANNEL = "mllp"


@dataclass
class IntakeResult:
    ack: bytes
    ack_code: str
    message_id: int | None
    duplicate: bool = False


_INBOUND = cast(Table, InboundMessage.__table__)

# Asked when a message's record meets its control id already stored: three table columns, no ORM object.
_SEEN = select(_INBOUND.c.id, _INBOUND.c.ack, _INBOUND.c.ack_code).where(
    _INBOUND.c.channel == CHANNEL,
    _INBOUND.c.sender == bindparam("sender"),
    _INBOUND.c.control_id == bindparam("control_id"),
)

# Every message is recorded: a Core INSERT, as no ORM object of it is used afterwards (a fifth of the ORM's cost).
# These Core statements run on the session's connection: the session's execution adds nothing to them but a fifth.
_RECORD = insert(_INBOUND).returning(_INBOUND.c.id)


def _error_rows(errors: list[hl7v2.Hl7Error]) -> list[dict[str, str]]:
    return [
        {"code": e.code, "severity": e.severity, "location": e.location, "message": e.message} for e in errors
    ]


_Content = pam_fr.PamEvent | cda_hl7v2.DocumentMessage | siu.Appointment | hl7v2.Hl7Error


def _read_content(message: Hl7Message, header: hl7v2.MessageHeader) -> _Content:
    """What the message carries, or the error that refuses it (answered once its control id is checked)."""
    try:
        if header.message_type == "ADT":
            return pam_fr.parse_pam(message, header)
        if header.message_type in ("MDM", "ORU"):
            return cda_hl7v2.parse_document_message(message, header)
        if header.message_type == "SIU":
            return siu.parse_siu(message, header)
    except hl7v2.Hl7Error as exc:
        return exc
    return hl7v2.Hl7Error(
        code="200",
        severity="E",
        location="MSH^1^9^1",
        message=f"Type de message {header.message_type} non pris en charge",
        reject=True,
    )


class Hl7Intake:
    def __init__(
        self,
        db: Database,
        *,
        app: str = "OPENSEGUR",
        facility: str = "OPENSEGUR",
        business_acks: bool = True,
    ) -> None:
        self.db = db
        # The messages of several connections arriving together share one commit; each ACK still follows it.
        self._commits = GroupCommit(db)
        self.business_acks = business_acks  # False when no DPI endpoint receives ZAM
        self.app = app
        self.facility = facility

    def handle(self, raw: bytes) -> IntakeResult:
        try:
            message, header = hl7v2.parse(raw)
        except hl7v2.Hl7Error as exc:
            return self._unparseable(raw, exc)
        sender = f"{header.sending_application}|{header.sending_facility}"
        # Reading the content (base64, CDA header) is CPU work that needs no database: done before the write lock.
        content = _read_content(message, header)
        try:
            try:
                result = self._store_and_apply(raw, content, header, sender)
            except hl7v2.Hl7Error as refusal:
                # What the refused message wrote went with its unit of work, so processing needs no savepoint of
                # its own (a tenth of an identity message's CPU): the message and its refusal are stored by another.
                result = self._store_and_apply(raw, refusal, header, sender)
        except IntegrityError:
            # The control id is already recorded (a repeat, or the same message on another connection at the same
            # moment): what this one wrote went back; answer with the stored ACK.
            with self.db.session(urgent=True) as s:
                seen = self._seen(s, sender, header.control_id)
            if seen is None:
                raise
            return seen
        log.info(
            "hl7 %s^%s id=%s -> %s", header.message_type, header.trigger, result.message_id, result.ack_code
        )
        return result

    def _store_and_apply(
        self, raw: bytes, content: _Content, header: hl7v2.MessageHeader, sender: str
    ) -> IntakeResult:
        """One unit of work of the group commit, committed when this returns; a refusal raised while applying the
        content leaves it, undoing what it wrote."""
        return self._commits.run(lambda s: self._process(s, raw, content, header, sender))

    def _seen(self, s: Session, sender: str, control_id: str) -> IntakeResult | None:
        row = s.connection().execute(_SEEN, {"sender": sender, "control_id": control_id}).first()
        if row is None:
            return None
        return IntakeResult(row.ack, row.ack_code, row.id, duplicate=True)

    def _process(
        self, s: Session, raw: bytes, content: _Content, header: hl7v2.MessageHeader, sender: str
    ) -> IntakeResult:
        errors: list[hl7v2.Hl7Error] = []
        patient_id: int | None = None
        structure_id: int | None = None
        digest = store_payload(s, raw)
        if isinstance(content, hl7v2.Hl7Error):
            errors = [content]
        elif isinstance(content, pam_fr.PamEvent):
            outcome = apply_event(s, content, actor=f"hl7:{sender}")
            patient_id, structure_id = outcome.patient_id, outcome.structure_id
            errors.extend(outcome.warnings)
        elif isinstance(content, cda_hl7v2.DocumentMessage):
            accepted = accept_document(
                s, content, sender, actor=f"hl7:{sender}", business_acks=self.business_acks
            )
            patient_id, structure_id = accepted.patient_id, accepted.structure_id
            errors.extend(accepted.warnings)
        else:
            booked = accept_appointment(s, content, sender)
            patient_id, structure_id = booked.patient_id, booked.structure_id
            errors.extend(booked.warnings)
        failed = [e for e in errors if e.severity == "E"]
        code = "AA" if not failed else ("AR" if any(e.reject for e in failed) else "AE")
        ack = hl7v2.build_ack(header, code, errors, app=self.app, facility=self.facility)
        record = {
            "channel": CHANNEL,
            "sender": sender,
            "control_id": header.control_id,
            "message_type": f"{header.message_type}^{header.trigger}",
            "structure_id": structure_id,
            "patient_id": patient_id,
            "payload_sha256": digest,
            "status": "accepted" if code == "AA" else "rejected",
            "ack_code": code,
            "ack": ack,
            "errors": _error_rows(errors),
        }
        message_id = s.connection().execute(_RECORD, record).scalar_one()
        return IntakeResult(ack, code, message_id)

    def _unparseable(self, raw: bytes, exc: hl7v2.Hl7Error) -> IntakeResult:
        """Keep what could not be read (visible to operators), answer AR."""
        ack = hl7v2.build_nak_for_unparseable(raw, exc)
        digest = hashlib.sha256(raw).hexdigest()
        with self.db.session(urgent=True) as s:
            store_payload(s, raw)
            if self._seen(s, "?", digest[:64]) is None:
                s.execute(
                    _RECORD,
                    {
                        "channel": CHANNEL,
                        "sender": "?",
                        "control_id": digest[:64],
                        "message_type": "?",
                        "payload_sha256": digest,
                        "status": "rejected",
                        "ack_code": "AR",
                        "ack": ack,
                        "errors": _error_rows([exc]),
                    },
                )
        log.info("hl7 unparseable message rejected: %s", exc.code)
        return IntakeResult(ack, "AR", None)
