"""HTTP edge of MSSanté inbound mail and of the patient's clinical record: the triage of mails no rule could
attach to a patient, the patient's documents (produced and received) and biology results, API and French pages.

Business rules live in ``flows.mss_inbound.triage`` (attach / reject); this module reads, ranks the patients a mail
may concern, maps errors to HTTP statuses and writes the audit trail of every read that shows patient data.
The trend charts are inline SVG computed here: a handful of points needs no charting library nor any script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fastapi import HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.orm import Session, selectinload

from opensegur.content.cda import CdaHeader, parse_cda
from opensegur.content.crbio import ABNORMAL_INTERPRETATIONS
from opensegur.documents.lifecycle import STATUS_LABELS
from opensegur.identity.rniv import IdentityStatus
from opensegur.identity.traits import normalise_name
from opensegur.store.models import Document, LabResult, Mail, Patient, Payload
from opensegur.transactions.mss_mail import XDM_SUBJECT_PREFIX, InboundMail, parse_inbound_mail
from opensegur.transactions.xdm import read_xdm

__all__ = [
    "IdentityHint",
    "Candidate",
    "Suggestion",
    "Chart",
    "mail_hints",
    "rank_candidates",
    "suggest_patients",
    "trend_chart",
    "patient_sections",
]

_PARIS = ZoneInfo("Europe/Paris")
_DATE_RE = re.compile(r"(\d{2})/(\d{2})/(\d{4})")
_DECIMAL_POINT_RE = re.compile(r"(?<=\d)\.(?=\d)")
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
DOCUMENT_STATUS_LABELS = {**STATUS_LABELS, "integrated": "Intégré"}
ORIGIN_LABELS = {
    "hl7": "Produit — DPI (HL7)",
    "rest": "Produit — dépôt API",
    "mhd": "Produit — dépôt FHIR MHD",
    "mssante": "Reçu — MSSanté",
}
INTERPRETATION_LABELS = {
    "N": "Normal",
    "H": "Élevé",
    "HH": "Très élevé",
    "HU": "Très élevé",
    "L": "Bas",
    "LL": "Très bas",
    "LU": "Très bas",
    "A": "Anormal",
    "AA": "Très anormal",
    "<": "Sous le seuil de mesure",
    ">": "Au-dessus du seuil de mesure",
    "S": "Sensible",
    "I": "Intermédiaire",
    "R": "Résistant",
    "POS": "Positif",
    "NEG": "Négatif",
    "DET": "Détecté",
    "ND": "Non détecté",
    "IND": "Indéterminé",
    "W": "Aggravation",
    "B": "Amélioration",
}


def _aware(value: datetime | None) -> datetime | None:
    # SQLite gives back naive datetimes; the store writes UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _when_fr(value: datetime | None, with_time: bool = True) -> str:
    moment = _aware(value)
    if moment is None:
        return "—"
    return moment.astimezone(_PARIS).strftime("%d/%m/%Y %H:%M" if with_time else "%d/%m/%Y")


def number_fr(text: str | None) -> str:
    """Decimal comma, as a French reader expects ("0,270 – 4,200")."""
    return _DECIMAL_POINT_RE.sub(",", text) if text else ""


def _num_text(value: float) -> str:
    return number_fr(f"{value:.4g}")


def age_fr(received: datetime | None, now: datetime) -> str:
    moment = _aware(received)
    if moment is None:
        return "—"
    hours = int((now - moment).total_seconds() // 3600)
    if hours < 1:
        return "moins d'une heure"
    if hours < 48:
        return f"{hours} h"
    return f"{hours // 24} j"


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


# ---- trend charts (pure) --------------------------------------------------------------------------------------


@dataclass
class ChartPoint:
    x: float
    y: float
    value: str
    when: str
    abnormal: bool


@dataclass
class Chart:
    """Geometry of one analyte's trend, drawn by ``_results.html`` as inline SVG."""

    title: str
    unit: str
    width: int
    height: int
    points: list[ChartPoint]
    line: str  # the polyline's "x,y x,y …"
    band: tuple[float, float] | None  # (y of the upper bound, height) of the shaded reference range
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    plot: tuple[float, float, float, float]  # left, top, right, bottom of the plotting area


