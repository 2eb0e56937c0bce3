from datetime import datetime
from pathlib import Path

import hl7
import pytest

from opensegur.transactions.hl7v2 import Hl7Error, ack_code_for, build_ack, build_nak_for_unparseable, parse
from opensegur.transactions.pam_fr import PamEvent, parse_pam

SGL = Path("/work/shared/hl7v2-examples/SGL")
CONSENT = Path("/work/shared/hl7v2-examples/Vague 2/Consentement_DMP_PAMFR")
EXAMPLES = sorted(SGL.glob("*.er7")) + sorted(CONSENT.glob("*.er7"))

MSH = (
    "MSH|^~\\&|GAM|CHU-X|DPI|CHU-X|20240306111154||ADT^{trigger}^{structure}|{control}|P|2.5^FRA^2.11"
    "|||||FRA|{charset}|FR||2.11^IHE_FRANCE-2.11-PAM"
)
PID = (
    "PID|1||000003^^^CHU-X&000897406&N^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
    "||PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L||19790328|F|||^^^^^^BDL^^63220|||||||||||||||||||||VALI"
)


def pid(**fields: str) -> str:
    """PID segment from f<n>=value keywords, so that field positions are explicit."""
    values = {int(k[1:]): v for k, v in fields.items()}
    return "|".join(["PID", *(values.get(n, "") for n in range(1, max(values) + 1))])


def build(
    *segments: str,
    trigger: str = "A28",
    structure: str = "ADT_A05",
    charset: str = "UNICODE UTF-8",
    control: str = "C1",
    encoding: str = "utf-8",
) -> bytes:
    head = MSH.format(trigger=trigger, structure=structure, control=control, charset=charset)
    return "\r".join([head, "EVN||20240306111154", *segments]).encode(encoding)


def pam(raw: bytes) -> PamEvent:
    return parse_pam(*parse(raw))


def pam_error(raw: bytes) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        pam(raw)
    return info.value


# ------------------------------------------------------------------------------------------- ANS examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_identity(path: Path) -> None:
    event = pam(path.read_bytes())
    patient = event.patient
    assert patient.ins is not None
    assert patient.ins.value == "279035121518989"
    assert patient.ins.authority_oid == "1.2.250.1.213.1.4.10"
    assert patient.ins.type_code == "INS"
    assert patient.ipp is not None
    assert (patient.ipp.value, patient.ipp.type_code, patient.ipp.assigning_authority_name) == (
        "000003",
        "PI",
        "CHU-X",
    )
    assert [i.type_code for i in patient.identifiers] == ["PI", "INS"]
    assert patient.birth_name == "PAT-TROIS"
    assert patient.first_name == "DOMINIQUE"
    assert patient.first_names == "DOMINIQUE"
    assert patient.first_names_list == ["DOMINIQUE"]
    assert patient.used_name is None and patient.used_first_name is None
    assert patient.birth_date == "19790328"
    assert patient.sex == "F"
    assert patient.birth_place_cog == "63220"
    assert patient.identity_status == "VALI"
    assert patient.identity_reliability == ["VALI"]
    assert not patient.is_doubtful and not patient.is_fictitious
    assert patient.address is not None
    assert (patient.address.street, patient.address.city, patient.address.postal_code) == (
        "28 Av de Breteuil",
        "PARIS",
        "75007",
    )
    assert patient.death_indicator == "N"
    assert event.facility_finess == "000897406"
    assert event.header.profile == "2.11^IHE_FRANCE-2.11-PAM"
    assert event.visit_number is not None and event.visit_number.endswith("97406")
    assert not event.is_identity_event


def test_admission_movement_and_consent() -> None:
    event = pam((SGL / "admission.er7").read_bytes())
    assert event.trigger == "A01"
    assert event.patient_class == "I"
    assert (event.unit, event.unit_name) == ("6268", "Chir V")
    assert (event.movement_id, event.movement_action) == ("001", "INSERT")
    assert event.event_datetime == "20240306111154"
    assert event.dmp_consent["dmp_status"] == "ACTIF"
    assert event.dmp_consent["dmp_status_date"] == "20240306111154"
    assert event.dmp_consent["feeding_opposition"] == "INO"
    assert event.dmp_consent["consultation_consent"] == "IC"


