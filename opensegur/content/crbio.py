"""Structured results of a CDA CR-BIO level 3 (volet CR-BIO of the CI-SIS) as plain rows.

Where they are: each lab chapter/sub-chapter section carries a *Laboratory Report Data Processing Entry*
(IHE PaLM ``1.3.6.1.4.1.19376.1.3.1``, CI-SIS FR-Resultats-examens-de-biologie-medicale) whose ``act`` holds the
results either directly or through battery/isolate organizers; every result is a *Laboratory Observation*
(``1.3.6.1.4.1.19376.1.3.1.6``, CI-SIS FR-Resultat-examens-de-biologie-element-clinique-pertinent). Other CDA
(AVC, obstetrics summaries) embed the same entry, so the extraction follows the templates, not the document type.

Reading is lenient like :mod:`opensegur.content.cda`: a result whose value cannot be read keeps ``value=None``
rather than failing the document; judging conformance is the validator's job. Labels prefer the code's display
name (the JDV's French LOINC label, the same whatever the lab, so trends line up) over the narrative; a coded
value that disagrees with the narrative the biologist validated shows both, since neither can be chosen safely.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from lxml import etree

from opensegur.content.cda import CDA_NS, DEFAULT_MAX_BYTES, NS, CdaError, parse_untrusted

__all__ = [
    "LAB_ENTRY_TEMPLATE",
    "LAB_OBSERVATION_TEMPLATE",
    "LOINC_OID",
    "ABNORMAL_INTERPRETATIONS",
    "LabObservation",
    "extract_results",
    "parse_ts",
]

LAB_ENTRY_TEMPLATE = "1.3.6.1.4.1.19376.1.3.1"
LAB_OBSERVATION_TEMPLATE = "1.3.6.1.4.1.19376.1.3.1.6"
LOINC_OID = "2.16.840.1.113883.6.1"
# HL7 ObservationInterpretation codes that call for the clinician's attention (the table highlights them).
ABNORMAL_INTERPRETATIONS = frozenset(
    {"A", "AA", "H", "HH", "HU", "L", "LL", "LU", "<", ">", "R", "POS", "DET", "IND", "NR", "W", "CAR"}
)
_C = f"{{{CDA_NS}}}"
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_PARIS = ZoneInfo("Europe/Paris")
_TS_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")
_WITHDRAWN = ("nullified", "cancelled")
# Sizes of the lab_result columns the rows end up in (store.models.LabResult).
_MAX_LABEL, _MAX_VALUE, _MAX_UNIT, _MAX_REFERENCE = 300, 100, 40, 200


@dataclass
class LabObservation:
    """One result: ``loinc`` is empty when the lab only sent a local code (CI-SIS allows it in a translation)."""

    loinc: str
    label: str
    value: str | None
    value_num: float | None
    unit: str | None
    reference_low: float | None
    reference_high: float | None
    reference_text: str | None
    interpretation: str | None
    observed_at: datetime | None
    # The lab's own code when there is no LOINC (code, code system OID), and a coded result (code, label, system
    # OID): what an ORU^R01 to the DPI carries in OBX-3 and as a CE value.
    local_code: tuple[str, str] | None = None
    value_code: tuple[str, str, str] | None = None


def parse_ts(value: str | None) -> datetime | None:
    """An HL7 v3 TS (``YYYYMMDD[HHMM[SS]][±ZZZZ]``) as an aware datetime; local French time when no offset."""
    if not value:
        return None
    m = _TS_RE.match(value.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second, offset = m.groups()
    try:
        tz: timezone | ZoneInfo = _PARIS
        if offset:
            sign = -1 if offset[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=tz,
        )
    except ValueError:
        return None


def _clip(text: str | None, size: int) -> str | None:
    if text is None or len(text) <= size:
        return text
    return text[: size - 1] + "…"


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    value = " ".join("".join(el.itertext()).split())
    return value or None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _has_template(el: etree._Element, root: str) -> bool:
    return any(t.get("root") == root for t in el.findall("cda:templateId", NS))


def _xsi_type(el: etree._Element) -> str:
    # The type is a QName ("PQ", or "c:PQ" when the document binds HL7 v3 to a prefix): the local part decides.
    return (el.get(_XSI_TYPE) or "").rsplit(":", 1)[-1].upper()


class _Narrative:
    """The section texts by ``ID``, to resolve ``originalText/reference@value="#id"``."""

    def __init__(self, doc: etree._Element) -> None:
        self._by_id: dict[str, str] = {}
        for el in doc.xpath(".//*[@ID]"):
            text = _text(el)
            if text:
                self._by_id.setdefault(el.get("ID"), text)

    def original_text(self, el: etree._Element | None) -> str | None:
        """Text of ``el/originalText`` (or of ``el`` itself when it is one), following its reference."""
        if el is None:
            return None
        ot = el if el.tag == f"{_C}originalText" else el.find("cda:originalText", NS)
        holder = ot if ot is not None else el
        ref = holder.find("cda:reference", NS)
        if ref is not None and (ref.get("value") or "").startswith("#"):
            found = self._by_id.get(ref.get("value", "")[1:])
            if found:
                return found
        return _text(ot) if ot is not None else None


def _tidy(raw: str | None) -> str | None:
    # Some LIS print every bound as "63.000000": beyond three decimals the zeros carry no precision.
    if raw is None or "." not in raw or len(raw.rsplit(".", 1)[1]) <= 3:
        return raw
    return raw.rstrip("0").rstrip(".") or "0"


def _bound(el: etree._Element | None) -> tuple[str | None, str | None, bool]:
    """value, unit and inclusiveness of an IVL_PQ bound (HL7 default: inclusive)."""
    if el is None or el.get("nullFlavor"):
        return None, None, True
    return _tidy(el.get("value")), el.get("unit"), (el.get("inclusive") or "true").lower() != "false"


def _interval_text(low: str | None, high: str | None, low_in: bool, high_in: bool) -> str | None:
    if low is not None and high is not None:
        return f"{low} – {high}"
    if high is not None:
        return f"{'≤' if high_in else '<'} {high}"
    if low is not None:
        return f"{'≥' if low_in else '>'} {low}"
    return None


def _value(el: etree._Element | None, narrative: _Narrative) -> tuple[str | None, float | None, str | None]:
    """(text, number, unit) of an observation's ``value``, whatever its data type."""
    if el is None or el.get("nullFlavor"):
        return None, None, None
    kind = _xsi_type(el)
    if kind in ("PQ", "INT", "REAL", "MO"):
        raw = el.get("value")
        unit = el.get("unit") if kind == "PQ" else el.get("currency") if kind == "MO" else None
        return raw, _number(raw), unit if unit and unit != "1" else None
    if kind in ("IVL_PQ", "IVL_INT", "IVL_REAL"):
        low, low_unit, low_in = _bound(el.find("cda:low", NS))
        high, high_unit, high_in = _bound(el.find("cda:high", NS))
        return _interval_text(low, high, low_in, high_in), None, low_unit or high_unit
    if kind.startswith("RTO"):
        num, den = el.find("cda:numerator", NS), el.find("cda:denominator", NS)
        if num is None or den is None:
            return None, None, None
        return f"{num.get('value')}/{den.get('value')}", None, None
    if kind in ("CD", "CE", "CV", "CO", "CS"):
        coded, written = el.get("displayName") or el.get("code"), narrative.original_text(el)
        if coded and written and coded.casefold() != written.casefold():
            return f"{coded} (compte rendu : « {written} »)", None, None
        return coded or written, None, None
    if kind == "BL":
        flag = (el.get("value") or "").lower()
        return {"true": "Oui", "false": "Non"}.get(flag), None, None
    # ST, ED and untyped values: the text itself, or the narrative it points to.
    return narrative.original_text(el) or _text(el), None, None