def trend_chart(
    title: str,
    unit: str | None,
    values: Sequence[tuple[datetime | None, float, bool]],
    reference: tuple[float | None, float | None] = (None, None),
    width: int = 360,
    height: int = 150,
) -> Chart:
    """Points at their dates (evenly spaced when some have none), joined, over the shaded reference range."""
    left, top, right, bottom = 48.0, 10.0, width - 12.0, height - 26.0
    low, high = reference
    epoch = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(
        ((_aware(t), v, flag) for t, v, flag in values), key=lambda p: (p[0] is None, p[0] or epoch)
    )
    ys = [v for _, v, _ in ordered] + [b for b in (low, high) if b is not None]
    y_min, y_max = min(ys), max(ys)
    pad = (y_max - y_min) * 0.1 or abs(y_max) * 0.1 or 1.0
    y_min, y_max = y_min - pad, y_max + pad
    stamps = [t.timestamp() for t, _, _ in ordered if t is not None]
    dated = len(stamps) == len(ordered) and max(stamps) > min(stamps)

    def x_of(i: int) -> float:
        if dated:
            share = (stamps[i] - stamps[0]) / (stamps[-1] - stamps[0])
        else:
            share = i / (len(ordered) - 1) if len(ordered) > 1 else 0.5
        return left + share * (right - left)

    def y_of(v: float) -> float:
        return bottom - (v - y_min) / (y_max - y_min) * (bottom - top)

    points = [
        ChartPoint(round(x_of(i), 1), round(y_of(v), 1), _num_text(v), _when_fr(t), flag)
        for i, (t, v, flag) in enumerate(ordered)
    ]
    band = None
    if low is not None or high is not None:
        upper = y_of(high) if high is not None else top
        lower = y_of(low) if low is not None else bottom
        band = (round(upper, 1), round(max(lower - upper, 1.0), 1))
    x_ticks = [(points[0].x, points[0].when[:10])]
    if len(points) > 1 and points[-1].when[:10] != points[0].when[:10]:
        x_ticks.append((points[-1].x, points[-1].when[:10]))
    return Chart(
        title=title,
        unit=unit or "",
        width=width,
        height=height,
        points=points,
        line=" ".join(f"{p.x},{p.y}" for p in points),
        band=band,
        y_ticks=[(round(y_of(v), 1), _num_text(v)) for v in (y_min + pad, y_max - pad)],
        x_ticks=x_ticks,
        plot=(left, top, right, bottom),
    )


# ---- read models ----------------------------------------------------------------------------------------------


def _abnormal(r: LabResult) -> bool:
    if r.interpretation:
        return r.interpretation.upper() in ABNORMAL_INTERPRETATIONS
    if r.value_num is None:
        return False
    return (r.reference_low is not None and r.value_num < r.reference_low) or (
        r.reference_high is not None and r.value_num > r.reference_high
    )


def _reference_text(r: LabResult) -> str | None:
    if r.reference_text:
        return r.reference_text
    if r.reference_low is not None and r.reference_high is not None:
        return f"{r.reference_low:g} – {r.reference_high:g}"
    if r.reference_high is not None:
        return f"≤ {r.reference_high:g}"
    if r.reference_low is not None:
        return f"≥ {r.reference_low:g}"
    return None


def result_json(r: LabResult) -> dict[str, Any]:
    return {
        "id": r.id,
        "loinc": r.loinc or None,
        "label": r.label,
        "value": r.value,
        "value_num": r.value_num,
        "unit": r.unit,
        "reference_low": r.reference_low,
        "reference_high": r.reference_high,
        "reference_text": _reference_text(r),
        "interpretation": (
            {
                "code": r.interpretation,
                "label": INTERPRETATION_LABELS.get(r.interpretation.upper(), r.interpretation),
            }
            if r.interpretation
            else None
        ),
        "abnormal": _abnormal(r),
        "observed_at": _aware(r.observed_at),
        "document_id": r.document_id,
    }


def lab_results(s: Session, patient_id: int, loinc: str | None = None) -> list[LabResult]:
    stmt = select(LabResult).where(LabResult.patient_id == patient_id)
    if loinc:
        stmt = stmt.where(LabResult.loinc == loinc.strip())
    rows = list(s.scalars(stmt))
    # Newest first, undated last; in Python so SQLite and PostgreSQL order NULLs alike.
    rows.sort(
        key=lambda r: (
            r.observed_at is not None,
            _aware(r.observed_at) or datetime.min.replace(tzinfo=UTC),
            r.id,
        )
    )
    rows.reverse()
    return rows


def result_charts(rows: Sequence[LabResult]) -> list[Chart]:
    """One chart per analyte (LOINC, or label without one) and unit with at least two numeric values."""
    series: dict[tuple[str, str], list[LabResult]] = {}
    for r in rows:
        if r.value_num is not None:
            series.setdefault((r.loinc or r.label, r.unit or ""), []).append(r)
    charts = []
    for (_key, unit), items in series.items():
        if len(items) < 2:
            continue
        latest = max(items, key=lambda r: (_aware(r.observed_at) or datetime.min.replace(tzinfo=UTC), r.id))
        charts.append(
            trend_chart(
                latest.label,
                unit,
                [(r.observed_at, r.value_num, _abnormal(r)) for r in items if r.value_num is not None],
                (latest.reference_low, latest.reference_high),
            )
        )
    return sorted(charts, key=lambda c: c.title)