@pytest.mark.parametrize("path", sorted(CONSENT.glob("*.er7")), ids=lambda p: p.name)
def test_the_responsible_doctor_is_read_from_pv1_7_by_rpps(path: Path) -> None:
    # The ANS examples name Dr Réault by idNat_PS (8 + RPPS, type IDNPS).
    assert pam(path.read_bytes()).attending_rpps == "01234567897"


@pytest.mark.parametrize(
    ("xcn", "rpps"),
    [
        ("10000023084^AGNES^Isabelle^^^^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^L^^^RPPS", "10000023084"),
        ("0123456789^MARTIN^Anne^^^^^^ADELI&1.2.250.1.71.4.2.1&ISO^D^^^ADELI", None),  # no account matches
        ("8012345678^COURT^Jean^^^^^^X^D^^^IDNPS", None),  # an idNat_PS too short is not an RPPS
        ("DRLOCAL^LOCAL^Doc", None),
    ],
)
def test_only_an_rpps_names_the_responsible_doctor(xcn: str, rpps: str | None) -> None:
    raw = (CONSENT / "ConsentementConsultation_NonOppositionAlimentation.er7").read_bytes()
    pv1 = next(line for line in raw.splitlines() if line.startswith(b"PV1|"))
    fields = pv1.split(b"|")
    fields[7] = xcn.encode()
    assert pam(raw.replace(pv1, b"|".join(fields))).attending_rpps == rpps


def test_discharge_has_no_consent() -> None:
    event = pam((SGL / "sortie.er7").read_bytes())
    assert event.trigger == "A03"
    assert event.dmp_consent == {}


@pytest.mark.parametrize(
    ("name", "feeding", "feeding_date", "consult", "consult_date"),
    [
        (
            "ConsentementConsultation_NonOppositionAlimentation",
            "INO",
            "20240306111154",
            "IC",
            "20240306111154",
        ),
        (
            "NonConsentementConsultation_NonOppositionAlimentation",
            "INO",
            "20240307111154",
            "INC",
            "20240307111154",
        ),
        (
            "NonConsentementConsultation_OppositionAlimentation",
            "IO",
            "20240309111154",
            "INC",
            "20240309111154",
        ),
        (
            "NonRecueillieConsentementConsultation_NonOppositionAlimentation",
            "INO",
            "20240310111154",
            "NA",
            "",
        ),
        ("NonRecueillieConsentementConsultation_NonRecueillieOppositionAlimentation", "NA", "", "NA", ""),
    ],
)
def test_consent_examples(
    name: str, feeding: str, feeding_date: str, consult: str, consult_date: str
) -> None:
    event = pam((CONSENT / f"{name}.er7").read_bytes())
    consent = event.dmp_consent
    assert consent["dmp_status"] == "ACTIF"
    assert (consent["feeding_opposition"], consent["feeding_opposition_date"]) == (feeding, feeding_date)
    assert (consent["consultation_consent"], consent["consultation_consent_date"]) == (consult, consult_date)
    assert consent["dmp_closing_date"] == ""
    assert event.patient.identity_collection_method == "INSI"
    assert event.patient.insi_query_date == "20211201"
    assert (event.unit, event.movement_id) == ("6268", "312")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_with_crlf_line_endings(path: Path) -> None:
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert pam(raw).patient.ipp is not None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_ack_round_trip(path: Path) -> None:
    message, header = parse(path.read_bytes())
    parse_pam(message, header)
    ack = hl7.parse(build_ack(header, "AA").decode("utf-8"))
    assert str(ack.segment("MSH")(9)) == f"ACK^{header.trigger}^ACK"
    assert (str(ack.segment("MSA")(1)), str(ack.segment("MSA")(2))) == ("AA", header.control_id)


# ------------------------------------------------------------------------------------------- synthetic events


