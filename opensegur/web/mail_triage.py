"""Triage of the MSSanté mails no rule could attach to a patient: what a mail says about its patient, the local
patients it may concern, ranked with the reasons in French, and the mail as the triage pages and API show it.

Business rules live in ``flows.mss_inbound.triage`` (attach / reject); this module reads the mails and ranks the
patients a mail may concern, and the routes (``web/routes/mssante``) write the audit trail of every read that shows
patient data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.orm import Session

from opensegur.content.cda import CdaHeader, parse_cda
from opensegur.identity.rniv import IdentityStatus
from opensegur.identity.traits import normalise_name
from opensegur.store.models import Mail, Patient, Payload
from opensegur.transactions.mss_mail import XDM_SUBJECT_PREFIX, InboundMail, parse_inbound_mail
from opensegur.transactions.xdm import read_xdm
from opensegur.web.format_fr import StatusOut, age_fr, aware, when_fr

__all__ = [
    "MAIL_STATUS_LABELS",
    "AttachRequest",
    "Candidate",
    "IdentityHint",
    "RejectRequest",
    "Suggestion",
    "TriageList",
    "TriageOutcome",
    "get_mail",
    "mail_detail",
    "mail_hints",
    "mail_summary",
    "rank_candidates",
    "raw_mail",
    "suggest_patients",
]

_DATE_RE = re.compile(r"(\d{2})/(\d{2})/(\d{4})")
# Below this a suggestion is noise (a birth date alone matches dozens of patients in a GHT).
_MIN_SCORE = 40
_MAX_BODY_SHOWN = 4000


MAIL_STATUS_LABELS = {
    "received": "Reçu",
    "integrated": "Intégré",
    "triage": "À trier",
    "rejected": "Rejeté",
    "pending": "En attente d'envoi",
    "sent": "Envoyé",
    "delivered": "Remis",
    "failed": "Échec d'envoi",
    "read": "Lu",
}


def _patient_name(p: Patient) -> str:
    return f"{p.used_name or p.birth_name} {p.first_names}".strip()


# ---- suggested patients (pure) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityHint:
    """What a mail says about its patient, from one source: a CDA header, or the subject and X-MSS-INS."""

    source: Literal["cda", "objet"]
    ins_matricule: str | None = None
    ins_claimed: str | None = None  # X-MSS-INS carrying a matricule: the sender's word only
    family_names: tuple[str, ...] = ()
    given_names: tuple[str, ...] = ()
    birth_date: date | None = None
    sex: str | None = None
    words: tuple[str, ...] = ()  # normalised subject words, where the name cannot be told from the label


@dataclass(frozen=True)
class Candidate:
    id: int
    birth_name: str
    used_name: str | None
    first_names: str
    birth_date: date | None
    sex: str
    status: str
    ins_matricule: str | None

    @classmethod
    def of(cls, p: Patient) -> Candidate:
        return cls(
            p.id, p.birth_name, p.used_name, p.first_names, p.birth_date, p.sex, p.status, p.ins_matricule
        )


@dataclass
class Suggestion:
    patient_id: int
    score: int
    reasons: list[str] = field(default_factory=list)


def _contains(words: Sequence[str], name: str) -> bool:
    target = normalise_name(name).split()
    n = len(target)
    return bool(target) and any(list(words[i : i + n]) == target for i in range(len(words) - n + 1))


def _score(hint: IdentityHint, c: Candidate) -> tuple[int, list[str]]:
    score, reasons = 0, []
    if hint.ins_matricule and hint.ins_matricule == c.ins_matricule:
        qualified = c.status == IdentityStatus.QUAL
        score += 100 if qualified else 80
        reasons.append(
            "INS du document identique"
            + ("" if qualified else f" (identité locale : {IdentityStatus(c.status).label.lower()})")
        )
    if hint.ins_claimed and hint.ins_claimed == c.ins_matricule:
        score += 40
        reasons.append("INS annoncé par l'expéditeur (X-MSS-INS, non vérifié)")
    if hint.birth_date and c.birth_date:
        if hint.birth_date == c.birth_date:
            score += 30
            reasons.append("date de naissance identique")
        else:
            # A typo in either record is common; shown so the user checks, not a reason to hide the patient.
            score -= 10
            reasons.append("date de naissance différente")
    names = {normalise_name(f) for f in hint.family_names if f.strip()}
    if names & {normalise_name(c.birth_name)}:
        score += 30
        reasons.append("nom de naissance identique")
    elif c.used_name and names & {normalise_name(c.used_name)}:
        score += 25
        reasons.append("nom d'usage identique")
    elif hint.words and (
        _contains(hint.words, c.birth_name) or (c.used_name and _contains(hint.words, c.used_name))
    ):
        score += 25
        reasons.append("nom présent dans l'objet du courriel")
    first = c.first_names.split()[0] if c.first_names.split() else ""
    givens = {normalise_name(g).split()[0] for g in hint.given_names if g.strip()}
    if first and normalise_name(first) in givens:
        score += 15
        reasons.append("premier prénom identique")
    elif first and hint.words and _contains(hint.words, first):
        score += 10
        reasons.append("prénom présent dans l'objet du courriel")
    if hint.sex in ("M", "F") and c.sex in ("M", "F"):
        if hint.sex == c.sex:
            score += 5
        else:
            score -= 20
            reasons.append("sexe différent")
    return score, reasons


def rank_candidates(
    hints: Sequence[IdentityHint], candidates: Iterable[Candidate], limit: int = 5
) -> list[Suggestion]:
    """Local patients a mail may concern, best first, each with the reasons in French.

    Each patient is scored against each hint and keeps its best: a CDA and a subject that agree do not add up,
    so the score tells how strong the *best single source* is. An INS from the CDA weighs most; the sender's
    X-MSS-INS only as a claim; name and birth date together make a suggestion, a birth date alone does not.
    """
    best: dict[int, Suggestion] = {}
    for c in candidates:
        for hint in hints:
            score, reasons = _score(hint, c)
            if score >= _MIN_SCORE and (c.id not in best or score > best[c.id].score):
                best[c.id] = Suggestion(c.id, score, reasons)
    return sorted(best.values(), key=lambda s: (-s.score, s.patient_id))[:limit]


def _birth_date(ts: str | None) -> date | None:
    if not ts or len(ts) < 8 or not ts[:8].isdigit():
        return None
    try:
        return date(int(ts[:4]), int(ts[4:6]), int(ts[6:8]))
    except ValueError:
        return None


def _cda_hint(h: CdaHeader) -> IdentityHint:
    p = h.patient
    families = tuple(f for f in (p.birth_family, p.used_family) if f)
    givens = tuple(g for g in (p.first_given, *p.given_names) if g)
    return IdentityHint(
        "cda",
        ins_matricule=p.ins_matricule,
        family_names=families,
        given_names=givens,
        birth_date=_birth_date(p.birth_time),
        sex=p.gender,
    )


def _subject_hint(subject: str, claimed: str | None) -> IdentityHint | None:
    text = subject.split(f"{XDM_SUBJECT_PREFIX}+", 1)[-1]
    found = _DATE_RE.findall(text)
    born = None
    if found:
        day, month, year = found[-1]
        try:
            born = date(int(year), int(month), int(day))
        except ValueError:
            born = None
    words = tuple(normalise_name(_DATE_RE.sub(" ", text)).split())
    if born is None and not words and not claimed:
        return None
    return IdentityHint("objet", ins_claimed=claimed, birth_date=born, words=words)


def mail_hints(raw: bytes | None, subject: str | None = None) -> list[IdentityHint]:
    """Every identity clue of a stored mail: each CDA (in XDM packages or attached bare), then the subject.

    The mail is often in triage *because* part of it is unreadable or hostile: each part is read on its own
    with the safe readers and a part that fails is skipped, so the others still help.
    """
    hints: list[IdentityHint] = []
    claimed = None
    mail: InboundMail | None = None
    if raw:
        try:
            mail = parse_inbound_mail(raw)
        except ValueError:
            mail = None
    if mail is not None:
        subject = subject or mail.subject
        claimed = mail.ins_claim.matricule if mail.ins_claim else None
        headers: list[CdaHeader] = []
        for z in mail.xdm_zips:
            try:
                headers += [d.cda for d in read_xdm(z).documents if d.cda is not None]
            except ValueError:  # XdmError, CdaError: unsafe or inconsistent package
                continue
        for a in mail.cda_attachments:
            try:
                headers.append(parse_cda(a.content)[1])
            except ValueError:
                continue
        hints += [_cda_hint(h) for h in headers]
    subject_hint = _subject_hint(subject or "", claimed)
    if subject_hint is not None:
        hints.append(subject_hint)
    return hints


def suggest_patients(
    s: Session,
    hints: Sequence[IdentityHint],
    limit: int = 5,
    visible: ColumnElement[bool] | None = None,
) -> list[dict[str, Any]]:
    """Active local patients sharing an INS, a birth date or a family name with the hints, ranked by
    :func:`rank_candidates`; ``visible`` keeps only the patients the reader may see."""
    matricules = {m for h in hints for m in (h.ins_matricule, h.ins_claimed) if m}
    dates = {h.birth_date for h in hints if h.birth_date}
    names = {" ".join(f.split()).upper() for h in hints for f in h.family_names if f.strip()}
    conditions = []
    if matricules:
        conditions.append(Patient.ins_matricule.in_(matricules))
    if dates:
        conditions.append(Patient.birth_date.in_(dates))
    if names:
        conditions += [func.upper(Patient.birth_name).in_(names), func.upper(Patient.used_name).in_(names)]
    if not conditions:
        return []
    rows = {
        p.id: p
        for p in s.scalars(
            select(Patient)
            .where(Patient.active.is_(True), or_(*conditions), visible if visible is not None else true())
            .order_by(Patient.id)
            .limit(500)
        )
    }
    ranked = rank_candidates(hints, (Candidate.of(p) for p in rows.values()), limit)
    return [
        {
            "patient_id": r.patient_id,
            "name": _patient_name(rows[r.patient_id]),
            "birth_date": rows[r.patient_id].birth_date,
            "status": _status_json(rows[r.patient_id].status),
            "score": r.score,
            "reasons": r.reasons,
        }
        for r in ranked
    ]


def _status_json(code: str) -> dict[str, str]:
    return {"code": code, "label": IdentityStatus(code).label}


# ---- read models ----------------------------------------------------------------------------------------------


def mail_summary(m: Mail, now: datetime) -> dict[str, Any]:
    return {
        "id": m.id,
        "mailbox": m.mailbox,
        "sender": m.sender,
        "subject": m.subject,
        "received_at": aware(m.created_at),
        "received_fr": when_fr(m.created_at),
        "age": age_fr(m.created_at, now),
        "status": {"code": m.status, "label": MAIL_STATUS_LABELS.get(m.status, m.status)},
        "reason": m.reason,
        "patient_id": m.patient_id,
        "warnings": list(m.detail.get("xdm_warnings", [])) if m.detail else [],
    }


def raw_mail(s: Session, m: Mail) -> bytes | None:
    if not m.payload_sha256:
        return None
    payload = s.get(Payload, m.payload_sha256)
    return payload.data if payload is not None else None


def mail_detail(s: Session, m: Mail, visible: ColumnElement[bool] | None = None) -> dict[str, Any]:
    raw = raw_mail(s, m)
    out = mail_summary(m, datetime.now(UTC))
    out.update(headers=[], attachments=[], body=None, unreadable=None)
    if raw is None:
        out["unreadable"] = "Contenu brut du courriel indisponible"
    else:
        try:
            mail = parse_inbound_mail(raw)
        except ValueError as exc:
            out["unreadable"] = getattr(exc, "message_fr", str(exc))
        else:
            pairs = [("De", mail.from_addr), ("À", ", ".join(mail.to)), ("Cc", ", ".join(mail.cc))]
            pairs += [
                ("Objet", mail.subject),
                ("Date", mail.date or ""),
                ("Message-ID", mail.message_id or ""),
            ]
            pairs += sorted(mail.mss_headers.items())
            out["headers"] = [{"name": k, "value": v} for k, v in pairs if v]
            out["attachments"] = [
                {"filename": a.filename, "content_type": a.content_type, "size": len(a.content)}
                for a in mail.attachments
            ]
            body = mail.body_text.strip()
            out["body"] = (
                body[:_MAX_BODY_SHOWN] + ("…" if len(body) > _MAX_BODY_SHOWN else "") if body else None
            )
    out["suggestions"] = suggest_patients(s, mail_hints(raw, m.subject), visible=visible)
    return out


def get_mail(s: Session, mail_id: int) -> Mail:
    m = s.get(Mail, mail_id)
    if m is None or m.direction != "in":
        raise HTTPException(404, "Courriel inconnu")
    return m


# ---- API models -----------------------------------------------------------------------------------------------


class SuggestedPatient(BaseModel):
    patient_id: int
    name: str
    birth_date: date | None
    status: StatusOut
    score: int
    reasons: list[str]


class TriageMail(BaseModel):
    id: int
    mailbox: str
    sender: str | None
    subject: str | None
    received_at: datetime | None
    status: StatusOut
    reason: str | None
    suggestions: list[SuggestedPatient]


class MailboxCount(BaseModel):
    mailbox: str
    count: int


class TriageList(BaseModel):
    total: int
    mailboxes: list[MailboxCount]
    items: list[TriageMail]


class AttachRequest(BaseModel):
    patient_id: int | None = Field(None, description="patient local auquel rattacher le courriel")
    reason: str | None = Field(None, description="motif du rattachement (obligatoire)")


class RejectRequest(BaseModel):
    reason: str | None = Field(None, description="motif du rejet (obligatoire), renvoyé à l'expéditeur")


class TriageOutcome(BaseModel):
    mail_id: int
    status: StatusOut
    patient_id: int | None
