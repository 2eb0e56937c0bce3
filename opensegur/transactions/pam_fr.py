"""IHE PAM with the French extension PAM FR 2.11: reading the patient identity out of ADT messages.

Identity feed (ITI-30) and patient encounter management (ITI-31) both carry the full identity in PID, so every
known trigger yields a PamEvent; the caller updates the identity for all of them and applies the movement
semantics only for the ones it implements.

Choices (PAM FR 2.11, checked against the ANS example messages):
- Identifiers (PID-3, CX): PID-3.5 "PI" = IPP, "INS" = INS (matricule + OID 1.2.250.1.213.1.4.8 NIR / .9 NIA /
  .10 NIR test / .11 NIA test). ``ins`` is the first "INS"-typed repetition *whatever its OID* (checking the
  OID and key is the domain's job, and dropping it would hide the sender's error); failing that, "NH" with one
  of the INS OIDs (XDS writes it that way).
  "INS-C" (legacy calculated INS) is kept in ``identifiers`` but never taken as the INS. When several IPP are
  sent the first one is the IPP. The INS key is *not* checked here (identity domain's job).
- Names (PID-5, XPN): repetition with type "L" = birth name (nom de naissance) — "M" is accepted as
  fallback for older senders; XPN.1 family name, XPN.2 first birth first name, XPN.3 the space-separated list
  of birth first names (INS trait). Repetition "D" = used name (nom utilisé) and used first name (prénom
  utilisé). No "D" repetition -> used_name/used_first_name are None (the domain may fall back on the birth
  name).
- Birth place: PID-11 repetition with XAD.7 "BDL", XAD.9 = COG code (e.g. ``^^^^^^BDL^^63220``).
- PID-32 (table 0445, repeatable): ``identity_reliability`` lists every code as sent. ``identity_status`` is
  the RNIV status (exactly one of PROV, RECUP, VALI, QUAL — mutually exclusive), None when none is sent (the
  domain should treat that as provisional). Two different RNIV statuses -> AE 102 at PID^1^32. Other codes
  (DOUTE/DOUT douteuse, FICTI/FICT fictive, VIDE, homonym/usurpation flags...) are attributes, exposed as
  is and through ``is_doubtful`` / ``is_fictitious``. The ANS examples send the INS with status VALI: deciding
  whether the INS may be used (RNIV: only QUAL) is left to the domain.
- ZFA (statut DMP, PAM FR 2.11): 1 statut DMP (ACTIF/INEXISTANT/FERME), 2 date de recueil du statut,
  3 date de fermeture, 4 autorisation d'accès de l'établissement (Y/N), 5 date de l'autorisation, 6 opposition
  au bris de glace (Y/N), 7 opposition à l'accès centre de régulation (Y/N), 8 date des oppositions,
  9 opposition à l'alimentation (IO informé opposé / INO informé non opposé / NA non recueilli), 10 date,
  11 consentement à la consultation (IC informé consent / INC informé non consent / NA non recueilli),
  12 date.
  Names 3-8 are from the PAM FR segment definition, not present in the examples.
- ZFD-5 identity collection method (e.g. INSI), ZFD-6 INSi query date, ZFD-7 identity document type.
- Merge A40 (ADT_A39) and change of identifier A47 (ADT_A30): PID = the surviving/correct patient, MRG-1 = the
  identifiers being retired; MRG is required. Only the first PID/MRG pair is read (IHE PAM allows one).
- Link A24 / unlink A37: the second PID is parsed into ``other_patient``.
- Z99 (PAM FR "mise à jour d'un mouvement") and Z80-Z89 (French movement events) are known triggers.
- ``facility_finess``: HD.2 of the IPP assigning authority when HD.3 is "M" or "N" (FINESS) and it looks
  like a FINESS (9 chars), else the same from MSH-4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from opensegur.transactions.hl7v2 import Hl7Error, MessageHeader
from opensegur.transactions.hl7v2_message import Hl7Message, Hl7Segment, get_field, repetition_count, segments

__all__ = [
    "IDENTITY_TRIGGERS",
    "INS_OIDS",
    "KNOWN_TRIGGERS",
    "MOVEMENT_TRIGGERS",
    "RNIV_STATUSES",
    "PamAddress",
    "PamEvent",
    "PamPatient",
    "PatientIdentifier",
    "parse_pam",
    "parse_patient",
]

INS_OIDS = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)
RNIV_STATUSES = frozenset({"PROV", "RECUP", "VALI", "QUAL"})
SEX_CODES = frozenset({"F", "M", "U", "A", "N", "O"})  # HL7 table 0001
DOUBTFUL_CODES = frozenset({"DOUTE", "DOUT"})
FICTITIOUS_CODES = frozenset({"FICTI", "FICT"})

IDENTITY_TRIGGERS = frozenset({"A28", "A31", "A40", "A47", "A24", "A37", "A08"})
MOVEMENT_TRIGGERS = frozenset(
    {
        "A01", "A02", "A03", "A04", "A05", "A06", "A07", "A09", "A10", "A11", "A12", "A13", "A14", "A15",
        "A16", "A21", "A22", "A25", "A26", "A27", "A32", "A33", "A38", "A44", "A52", "A53", "A54", "A55",
        "Z80", "Z81", "Z82", "Z83", "Z84", "Z85", "Z86", "Z87", "Z88", "Z89", "Z99",
    }
)  # fmt: skip
KNOWN_TRIGGERS = IDENTITY_TRIGGERS | MOVEMENT_TRIGGERS
MRG_TRIGGERS = frozenset({"A40", "A47"})
TWO_PATIENT_TRIGGERS = frozenset({"A24", "A37"})

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2}(\.\d{1,4})?)?([+-]\d{4})?$")
_FINESS = re.compile(r"^\d[0-9AB]\d{7}$")

ZFA_KEYS = (
    "dmp_status",
    "dmp_status_date",
    "dmp_closing_date",
    "access_authorisation",
    "access_authorisation_date",
    "break_glass_opposition",
    "regulation_centre_opposition",
    "oppositions_date",
    "feeding_opposition",
    "feeding_opposition_date",
    "consultation_consent",
    "consultation_consent_date",
)


@dataclass
class PatientIdentifier:
    value: str  # CX.1
    assigning_authority_name: str = ""  # CX.4.1
    authority_oid: str = ""  # CX.4.2 (OID, or FINESS when authority_type is M/N)
    authority_type: str = ""  # CX.4.3 (ISO, M, N...)
    type_code: str = ""  # CX.5 (PI, INS, INS-C, NH, AN, VN...)
    effective_date: str = ""  # CX.7
    expiration_date: str = ""  # CX.8


@dataclass
class PamAddress:
    street: str = ""  # XAD.1
    other: str = ""  # XAD.2
    city: str = ""  # XAD.3
    state: str = ""  # XAD.4
    postal_code: str = ""  # XAD.5
    country: str = ""  # XAD.6
    address_type: str = ""  # XAD.7 (H, BDL...)
    county_code: str = ""  # XAD.9 (COG for BDL)


@dataclass
class PamPatient:
    identifiers: list[PatientIdentifier]
    ipp: PatientIdentifier | None
    ins: PatientIdentifier | None
    birth_name: str | None
    first_names: str | None  # space-separated birth first names (INS trait)
    first_name: str | None  # first birth first name
    used_name: str | None
    used_first_name: str | None
    birth_date: str | None  # PID-7 as sent (YYYY[MM[DD[HHMM[SS]]]][+ZZZZ])
    sex: str | None
    birth_place_cog: str | None
    identity_status: str | None  # RNIV status among PROV/RECUP/VALI/QUAL
    identity_reliability: list[str] = field(default_factory=list)  # all PID-32 codes
    death_date: str | None = None  # PID-29
    death_indicator: str | None = None  # PID-30
    address: PamAddress | None = None
    phone: str | None = None
    email: str | None = None
    identity_collection_method: str | None = None  # ZFD-5
    insi_query_date: str | None = None  # ZFD-6
    identity_document_type: str | None = None  # ZFD-7

    @property
    def first_names_list(self) -> list[str]:
        return self.first_names.split() if self.first_names else []

    @property
    def is_doubtful(self) -> bool:
        return any(code in DOUBTFUL_CODES for code in self.identity_reliability)

    @property
    def is_fictitious(self) -> bool:
        return any(code in FICTITIOUS_CODES for code in self.identity_reliability)


@dataclass
class PamEvent:
    header: MessageHeader
    trigger: str
    patient: PamPatient
    merged_patient_ids: list[PatientIdentifier] = field(default_factory=list)  # MRG-1 (A40, A47)
    other_patient: PamPatient | None = None  # second PID of A24/A37
    visit_number: str | None = None  # PV1-19.1
    patient_class: str | None = None  # PV1-2
    unit: str | None = None  # ZBE-7.10 (UF code), else PV1-3.1
    unit_name: str | None = None  # ZBE-7.1
    movement_id: str | None = None  # ZBE-1.1
    movement_action: str | None = None  # ZBE-4 (INSERT / UPDATE / CANCEL)
    movement_historic: bool = False  # ZBE-5 = Y: the message corrects a past movement, not the current one
    event_datetime: str | None = None  # EVN-6, else EVN-2
    dmp_consent: dict[str, str] = field(default_factory=dict)  # ZFA, keys in ZFA_KEYS; {} without ZFA
    facility_finess: str | None = None
    attending_rpps: str | None = None  # PV1-7, the doctor responsible for the stay, when named by RPPS

    @property
    def is_identity_event(self) -> bool:
        return self.trigger in IDENTITY_TRIGGERS


def _opt(value: str) -> str | None:
    return value or None


def _check_ts(value: str) -> bool:
    match = _TS.match(value)
    if not match:
        return False
    year, month, day = match.group(1), match.group(2), match.group(3)
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return False
    hour, minute = match.group(4), match.group(5)
    return (hour is None or int(hour) < 24) and (minute is None or int(minute) < 60)


def _rpps(identifier: str, type_code: str) -> str | None:
    """The RPPS of an XCN: its idNat_PS (« 8 » + RPPS, type IDNPS) or the RPPS itself (type RPPS); None for an
    ADELI number or a local code, which no account can be matched on."""
    if type_code == "IDNPS" and re.fullmatch(r"8\d{11}", identifier):
        return identifier[1:]
    if type_code == "RPPS" and re.fullmatch(r"\d{11}", identifier):
        return identifier
    return None


def _identifiers(seg: Hl7Segment, field_no: int) -> list[PatientIdentifier]:
    result = []
    for rep in range(1, repetition_count(seg, field_no) + 1):
        value = get_field(seg, field_no, rep, 1)
        if not value:
            continue
        result.append(
            PatientIdentifier(
                value=value,
                assigning_authority_name=get_field(seg, field_no, rep, 4, 1),
                authority_oid=get_field(seg, field_no, rep, 4, 2),
                authority_type=get_field(seg, field_no, rep, 4, 3),
                type_code=get_field(seg, field_no, rep, 5),
                effective_date=get_field(seg, field_no, rep, 7),
                expiration_date=get_field(seg, field_no, rep, 8),
            )
        )
    return result


def _find_ins(identifiers: list[PatientIdentifier]) -> PatientIdentifier | None:
    # An INS-typed identifier is returned even with a foreign OID so the identity domain rejects it
    # (AE 103) instead of the message being accepted as if no INS had been sent.
    typed = next((i for i in identifiers if i.type_code == "INS"), None)
    if typed is not None:
        return typed
    return next((i for i in identifiers if i.type_code == "NH" and i.authority_oid in INS_OIDS), None)


def parse_patient(
    pid: Hl7Segment, seq: int, zfd: Hl7Segment | None, *, require_ipp: bool = True
) -> PamPatient:
    """PamPatient from one PID (``seq`` = its occurrence, for error locations) and an optional ZFD.

    ``require_ipp=False`` is for the CDA-in-HL7v2 volet, whose ANS examples identify the patient by the INS
    alone (no "PI" repetition); PAM itself always requires the IPP.
    """
    loc = f"PID^{seq}"
    identifiers = _identifiers(pid, 3)
    if not identifiers:
        raise Hl7Error("101", "Identifiant patient (PID-3) absent", location=f"{loc}^3")
    ipp = next((i for i in identifiers if i.type_code == "PI"), None)
    if ipp is None and require_ipp:
        raise Hl7Error("101", "IPP (PID-3 de type PI) absent", location=f"{loc}^3")

    names: dict[str, int] = {}
    for rep in range(1, repetition_count(pid, 5) + 1):
        names.setdefault(get_field(pid, 5, rep, 7), rep)
    birth_rep = names.get("L") or names.get("M")
    used_rep = names.get("D")
    birth_name = first_name = first_names = None
    if birth_rep:
        birth_name = _opt(get_field(pid, 5, birth_rep, 1))
        first_name = _opt(get_field(pid, 5, birth_rep, 2))
        first_names = _opt(get_field(pid, 5, birth_rep, 3)) or first_name
    used_name = _opt(get_field(pid, 5, used_rep, 1)) if used_rep else None
    used_first_name = _opt(get_field(pid, 5, used_rep, 2)) if used_rep else None

    birth_date = get_field(pid, 7, 1, 1)
    if birth_date and not _check_ts(birth_date):
        raise Hl7Error("102", f"Date de naissance invalide : {birth_date[:20]}", location=f"{loc}^7")
    sex = get_field(pid, 8)
    if sex and sex not in SEX_CODES:
        raise Hl7Error("103", f"Sexe inconnu (table 0001) : {sex[:10]}", location=f"{loc}^8")
    death_date = get_field(pid, 29, 1, 1)
    if death_date and not _check_ts(death_date):
        raise Hl7Error("102", f"Date de décès invalide : {death_date[:20]}", location=f"{loc}^29")

    birth_place = None
    address = None
    for rep in range(1, repetition_count(pid, 11) + 1):
        parts = PamAddress(*(get_field(pid, 11, rep, comp) for comp in (1, 2, 3, 4, 5, 6, 7, 9)))
        if parts.address_type == "BDL":
            birth_place = birth_place or _opt(parts.county_code)
        elif address is None and any((parts.street, parts.city, parts.postal_code)):
            address = parts

    phone = email = None
    for rep in range(1, repetition_count(pid, 13) + 1):
        if get_field(pid, 13, rep, 3) == "Internet" or get_field(pid, 13, rep, 2) == "NET":
            email = email or _opt(get_field(pid, 13, rep, 4))
        else:
            phone = phone or _opt(get_field(pid, 13, rep, 12) or get_field(pid, 13, rep, 1))

    reliability = [
        code for rep in range(1, repetition_count(pid, 32) + 1) if (code := get_field(pid, 32, rep, 1))
    ]
    statuses = {code for code in reliability if code in RNIV_STATUSES}
    if len(statuses) > 1:
        raise Hl7Error(
            "102", "Statuts d'identité contradictoires : " + ", ".join(sorted(statuses)), location=f"{loc}^32"
        )

    return PamPatient(
        identifiers=identifiers,
        ipp=ipp,
        ins=_find_ins(identifiers),
        birth_name=birth_name,
        first_names=first_names,
        first_name=first_name,
        used_name=used_name,
        used_first_name=used_first_name,
        birth_date=_opt(birth_date),
        sex=_opt(sex),
        birth_place_cog=birth_place,
        identity_status=next(iter(statuses), None),
        identity_reliability=reliability,
        death_date=_opt(death_date),
        death_indicator=_opt(get_field(pid, 30)),
        address=address,
        phone=phone,
        email=email,
        identity_collection_method=_opt(get_field(zfd, 5)) if zfd is not None else None,
        insi_query_date=_opt(get_field(zfd, 6)) if zfd is not None else None,
        identity_document_type=_opt(get_field(zfd, 7)) if zfd is not None else None,
    )


def _finess(ident: PatientIdentifier | None, header: MessageHeader, msh: Hl7Segment) -> str | None:
    if ident and ident.authority_type in ("M", "N") and _FINESS.match(ident.authority_oid):
        return ident.authority_oid
    oid, kind = get_field(msh, 4, 1, 2), get_field(msh, 4, 1, 3)
    if kind in ("M", "N") and _FINESS.match(oid):
        return oid
    return None


def parse_pam(message: Hl7Message, header: MessageHeader) -> PamEvent:
    """PamEvent for an ADT message already checked by hl7v2.parse(); Hl7Error for anything unusable."""
    if header.message_type != "ADT":
        raise Hl7Error(
            "200",
            f"Type de message non supporté : {header.message_type[:10]}",
            location="MSH^1^9",
            reject=True,
        )
    trigger = header.trigger
    if trigger not in KNOWN_TRIGGERS:
        raise Hl7Error("201", f"Événement non supporté : {trigger[:10]}", location="MSH^1^9", reject=True)

    pids = segments(message, "PID")
    if not pids:
        raise Hl7Error("100", "Segment PID absent", location="PID")
    zfds = segments(message, "ZFD")
    patient = parse_patient(pids[0], 1, zfds[0] if zfds else None)

    merged: list[PatientIdentifier] = []
    if trigger in MRG_TRIGGERS:
        mrgs = segments(message, "MRG")
        if not mrgs:
            raise Hl7Error("100", f"Segment MRG absent ({trigger})", location="MRG")
        merged = _identifiers(mrgs[0], 1)
        if not merged:
            raise Hl7Error("101", "Identifiant patient à fusionner (MRG-1) absent", location="MRG^1^1")

    other = None
    if trigger in TWO_PATIENT_TRIGGERS:
        if len(pids) < 2:
            raise Hl7Error("100", f"Second segment PID absent ({trigger})", location="PID^2")
        other = parse_patient(pids[1], 2, None)

    event = PamEvent(
        header=header, trigger=trigger, patient=patient, merged_patient_ids=merged, other_patient=other
    )

    evns = segments(message, "EVN")
    if evns:
        event.event_datetime = _opt(get_field(evns[0], 6, 1, 1) or get_field(evns[0], 2, 1, 1))
    pv1s = segments(message, "PV1")
    if pv1s:
        event.visit_number = _opt(get_field(pv1s[0], 19, 1, 1))
        event.patient_class = _opt(get_field(pv1s[0], 2))
        event.unit = _opt(get_field(pv1s[0], 3, 1, 1))
        event.attending_rpps = _rpps(get_field(pv1s[0], 7, 1, 1), get_field(pv1s[0], 7, 1, 13))
    zbes = segments(message, "ZBE")
    if zbes:
        zbe = zbes[0]
        event.movement_id = _opt(get_field(zbe, 1, 1, 1))
        event.movement_action = _opt(get_field(zbe, 4))
        event.movement_historic = get_field(zbe, 5).strip().upper() == "Y"
        event.unit = _opt(get_field(zbe, 7, 1, 10)) or event.unit
        event.unit_name = _opt(get_field(zbe, 7, 1, 1))
    zfas = segments(message, "ZFA")
    if zfas:
        event.dmp_consent = {key: get_field(zfas[0], n, 1, 1) for n, key in enumerate(ZFA_KEYS, start=1)}
    event.facility_finess = _finess(patient.ipp, header, message[0])
    return event