def test_a28_full_identity() -> None:
    segment = pid(
        f1="1",
        f3="IPP42^^^CHU-X&1.2.250.1.999&ISO^PI~1234567890123456789012^^^&1.2.250.1.213.1.4.2&ISO^INS-C"
        "~2751263220749^^^&1.2.250.1.213.1.4.8&ISO^INS",
        f5="ADRUN^ZOE^ZOE MARIE\\T\\ANNE^^^^L~MARTIN^Zoé^^^^^D",
        f7="19751231",
        f8="F",
        f11="3 rue X^Bât B^CLERMONT^^63000^FRA^H~^^^^^^BDL^^63220",
        f13="^PRN^PH^^^^^^^^^0612345678~^NET^Internet^zoe@x.fr",
        f29="20240101",
        f30="Y",
        f32="QUAL~DOUTE",
    )
    event = pam(build(segment, "ZFD|||N|N|INSI|20240101|CNI"))
    p = event.patient
    assert event.is_identity_event
    assert p.ipp is not None and p.ipp.value == "IPP42" and p.ipp.authority_oid == "1.2.250.1.999"
    assert p.ins is not None and (p.ins.value, p.ins.authority_oid) == (
        "2751263220749",
        "1.2.250.1.213.1.4.8",
    )
    assert [i.type_code for i in p.identifiers] == ["PI", "INS-C", "INS"]
    assert (p.birth_name, p.first_name, p.first_names) == ("ADRUN", "ZOE", "ZOE MARIE&ANNE")
    assert p.first_names_list == ["ZOE", "MARIE&ANNE"]
    assert (p.used_name, p.used_first_name) == ("MARTIN", "Zoé")
    assert p.address is not None and (p.address.other, p.address.city) == ("Bât B", "CLERMONT")
    assert p.birth_place_cog == "63220"
    assert (p.phone, p.email) == ("0612345678", "zoe@x.fr")
    assert (p.death_date, p.death_indicator) == ("20240101", "Y")
    assert p.identity_status == "QUAL"
    assert p.identity_reliability == ["QUAL", "DOUTE"]
    assert p.is_doubtful
    assert (p.identity_collection_method, p.insi_query_date, p.identity_document_type) == (
        "INSI",
        "20240101",
        "CNI",
    )
    assert event.visit_number is None and event.unit is None and event.dmp_consent == {}
    assert event.facility_finess is None  # IPP authority is an OID, MSH-4 has no FINESS


def test_a31_update_without_ins_and_first_names_fallback() -> None:
    segment = pid(f1="1", f3="IPP1^^^CHU-X^PI", f5="DURAND^PAUL^^^^^L", f7="1980", f8="M", f32="PROV")
    p = pam(build(segment, trigger="A31")).patient
    assert p.ins is None
    assert (p.first_name, p.first_names) == ("PAUL", "PAUL")
    assert p.birth_date == "1980"  # partial dates are valid TS
    assert p.identity_status == "PROV"


def test_maiden_name_type_m_accepted_as_birth_name_and_no_status() -> None:
    pid = "PID|1||IPP1^^^CHU-X^PI||DUPONT^ANNE^^^^^M"
    p = pam(build(pid, trigger="A31")).patient
    assert p.birth_name == "DUPONT"
    assert p.identity_status is None and p.identity_reliability == []


