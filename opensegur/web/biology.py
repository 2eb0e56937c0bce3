"""The patient's biology results: their read model and API shape, the French labels of their interpretation
codes, and one trend chart per analyte.

The trend charts are inline SVG computed here: a handful of points needs no charting library nor any script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from opensegur.content.crbio import ABNORMAL_INTERPRETATIONS
from opensegur.store.models import LabResult
from opensegur.web.format_fr import StatusOut, aware, number_fr, when_fr

__all__ = [
    "INTERPRETATION_LABELS",
    "Chart",
    "ChartPoint",
    "LabResultOut",
    "LabResults",
    "lab_results",
    "result_charts",
    "result_json",
    "trend_chart",
]

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


def _num_text(value: float) -> str:
    return number_fr(f"{value:.4g}")


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
        ((aware(t), v, flag) for t, v, flag in values), key=lambda p: (p[0] is None, p[0] or epoch)
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
        ChartPoint(round(x_of(i), 1), round(y_of(v), 1), _num_text(v), when_fr(t), flag)
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
        "observed_at": aware(r.observed_at),
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
            aware(r.observed_at) or datetime.min.replace(tzinfo=UTC),
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
        latest = max(items, key=lambda r: (aware(r.observed_at) or datetime.min.replace(tzinfo=UTC), r.id))
        charts.append(
            trend_chart(
                latest.label,
                unit,
                [(r.observed_at, r.value_num, _abnormal(r)) for r in items if r.value_num is not None],
                (latest.reference_low, latest.reference_high),
            )
        )
    return sorted(charts, key=lambda c: c.title)


# ---- API models -----------------------------------------------------------------------------------------------


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