def document_items(s: Session, patient_id: int) -> list[dict[str, Any]]:
    docs = list(
        s.scalars(
            select(Document)
            .where(Document.patient_id == patient_id)
            .options(selectinload(Document.deliveries))
            .order_by(Document.created_at.desc(), Document.id.desc())
        )
    )
    mails: dict[int, Mail] = {}
    if docs:
        for m in s.scalars(
            select(Mail).where(Mail.direction == "in", Mail.document_id.in_([d.id for d in docs]))
        ):
            if m.document_id is not None:
                mails.setdefault(m.document_id, m)
    items = []
    for d in docs:
        received = d.source == "mssante"
        mail = mails.get(d.id)
        mail_id = mail.id if mail else d.context.get("mail_id")
        items.append(
            {
                "id": d.id,
                "direction": "received" if received else "produced",
                "origin": {"code": d.source, "label": ORIGIN_LABELS.get(d.source, d.source)},
                "type": {"code": d.type_code, "title": d.title},
                "date": _aware(d.created_at),
                "status": {"code": d.status, "label": DOCUMENT_STATUS_LABELS.get(d.status, d.status)},
                "sender": (mail.sender if mail else d.context.get("sender")) if received else None,
                "deliveries": [{"destination": x.destination, "status": x.status} for x in d.deliveries],
                "links": {
                    "page": f"/documents/{d.id}",
                    "api": f"/api/v1/documents/{d.id}",
                    "content": f"/api/v1/documents/{d.id}/content" if d.payload_sha256 else None,
                    "mail": f"/mssante/triage/{mail_id}" if received and mail_id else None,
                },
            }
        )
    return items


def patient_sections(s: Session, patient_id: int) -> dict[str, Any]:
    """What ``patient.html`` shows under "Documents" and "Résultats de biologie" (display-ready)."""
    rows = lab_results(s, patient_id)
    results = []
    for r in rows:
        j = result_json(r)
        results.append(
            {
                **j,
                "value_fr": number_fr(r.value) or "—",
                "reference_fr": number_fr(j["reference_text"]) or "—",
                "when": _when_fr(r.observed_at),
            }
        )
    documents = [{**d, "when": _when_fr(d["date"])} for d in document_items(s, patient_id)]
    return {"patient_documents": documents, "lab_results": results, "lab_charts": result_charts(rows)}


def mail_summary(m: Mail, now: datetime) -> dict[str, Any]:
    return {
        "id": m.id,
        "mailbox": m.mailbox,
        "sender": m.sender,
        "subject": m.subject,
        "received_at": _aware(m.created_at),
        "received_fr": _when_fr(m.created_at),
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


def get_patient(s: Session, patient_id: int) -> Patient:
    p = s.get(Patient, patient_id)
    if p is None:
        raise HTTPException(404, "Patient inconnu")
    return p


# ---- API models -----------------------------------------------------------------------------------------------


class StatusOut(BaseModel):
    code: str
    label: str


class CodedTitle(BaseModel):
    code: str | None
    title: str | None


class DeliveryOut(BaseModel):
    destination: str
    status: str


class DocumentLinks(BaseModel):
    page: str
    api: str
    content: str | None
    mail: str | None


class PatientDocument(BaseModel):
    id: int
    direction: Literal["produced", "received"] = Field(description="produit par l'établissement ou reçu")
    origin: StatusOut
    type: CodedTitle
    date: datetime | None
    status: StatusOut
    sender: str | None = Field(description="adresse MSSanté de l'expéditeur (documents reçus)")
    deliveries: list[DeliveryOut]
    links: DocumentLinks


class PatientDocuments(BaseModel):
    patient_id: int
    total: int
    items: list[PatientDocument]


class LabResultOut(BaseModel):
    id: int
    loinc: str | None = Field(
        description="code LOINC ; absent quand le laboratoire n'a donné qu'un code local"
    )
    label: str
    value: str | None
    value_num: float | None
    unit: str | None
    reference_low: float | None
    reference_high: float | None
    reference_text: str | None
    interpretation: StatusOut | None
    abnormal: bool
    observed_at: datetime | None
    document_id: int | None


class LabResults(BaseModel):
    patient_id: int
    total: int
    items: list[LabResultOut]


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