def test_nh_with_ins_oid_is_ins_but_ins_c_is_not() -> None:
    segment = pid(
        f3="IPP1^^^CHU-X^PI~1234^^^&1.2.250.1.213.1.4.2&ISO^INS-C~279035121518989^^^X&1.2.3.4&ISO^NH"
        "~279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    )
    ins = pam(build(segment)).patient.ins
    assert ins is not None and (ins.type_code, ins.authority_oid) == ("NH", "1.2.250.1.213.1.4.10")


def test_ins_typed_identifier_with_foreign_oid_is_exposed_for_the_domain_to_refuse() -> None:
    segment = pid(f3="IPP1^^^CHU-X^PI~279035121518989^^^X&1.2.3.4&ISO^INS")
    ins = pam(build(segment)).patient.ins
    assert ins is not None and (ins.value, ins.authority_oid) == ("279035121518989", "1.2.3.4")


def test_only_ins_c_means_no_ins() -> None:
    segment = pid(f3="IPP1^^^CHU-X^PI~1234^^^&1.2.250.1.213.1.4.2&ISO^INS-C")
    assert pam(build(segment)).patient.ins is None


def test_a40_merge() -> None:
    mrg = "MRG|000099^^^CHU-X&000897406&N^PI~000098^^^CHU-X&000897406&N^PI"
    event = pam(build(PID, mrg, trigger="A40", structure="ADT_A39"))
    assert event.trigger == "A40" and event.is_identity_event
    assert event.patient.ipp is not None and event.patient.ipp.value == "000003"
    assert [(i.value, i.type_code) for i in event.merged_patient_ids] == [("000099", "PI"), ("000098", "PI")]


def test_a47_change_of_identifier() -> None:
    event = pam(build(PID, "MRG|OLD-IPP^^^CHU-X&000897406&N^PI", trigger="A47", structure="ADT_A30"))
    assert [i.value for i in event.merged_patient_ids] == ["OLD-IPP"]


def test_a24_link_reads_second_patient() -> None:
    other = "PID|2||000004^^^CHU-X&000897406&N^PI||AUTRE^JEAN^^^^^L||19500101|M"
    event = pam(build(PID, other, trigger="A24", structure="ADT_A24"))
    assert event.other_patient is not None
    assert event.other_patient.ipp is not None and event.other_patient.ipp.value == "000004"


def test_a24_error_location_on_second_pid() -> None:
    other = "PID|2||000004^^^CHU-X^PI||AUTRE^JEAN^^^^^L||19500230"
    error = pam_error(build(PID, other, trigger="A24", structure="ADT_A24"))
    assert (error.code, error.location) == ("102", "PID^2^7")


def test_z99_movement_update_is_known() -> None:
    event = pam(
        build(PID, "PV1|1|I|UF12", "ZBE|M1^CHU-X|20240306||UPDATE|N", trigger="Z99", structure="ADT_A01")
    )
    assert (event.unit, event.movement_action) == ("UF12", "UPDATE")
    assert not event.is_identity_event


@pytest.mark.parametrize("trigger", ["A02", "A08", "A11", "A12", "A13", "A21", "A22", "A37", "A05", "A04"])
def test_other_known_triggers_parse(trigger: str) -> None:
    extra = ["PID|2||000004^^^CHU-X^PI"] if trigger == "A37" else []
    assert pam(build(PID, *extra, trigger=trigger, structure="")).patient.ipp is not None


def test_escaped_name_is_unescaped() -> None:
    pid = "PID|1||IPP1^^^CHU-X^PI||O\\S\\BRIEN^JO^^^^^L"
    assert pam(build(pid)).patient.birth_name == "O^BRIEN"


def test_latin1_message_declared_8859_1() -> None:
    pid = "PID|1||IPP1^^^CHU-X^PI||HÉLÈNE^CÉCILE^^^^^L"
    event = pam(build(pid, charset="8859/1", encoding="latin-1"))
    assert (event.patient.birth_name, event.patient.first_name) == ("HÉLÈNE", "CÉCILE")
    assert "HÉLÈNE".encode("latin-1") not in build_ack(event.header, "AA")  # sanity: ACK carries no PID
    assert (
        build_ack(event.header, "AE", [Hl7Error("101", "Erreur à corriger")]).count("à".encode("latin-1"))
        == 1
    )


# ------------------------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("raw", "code", "location", "reject"),
    [
        (build(trigger="A28"), "100", "PID", False),
        (build("PID|1", trigger="A28"), "101", "PID^1^3", False),
        (build("PID|1||^^^CHU-X^PI"), "101", "PID^1^3", False),
        (build("PID|1||279035121518989^^^&1.2.250.1.213.1.4.10&ISO^INS"), "101", "PID^1^3", False),
        (build(PID.replace("19790328", "19790230")), "102", "PID^1^7", False),
        (build(PID.replace("19790328", "1979-03-28")), "102", "PID^1^7", False),
        (build(PID.replace("19790328", "19791328")), "102", "PID^1^7", False),
        (build(PID.replace("19790328", "197903282599")), "102", "PID^1^7", False),
        (build(PID.replace("|F|", "|X|")), "103", "PID^1^8", False),
        (build(PID.replace("VALI", "PROV~VALI")), "102", "PID^1^32", False),
        (build(pid(f3="1^^^X^PI", f29="2024-01-01")), "102", "PID^1^29", False),
        (build(PID, trigger="A40", structure="ADT_A39"), "100", "MRG", False),
        (build(PID, "MRG|", trigger="A40", structure="ADT_A39"), "101", "MRG^1^1", False),
        (build(PID, trigger="A47", structure="ADT_A30"), "100", "MRG", False),
        (build(PID, trigger="A24", structure="ADT_A24"), "100", "PID^2", False),
        (build(PID, trigger="A99"), "201", "MSH^1^9", True),
        (build(PID, trigger="ZZZ"), "201", "MSH^1^9", True),
        (build(PID).replace(b"ADT^A28", b"ORU^R01"), "200", "MSH^1^9", True),
        (build(PID).replace(b"2.5^FRA^2.11", b"9.9"), "203", "MSH^1^12", True),
        (build(PID).replace(b"|2.5^FRA^2.11|", b"||"), "101", "MSH^1^12", True),
        (build(PID).split(b"\r", 1)[1], "100", "MSH^1", True),
        (build(PID.replace("PAT-TROIS", "PAT-TRÖIS"), encoding="latin-1"), "102", "MSH^1^18", True),
    ],
    ids=[
        "no-pid",
        "no-pid3",
        "pid3-empty-value",
        "pid3-without-ipp",
        "birth-30-feb",
        "birth-iso-format",
        "birth-month-13",
        "birth-hour-25",
        "sex-X",
        "two-rniv-statuses",
        "death-date",
        "a40-no-mrg",
        "a40-empty-mrg1",
        "a47-no-mrg",
        "a24-one-pid",
        "unknown-trigger",
        "garbage-trigger",
        "oru",
        "version-9.9",
        "no-version",
        "no-msh",
        "latin1-declared-utf8",
    ],
)
def test_hostile_messages(raw: bytes, code: str, location: str, reject: bool) -> None:
    error = pam_error(raw)
    assert (error.code, error.location, error.reject) == (code, location, reject)
    assert error.severity == "E"
    assert error.message


