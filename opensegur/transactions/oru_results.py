"""HL7 v2.5 ORU^R01 carrying the structured results of a CR de biologie received by MSSanté, for the DPI.

No ANS volet covers this message: the layout is the HL7 v2.5 ORU_R01 structure (chapter 7) with the same
MSH/PID/PV1 as the MDM of the LPS volet (:mod:`opensegur.transactions.lps_mdm`), so the DPI files both under the
same patient::

    MSH|^~\\&|<PFI>|<PFI facility>|<DPI>|<DPI facility>|<now>||ORU^R01^ORU_R01|<id>|P|2.5|||||FRA|UNICODE UTF-8
    PID|||<INS>^^^ASIP-SANTE-INS-NIR&<OID>&ISO^INS~<IPP>^^^<ns>&<oid>&ISO^PI||<NOM>^<prénom>^<prénoms>^^^^L||…
    PV1|1|N
    ORC|RE|<CDA id>|<CDA setId>
    OBR|1|<CDA id>|<CDA setId>|11502-2^CR d'examens biologiques^LN|||<observed>|||||||||||||||<report time>|||F
    OBX|1|NM|3016-3^<label>^LN||1.950|m[IU]/L^^UCUM|0.27-4.2|N|||F|||<observed>
    OBX|2|ST|^<label>||≤ 1.0|mg/L^^UCUM|≤ 5.0|N|||F|||<observed>

Choices:
- OBR-2 (placer) is this version's CDA id, OBR-3 (filler) the CDA setId, constant across versions: a replacing
  report (``relatedDocument`` RPLC) then corrects the same order, with OBR-25 and OBX-11 = ``C``.
- OBX-2 is NM only for a value the NM syntax accepts (``[+-]digits[.digits]``); anything else (intervals such as
  ``≤ 1.0``, text) is ST so the DPI shows it as the biologist wrote it.
- OBX-3 is ``LOINC^label^LN``, the lab's own code with its coding system when it sent no LOINC, and the label alone
  when neither is known.
- OBX-8 maps the CDA ObservationInterpretation code to HL7 v2.5 table 0078: its codes pass through, the v3-only
  ``HU``/``LU`` become ``H``/``L``, other codes that call for attention (``POS``, ``DET``…) become ``A``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from opensegur.content.crbio import ABNORMAL_INTERPRETATIONS, LabObservation
from opensegur.transactions.hl7v2 import charset_to_codec, escape_text, format_dtm
from opensegur.transactions.lps_mdm import (
    LpsPatient,
    MessageRoute,
    document_number,
    encode_message,
    msh_segment,
    pid_segment,
)

__all__ = [
    "LOINC_CR_BIO",
    "OruObservation",
    "OruReport",
    "abnormal_flag",
    "build_oru_results",
    "observation_from_lab",
]

LOINC_CR_BIO = "11502-2"
ValueType = Literal["NM", "ST", "CE"]
# HL7 v2.5 table 0078 (Abnormal flags).
_TABLE_0078 = frozenset(
    {"L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W", "S", "R", "I", "MS", "VS"}
)
_V3_TO_0078 = {"HU": "H", "LU": "L"}
_NM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


@dataclass(frozen=True)
class OruObservation:
    """One OBX. ``coded_value`` (code, text, coding system) makes it a CE; otherwise NM or ST from ``value``."""

    code: str  # LOINC, or the lab's local code ("" when unknown)
    label: str
    value: str | None
    code_system: str = "LN"  # OBX-3.3: LN, or the local coding system (HL7 table 0396, e.g. L or 99xxx)
    coded_value: tuple[str, str, str] | None = None
    unit: str | None = None  # UCUM
    reference_range: str | None = None
    interpretation: str | None = None  # CDA ObservationInterpretation or table 0078 code
    observed_at: datetime | None = None

    @property
    def value_type(self) -> ValueType:
        if self.coded_value is not None:
            return "CE"
        return "NM" if self.value is not None and _NM.match(self.value.strip()) else "ST"


@dataclass(frozen=True)
class OruReport:
    """The report (OBR) and its results (OBX), with the patient as the DPI knows it."""

    patient: LpsPatient
    id_root: str  # the CDA id
    id_extension: str | None
    set_root: str | None  # the CDA setId: the filler order number, constant across versions
    set_extension: str | None
    observations: Sequence[OruObservation]
    report_code: str = LOINC_CR_BIO
    report_label: str = "CR d'examens biologiques"
    report_system: str = "LN"
    observed_at: datetime | None = None  # OBR-7; the earliest result time when absent
    reported_at: datetime | None = None  # OBR-22: the CDA effectiveTime
    corrected: bool = False  # a replacing CDA: OBR-25 and OBX-11 = C


def abnormal_flag(interpretation: str | None) -> str:
    """OBX-8 (table 0078) for a CDA interpretation code; "" when it has no abnormal-flag meaning."""
    code = (interpretation or "").strip().upper()
    if code in _TABLE_0078:
        return code
    if code in _V3_TO_0078:
        return _V3_TO_0078[code]
    return "A" if code in ABNORMAL_INTERPRETATIONS else ""


def _number(value: float) -> str:
    # repr() is the shortest exact form but may use an exponent, which HL7 NM/ST ranges do not allow.
    return format(Decimal(repr(value)), "f")


def observation_from_lab(o: LabObservation) -> OruObservation:
    """The OBX content of one CR-BIO result as :func:`opensegur.content.crbio.extract_results` reads it."""
    value = o.value
    if o.value_num is not None and (value is None or not _NM.match(value.strip())):
        value = _number(o.value_num)
    if o.reference_low is not None and o.reference_high is not None:
        reference: str | None = f"{_number(o.reference_low)}-{_number(o.reference_high)}"
    else:
        reference = o.reference_text
    code, system = o.loinc, "LN"
    if not code and o.local_code is not None:
        code, system = o.local_code[0], _v2_coding_system(o.local_code[1])
    coded = None
    if o.value_code is not None:
        coded = (o.value_code[0], o.value_code[1], _v2_coding_system(o.value_code[2]))
    return OruObservation(
        code=code,
        label=o.label,
        value=value,
        code_system=system,
        coded_value=coded,
        unit=o.unit,
        reference_range=reference,
        interpretation=o.interpretation,
        observed_at=o.observed_at,
    )


# HL7 v2 table 0396 names for the code systems CI-SIS documents use; any other (a lab's own OID) is "L", local.
_V2_CODING_SYSTEMS = {
    "2.16.840.1.113883.6.1": "LN",
    "2.16.840.1.113883.6.96": "SCT",
    "2.16.840.1.113883.6.8": "UCUM",
}


def _v2_coding_system(oid: str) -> str:
    return _V2_CODING_SYSTEMS.get(oid, "L")


def _coded(code: str, text: str, system: str) -> str:
    if not code:
        return f"^{escape_text(text)}"
    return f"{escape_text(code)}^{escape_text(text)}^{escape_text(system)}"


def _obx(n: int, o: OruObservation, status: str) -> str:
    kind = o.value_type
    if kind == "CE":
        assert o.coded_value is not None
        value = _coded(*o.coded_value)
    else:
        value = escape_text((o.value or "").strip())
    fields = [""] * 15
    fields[0] = "OBX"
    fields[1] = str(n)
    fields[2] = kind
    fields[3] = _coded(o.code, o.label, o.code_system)
    fields[5] = value
    fields[6] = f"{escape_text(o.unit)}^^UCUM" if o.unit else ""
    fields[7] = escape_text(o.reference_range or "")
    fields[8] = abnormal_flag(o.interpretation)
    fields[11] = status
    fields[14] = format_dtm(o.observed_at) if o.observed_at else ""
    while fields[-1] == "":
        fields.pop()
    return "|".join(fields)


def build_oru_results(report: OruReport, route: MessageRoute, *, control_id: str, now: datetime) -> bytes:
    """The ORU^R01 (HL7 v2.5) of one report, encoded per ``route.charset`` (MSH-18)."""
    if charset_to_codec(route.charset) is None:
        raise ValueError(f"MSH-18 {route.charset!r} is not a charset of HL7 table 0211")
    if not report.observations:
        raise ValueError("an ORU^R01 needs at least one result")
    status = "C" if report.corrected else "F"
    placer = document_number(report.id_root, report.id_extension)
    filler = document_number(report.set_root, report.set_extension) if report.set_root else placer
    times = [o.observed_at for o in report.observations if o.observed_at is not None]
    observed = report.observed_at or (min(times) if times else None)
    obr = [""] * 26
    obr[0], obr[1], obr[2], obr[3] = "OBR", "1", placer, filler
    obr[4] = _coded(report.report_code, report.report_label, report.report_system)
    obr[7] = format_dtm(observed) if observed else ""
    obr[22] = format_dtm(report.reported_at) if report.reported_at else ""
    obr[25] = status
    lines = [
        msh_segment(route, message_type="ORU^R01^ORU_R01", control_id=control_id, version="2.5", now=now),
        pid_segment(report.patient),
        "PV1|1|N",
        f"ORC|RE|{placer}|{filler}",
        "|".join(obr),
        *(_obx(n, o, status) for n, o in enumerate(report.observations, start=1)),
    ]
    return encode_message(lines, route.charset)