def _code(obs: etree._Element, narrative: _Narrative) -> tuple[str, str, tuple[str, str] | None]:
    """(LOINC or "", label, the lab's local code when there is no LOINC)."""
    code = obs.find("cda:code", NS)
    if code is None:
        return "", "Analyse sans code", None
    loinc = code.get("code") if code.get("codeSystem") == LOINC_OID else None
    translations = code.findall("cda:translation", NS)
    if not loinc:
        loinc = next((t.get("code") for t in translations if t.get("codeSystem") == LOINC_OID), None)
    label = (
        code.get("displayName")
        or next((t.get("displayName") for t in translations if t.get("displayName")), None)
        or narrative.original_text(code)
        or code.get("code")
        or next((t.get("code") for t in translations if t.get("code")), None)
        or "Analyse sans code"
    )
    local = None
    if not loinc:
        local = next(
            (
                ((c.get("code") or "").strip(), c.get("codeSystem") or "")
                for c in (code, *translations)
                if c.get("code") and c.get("codeSystem") != LOINC_OID
            ),
            None,
        )
    return (loinc or "").strip(), label, local


def _value_code(el: etree._Element | None) -> tuple[str, str, str] | None:
    if el is None or el.get("nullFlavor") or _xsi_type(el) not in ("CD", "CE", "CV", "CO", "CS"):
        return None
    code = (el.get("code") or "").strip()
    if not code:
        return None
    return code, el.get("displayName") or code, el.get("codeSystem") or ""