def test_hostile_messages_get_acks_that_parse_back() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0)
    # Content error: the header is known, the ACK is AE with ERR.
    message, header = parse(build(PID.replace("|F|", "|X|"), control="C77"))
    with pytest.raises(Hl7Error) as info:
        parse_pam(message, header)
    ack = hl7.parse(build_ack(header, ack_code_for([info.value]), [info.value], now=now).decode())
    assert (str(ack.segment("MSA")(1)), str(ack.segment("MSA")(2))) == ("AE", "C77")
    err = ack.segment("ERR")
    assert (str(err(2)), str(err(3)), str(err(4))) == ("PID^1^8", "103^Table value not found^HL70357", "E")
    assert err.extract_field(1, 8).startswith("Sexe inconnu")
    # Envelope error: no header, best-effort NAK still carries MSA-2.
    raw = build(PID, control="C78").replace(b"2.5^FRA^2.11", b"9.9")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    nak = hl7.parse(build_nak_for_unparseable(raw, info.value, now=now).decode())
    assert (str(nak.segment("MSA")(1)), str(nak.segment("MSA")(2))) == ("AR", "C78")
    assert str(nak.segment("ERR")(3)) == "203^Unsupported version id^HL70357"


def test_unknown_trigger_nak_via_header() -> None:
    message, header = parse(build(PID, trigger="A99", control="C79"))
    with pytest.raises(Hl7Error) as info:
        parse_pam(message, header)
    ack = hl7.parse(build_ack(header, ack_code_for([info.value]), [info.value]).decode())
    assert str(ack.segment("MSH")(9)) == "ACK^A99^ACK"
    assert (str(ack.segment("MSA")(1)), str(ack.segment("MSA")(2))) == ("AR", "C79")
    assert str(ack.segment("ERR")(3)) == "201^Unsupported event code^HL70357"
