"""HL7 v2.5 scheduling notifications (chapter 10, SIU) as a DPI sends them to announce a patient's appointment.

Read here: ``SIU^S12`` (new booking), ``S13`` (rescheduled) and ``S14`` (modified) — both read as a modification —
and ``S15`` (cancelled). Structure SIU_S12::

    MSH SCH [TQ1] [NTE…] PID [PD1] [PV1] … {RGS [AIS [NTE…]] [AIG [NTE…]] [AIL [NTE…]] [AIP [NTE…]]}

What the patient mail needs, and where it is taken from:
- the patient: PID as in PAM FR (the INS repetition is what the patient address is built from; the IPP is optional
  as in the document volet);
- the appointment id: SCH-2 (filler, the scheduling system's own) else SCH-1 (placer): S14/S15 name the
  appointment of an earlier S12 by it;
- the start: TQ1-7, else SCH-11.4 (TQ, deprecated in v2.5 but still what many schedulers fill), else the first
  AIS-4 / AIL-6 / AIG-8 / AIP-6. Minute precision is required (a reminder without an hour is useless); a value
  without a UTC offset is Paris time;
- the place: AIL-3 (PL.9 description, else point of care, room, building, floor, facility name);
- the service: AIS-3 (service text), else AIG-3 (resource text); the professionals: AIP-3 names;
- the preparation: every NTE-3, in message order (the scheduler's free text for the patient).

No ANS example of SIU exists in the kits (hl7v2-examples has none): field positions follow HL7 v2.5 chapter 10.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo

from opensegur.transactions.hl7v2 import Hl7Error, MessageHeader
from opensegur.transactions.hl7v2_message import Hl7Message, Hl7Segment, get_field, segments
from opensegur.transactions.pam_fr import PamPatient, parse_patient

__all__ = ["AppointmentEvent", "Appointment", "SIU_EVENTS", "parse_siu", "parse_dtm"]

AppointmentEvent = Literal["booked", "modified", "cancelled"]
SIU_EVENTS: dict[str, AppointmentEvent] = {
    "S12": "booked",
    "S13": "modified",
    "S14": "modified",
    "S15": "cancelled",
}
_PARIS = ZoneInfo("Europe/Paris")
_DTM = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")
_MAX_TEXT = 2000  # a notification mail is no place for pages of text; beyond it the DPI sent something else


@dataclass
class Appointment:
    header: MessageHeader
    event: AppointmentEvent
    appointment_id: str  # SCH-2.1 else SCH-1.1
    patient: PamPatient
    start: datetime | None  # timezone-aware; None only for a cancellation that does not repeat it
    place: str
    service: str | None = None
    professionals: list[str] = field(default_factory=list)
    preparation: str = ""
    reason: str | None = None  # SCH-7 text
    duration_minutes: int | None = None


def _error(code: str, message: str, location: str) -> Hl7Error:
    return Hl7Error(code, message, location=location, severity="E")


def parse_dtm(value: str, location: str) -> datetime:
    """An HL7 DTM with at least minutes (``YYYYMMDDHHMM[SS][.S][+ZZZZ]``), as an aware datetime."""
    match = _DTM.match(value.strip())
    if not match:
        raise _error("102", f"Date et heure invalides (AAAAMMJJHHMM attendu) : {value[:20]!r}", location)
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError:
        raise _error("102", f"Date et heure invalides : {value[:20]!r}", location) from None
    if offset is None:
        return naive.replace(tzinfo=_PARIS)
    sign = 1 if offset[0] == "+" else -1
    delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return naive.replace(tzinfo=timezone(sign * delta))


def _text(value: str, location: str) -> str:
    text = " ".join(value.split())
    if len(text) > _MAX_TEXT:
        raise _error("102", f"Texte trop long ({len(text)} caractères > {_MAX_TEXT})", location)
    return text


def _start(message: Hl7Message, sch: Hl7Segment) -> datetime | None:
    candidates: list[tuple[str, str]] = []
    for tq1 in segments(message, "TQ1")[:1]:
        candidates.append((get_field(tq1, 7, 1, 1), "TQ1^1^7"))
    candidates.append((get_field(sch, 11, 1, 4), "SCH^1^11^1^4"))
    for name, field_no in (("AIS", 4), ("AIL", 6), ("AIG", 8), ("AIP", 6)):
        for i, seg in enumerate(segments(message, name), start=1):
            candidates.append((get_field(seg, field_no, 1, 1), f"{name}^{i}^{field_no}"))
    for value, location in candidates:
        if value.strip():
            return parse_dtm(value, location)
    return None


def _place(message: Hl7Message) -> str:
    for i, ail in enumerate(segments(message, "AIL"), start=1):
        loc = f"AIL^{i}^3"
        description = get_field(ail, 3, 1, 9)
        if description.strip():
            return _text(description, loc)
        parts = [
            get_field(ail, 3, 1, 1),  # point of care
            get_field(ail, 3, 1, 7),  # building
            get_field(ail, 3, 1, 8),  # floor
            get_field(ail, 3, 1, 2),  # room
            get_field(ail, 3, 1, 4),  # facility (HD.1)
        ]
        labels = ("", "bâtiment ", "étage ", "salle ", "")
        text = ", ".join(label + p.strip() for label, p in zip(labels, parts, strict=True) if p.strip())
        if text:
            return _text(text, loc)
    return ""


def _coded_text(seg: Hl7Segment, field_no: int) -> str:
    return (get_field(seg, field_no, 1, 2) or get_field(seg, field_no, 1, 1)).strip()


def _service(message: Hl7Message) -> str | None:
    for name in ("AIS", "AIG"):
        for i, seg in enumerate(segments(message, name), start=1):
            text = _coded_text(seg, 3)
            if text:
                return _text(text, f"{name}^{i}^3")
    return None


def _professionals(message: Hl7Message) -> list[str]:
    out = []
    for i, aip in enumerate(segments(message, "AIP"), start=1):
        prefix, given, family = get_field(aip, 3, 1, 6), get_field(aip, 3, 1, 3), get_field(aip, 3, 1, 2)
        name = " ".join(p.strip() for p in (prefix, given, family) if p.strip())
        if name:
            out.append(_text(name, f"AIP^{i}^3"))
    return out


def _preparation(message: Hl7Message) -> str:
    notes = []
    for i, nte in enumerate(segments(message, "NTE"), start=1):
        repetitions = [get_field(nte, 3, rep) for rep in range(1, 20)]
        text = " ".join(r.strip() for r in repetitions if r.strip())
        if text:
            notes.append(text)
        if sum(len(n) for n in notes) > _MAX_TEXT:
            raise _error("102", f"Notes de préparation trop longues (> {_MAX_TEXT} caractères)", f"NTE^{i}^3")
    return "\n".join(notes)


def _duration(sch: Hl7Segment, message: Hl7Message) -> int | None:
    for tq1 in segments(message, "TQ1")[:1]:
        value, unit = get_field(tq1, 6, 1, 1), get_field(tq1, 6, 1, 2).lower()
        if value.strip().isdigit():
            return int(value) * (60 if unit in ("h", "hr", "hour") else 1)
    value, unit = get_field(sch, 9), get_field(sch, 10, 1, 1).lower()
    if value.strip().isdigit():
        return int(value) * (60 if unit in ("h", "hr", "hour") else 1)
    return None


def parse_siu(message: Hl7Message, header: MessageHeader) -> Appointment:
    """The appointment of an SIU already checked by ``hl7v2.parse``; Hl7Error (AE) when unusable."""
    if header.message_type != "SIU":
        raise _error("200", f"Type de message non supporté : {header.message_type[:10]}", "MSH^1^9^1^1")
    event = SIU_EVENTS.get(header.trigger)
    if event is None:
        raise _error("201", f"Événement SIU non supporté : {header.trigger[:10]}", "MSH^1^9^1^2")
    schs = segments(message, "SCH")
    if not schs:
        raise _error("100", "Segment SCH absent", "SCH")
    sch = schs[0]
    appointment_id = (get_field(sch, 2, 1, 1) or get_field(sch, 1, 1, 1)).strip()
    if not appointment_id:
        raise _error("101", "Identifiant du rendez-vous (SCH-2 ou SCH-1) absent", "SCH^1^2")
    pids = segments(message, "PID")
    if not pids:
        raise _error("100", "Segment PID absent", "PID")
    patient = parse_patient(pids[0], 1, None, require_ipp=False)
    start = _start(message, sch)
    if start is None and event != "cancelled":
        raise _error("101", "Date et heure du rendez-vous absentes (TQ1-7, SCH-11.4 ou AIS-4)", "TQ1^1^7")
    place = _place(message)
    if not place and event != "cancelled":
        raise _error("101", "Lieu du rendez-vous absent (AIL-3)", "AIL^1^3")
    reason = _coded_text(sch, 7) or None
    return Appointment(
        header=header,
        event=event,
        appointment_id=appointment_id,
        patient=patient,
        start=start,
        place=place,
        service=_service(message),
        professionals=_professionals(message),
        preparation=_preparation(message),
        reason=_text(reason, "SCH^1^7") if reason else None,
        duration_minutes=_duration(sch, message),
    )