def _reference(obs: etree._Element, narrative: _Narrative) -> tuple[float | None, float | None, str | None]:
    """The normal range: the first observationRange without an interpretation, or interpreted ``N``."""
    for rng in obs.findall("cda:referenceRange/cda:observationRange", NS):
        interp = rng.find("cda:interpretationCode", NS)
        if interp is not None and interp.get("code") not in (None, "N"):
            continue
        value = rng.find("cda:value", NS)
        low = high = None
        built = None
        if value is not None and not value.get("nullFlavor"):
            lo, _, lo_in = _bound(value.find("cda:low", NS))
            hi, _, hi_in = _bound(value.find("cda:high", NS))
            low, high = _number(lo), _number(hi)
            built = _interval_text(lo, hi, lo_in, hi_in) or _text(value)
        text = narrative.original_text(rng.find("cda:text", NS)) or _text(rng.find("cda:text", NS))
        return low, high, text or built
    return None, None, None


def _observed_at(obs: etree._Element) -> datetime | None:
    # The observation's own time first, then the organizer/act that groups it (CI-SIS lets either carry it).
    for el in (obs, *obs.iterancestors(f"{_C}organizer", f"{_C}act")):
        et = el.find("cda:effectiveTime", NS)
        if et is None:
            continue
        for candidate in (et, et.find("cda:low", NS), et.find("cda:high", NS)):
            when = parse_ts(candidate.get("value")) if candidate is not None else None
            if when is not None:
                return when
    return None


def _clinical_document(root: etree._Element) -> etree._Element:
    if root.tag == f"{_C}ClinicalDocument":
        return root
    # CI-SIS "auto-présentable" documents wrap the ClinicalDocument in the XSL stylesheet that displays it.
    inner = root.find(f".//{_C}ClinicalDocument")
    if inner is None:
        raise CdaError(
            "CDA_ROOT",
            f"L'élément racine doit être ClinicalDocument dans l'espace de noms {CDA_NS}",
            "/",
        )
    return inner


def extract_results(cda: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> list[LabObservation]:
    """Every lab result of a CDA, in document order. No lab entry (any non-biology CDA) gives ``[]``.

    Raises :class:`~opensegur.content.cda.CdaError` for bytes that are not a safe, well-formed CDA.
    """
    doc = _clinical_document(parse_untrusted(cda, max_bytes))
    narrative = _Narrative(doc)
    results: list[LabObservation] = []
    for entry in doc.iter(f"{_C}entry"):
        if not _has_template(entry, LAB_ENTRY_TEMPLATE):
            continue
        for obs in entry.iter(f"{_C}observation"):
            if not _has_template(obs, LAB_OBSERVATION_TEMPLATE) or obs.get("moodCode", "EVN") != "EVN":
                continue
            status = obs.find("cda:statusCode", NS)
            if status is not None and status.get("code") in _WITHDRAWN:
                continue
            loinc, label, local = _code(obs, narrative)
            value_el = obs.find("cda:value", NS)
            text, number, unit = _value(value_el, narrative)
            low, high, ref_text = _reference(obs, narrative)
            interp = obs.find("cda:interpretationCode", NS)
            flag = (interp.get("code") or "").strip() if interp is not None else ""
            results.append(
                LabObservation(
                    loinc=loinc[:16],
                    label=_clip(label, _MAX_LABEL) or label,
                    value=_clip(text, _MAX_VALUE),
                    value_num=number,
                    unit=_clip(unit, _MAX_UNIT),
                    reference_low=low,
                    reference_high=high,
                    reference_text=_clip(ref_text, _MAX_REFERENCE),
                    interpretation=flag[:8] or None,
                    observed_at=_observed_at(obs),
                    local_code=(local[0][:40], local[1][:64]) if local else None,
                    value_code=_value_code(value_el),
                )
            )
    return results
