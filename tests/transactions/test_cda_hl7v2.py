import base64
import tracemalloc
from pathlib import Path

import pytest
from lxml import etree

from opensegur.transactions.cda_hl7v2 import (
    DocumentId,
    DocumentMessage,
    mssante_combination_allowed,
    parse_document_message,
    read_cda_header,
)
from opensegur.transactions.hl7v2 import Hl7Error, build_ack, parse

VAGUE2 = Path("/work/shared/hl7v2-examples/Vague 2/Trans_Doc-CDA-HL7V2/TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1")
VOLET = Path("/work/shared/hl7v2-examples/Volets/TRANS_DOC_CDA_HL7V2/V2.1/ORU")
RIS = Path("/work/shared/hl7v2-examples/Vague 2/RIS")
INS = "279035121518989"
MDM_DOC = "1.2.250.1.71.4.2.2.120456789.71024000081"
MDM_DOC_V2 = "1.2.250.1.71.4.2.2.120456789.71024000082"
PLACEHOLDER = b"Document medcial au format CDA niveau 1"  # sic: the ANS examples' stand-in for the CDA

# file, kind, document count, TXA-12 / CDA id, parent id, CDA ClinicalDocument/id root (None: placeholder)
EXAMPLES = [
    (VAGUE2 / "MDM/Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1.er7", "initial", 1, MDM_DOC, None, None),
    (
        VAGUE2 / "MDM/Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7",
        "initial", 1, MDM_DOC, None, MDM_DOC,
    ),
    (
        VAGUE2 / "MDM/Remplacement MDM/message_MDM_CR_Radio_RPLC_N1.er7",
        "replacement", 1, MDM_DOC_V2, MDM_DOC, MDM_DOC_V2,
    ),
    (
        VAGUE2 / "MDM/Suppression MDM/message_MDM_CR_Radio_DEL_N1.er7",
        "deletion", 1, MDM_DOC_V2, MDM_DOC, MDM_DOC_V2,
    ),
    (
        VAGUE2 / "ORU/Transmission initiale ORU/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7",
        "initial", 1, "1.2.250.1.213.1.1.9", None, "1.2.250.1.213.1.1.9",
    ),
    (
        VAGUE2 / "ORU/Remplacement ORU/message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7",
        "replacement", 1, "1.2.250.1.213.1.1.13", "1.2.250.1.213.1.1.12", "1.2.250.1.213.1.1.13",
    ),
    (
        VAGUE2 / "ORU/Suppression ORU/message_ORU_CR_Bio_DEL_N3_SEGUR.hl7",
        "deletion", 1, "1.2.250.1.213.1.1.12", "1.2.250.1.213.1.1.10", "1.2.250.1.213.1.1.12",
    ),
    (VOLET / "Transmission initiale ORU/message_ORU_CR_Bio_INIT_N1_N3.hl7", "initial", 2, None, None, None),
    (VOLET / "Remplacement ORU/message_ORU_CR_Bio_RPLC_N1_N3.er7", "replacement", 2, None, None, None),
    (
        VOLET / "Remplacement ORU/message_ORU_CR_Bio_RPLC_N1_Base64_N3_Base64.er7",
        "replacement", 2, "1.2.250.1.213.1.1.12", "1.2.250.1.213.1.1.10", "1.2.250.1.213.1.1.12",
    ),
    (VOLET / "Suppression ORU/message_ORU_CR_Bio_DEL_N1_N3.er7", "deletion", 2, None, None, None),
    (
        VOLET / "Suppression ORU/message_ORU_CR_Bio_DEL_N1_Base64_N3_Base64.er7",
        "deletion", 2, "1.2.250.1.213.1.1.12", "1.2.250.1.213.1.1.10", "1.2.250.1.213.1.1.12",
    ),
]  # fmt: skip


def load(raw: bytes) -> DocumentMessage:
    message, header = parse(raw)
    return parse_document_message(message, header)


def cda_root(content: bytes) -> str:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    root = etree.fromstring(content, parser)
    assert root.tag == "{urn:hl7-org:v3}ClinicalDocument"
    return str(root.find("{urn:hl7-org:v3}id").get("root"))


@pytest.mark.parametrize(
    ("path", "kind", "count", "doc_id", "parent_id", "cda_id"), EXAMPLES, ids=lambda v: ""
)
def test_ans_examples(
    path: Path, kind: str, count: int, doc_id: str | None, parent_id: str | None, cda_id: str | None
) -> None:
    doc = load(path.read_bytes())
    assert doc.kind == kind
    assert doc.order_control == {"initial": "NW", "replacement": "RO", "deletion": "CA"}[kind]
    assert doc.patient.ins is not None and doc.patient.ins.value == INS
    assert doc.patient.ins.authority_oid == "1.2.250.1.213.1.4.10"
    assert doc.patient.ipp is None  # the ANS examples carry the INS only
    assert doc.patient.birth_name == "PAT-TROIS"
    assert doc.visit.patient_class == "I" and doc.visit.visit_number == "000897406"
    assert doc.visit.unit == "UFNEPH"
    assert len(doc.documents) == count
    assert {d.status for d in doc.documents} == {{"initial": "F", "replacement": "C", "deletion": "D"}[kind]}
    assert doc.unique_document_id == (DocumentId(doc_id) if doc_id else None)
    assert doc.parent_document_id == (DocumentId(parent_id) if parent_id else None)
    for document in doc.documents:
        if cda_id is None:
            assert document.content == PLACEHOLDER
            assert document.header is None
        else:
            assert document.content.lstrip().startswith(b"<")
            assert document.header is not None
    if cda_id is not None:
        assert cda_root(doc.cda) == cda_id
    assert doc.meta.dest_dmp is True and doc.meta.dest_mssante_ps is True
    assert doc.author is not None and doc.author.role == "SB"
    assert doc.author.person_id_type == "IDNPS"
    assert "adam.hoda@test-ci-sis.mssante.fr" in [r.address for r in doc.recipients]
    assert all(w.severity == "W" for w in doc.warnings)


def test_mdm_initial_flags_and_participants() -> None:
    doc = load(
        (VAGUE2 / "MDM/Transmission initiale MDM/message_MDM_CR_Radio_INIT_N1_Base64.er7").read_bytes()
    )
    meta = doc.meta
    assert (meta.masque_ps, meta.invisible_patient, meta.invisible_rep_legaux, meta.connexion_secrete) == (
        False, True, True, True,
    )  # fmt: skip
    assert (meta.modif_conf_code, meta.dest_dmp, meta.dest_mssante_ps, meta.dest_mssante_pat) == (
        False, True, True, False,
    )  # fmt: skip
    assert (meta.ack_reception, meta.ack_lecture_mss) == (False, False)
    assert meta.corpsmail_ps == "Cher confrère, vous trouverez ci-joint le CR d’imagerie de M.Dupont"
    assert meta.corpsmail_patient is None
    assert doc.document_type.code == "18748-4"
    assert doc.completion_status == "AU"
    assert doc.header.trigger == "T02" and doc.header.version == "2.6"
    assert doc.author is not None
    assert (doc.author.person_id, doc.author.family_name, doc.author.given_name) == (
        "801234564895",
        "Eric",
        "Thomas",
    )
    assert doc.author.person_id_authority == "1.2.250.1.71.4.2.1"
    assert (doc.author.organization_id, doc.author.organization_id_type) == ("300017985", "FINEG")
    assert [(r.person_id, r.address) for r in doc.recipients] == [
        ("801234567897", "adam.hoda@test-ci-sis.mssante.fr")
    ]
    assert doc.reply_to is None
    assert doc.warnings == []
    # The official example is not in the MSSanté matrix (INVISIBLE_REP_LEGAUX=Y with a PS-only exchange).
    assert mssante_combination_allowed(meta) is False


def test_oru_replacement_padding_and_corpsmail_warnings() -> None:
    doc = load((VAGUE2 / "ORU/Remplacement ORU/message_ORU_CR_Bio_RPLC_N3_SEGUR.hl7").read_bytes())
    assert [(w.code, w.location) for w in doc.warnings] == [("102", "OBX^1^5^1^5"), ("102", "OBX^12^5^1^5")]
    assert doc.meta.corpsmail_ps is None  # truncated base64 in the example
    assert doc.documents[0].header is not None and doc.documents[0].header.relation == "RPLC"
    assert doc.placer_number == "98765431" and doc.filler_number == "1001-E1"
    assert doc.document_type.code == "11502-2" and doc.document_type.system == "LN"
    assert doc.reply_to == "adam.hoda@test-ci-sis.mssante.fr"
    patient = [r for r in doc.recipients if r.person_id_type == "INS"]
    assert [p.address for p in patient] == ["279035121518989@patient.mssante.fr"]
    assert mssante_combination_allowed(doc.meta)
    # Warnings go in an AA: the message is accepted.
    ack = build_ack(doc.header, "AA", doc.warnings, control_id="A1").decode()
    assert "MSA|AA|015" in ack and "ERR||OBX^1^5^1^5|102^Data type error^HL70357|W" in ack


# --------------------------------------------------------------------------------------------- RIS payloads


def mdm(
    *,
    trigger: str = "T02",
    orc: str = "NW",
    status: str = "F",
    data: str | None = "",
    txa13: str = "",
    flags: dict[str, str] | None = None,
    extra_obx: tuple[str, ...] = (),
    prt: tuple[str, ...] = (
        "PRT||UC||SB^^participation|801234564895^Eric^Thomas^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
    ),
    encoding: str = "Base64",
    message_type: str = "MDM",
) -> bytes:
    values = {
        "MASQUE_PS": "N", "INVISIBLE_PATIENT": "N", "INVISIBLE_REP_LEGAUX": "N", "CONNEXION_SECRETE": "N",
        "MODIF_CONF_CODE": "N", "DESTDMP": "Y", "DESTMSSANTEPS": "N", "DESTMSSANTEPAT": "N",
    }  # fmt: skip
    values.update(flags or {})
    if data == "":
        cda = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3.4"/></ClinicalDocument>'
        data = base64.b64encode(cda).decode()
    lines = [
        f"MSH|^~\\&|RIS|ORG|PFI|ORG|20240101120000||{message_type}^{trigger}^MDM_T02|C1|P|2.6|||||FRA|UNICODE UTF-8"
        "|||2.1^CISIS_CDA_HL7_V2",
        "EVN||20240101120000",
        f"PID|||{INS}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L||19790328|F",
        "PV1|1|I|UFNEPH||||||||||||||||000897406^^^AUT&120456789&M^VN",
        f"ORC|{orc}|",
        "OBR|1|||18748-4^CR d'imagerie médicale^LN|",
        f"TXA|1|18748-4|TEXT|||||||||1.2.3.4|{txa13}||||AU",
    ]
    if data is not None:
        lines.append(
            f"OBX|1|ED|18748-4^CR d'imagerie médicale^LN||^text^XML^{encoding}^{data}||||||{status}|"
        )
    lines += list(prt)
    for index, (code, value) in enumerate(values.items(), start=2):
        lines.append(f"OBX|{index}|CWE|{code}^^MetaDMPMSS||{value}^^expandedYes-NoIndicator||||||F|")
    lines += list(extra_obx)
    return "\r".join(lines).encode()


def mdm_with(content: bytes, trigger: str, orc: str, status: str, txa13: str = "") -> bytes:
    return mdm(trigger=trigger, orc=orc, status=status, data=base64.b64encode(content).decode(), txa13=txa13)


@pytest.mark.parametrize(
    ("name", "trigger", "orc", "status", "kind"),
    [
        ("transmission_initiale_cr_imagerie.xml", "T02", "NW", "F", "initial"),
        ("remplacement_cr_imagerie.xml", "T10", "RO", "C", "replacement"),
        ("suppression_cr_imagerie.xml", "T04", "CA", "D", "deletion"),
    ],
)
def test_ris_cda_examples_round_trip(name: str, trigger: str, orc: str, status: str, kind: str) -> None:
    # The RIS folder holds CDA documents (no HL7): they are carried here as the MDM payload.
    content = (RIS / name).read_bytes()
    header = read_cda_header(content)
    assert header is not None and header.id is not None
    doc = load(
        mdm_with(content, trigger, orc, status, txa13=header.parent_id.root if header.parent_id else "")
    )
    assert doc.kind == kind
    assert doc.cda == content
    assert doc.documents[0].header == header
    assert cda_root(doc.cda) == header.id.root
    if kind != "initial":
        assert header.relation == "RPLC" and header.parent_id is not None


# --------------------------------------------------------------------------------------------- hostile


def error_of(raw: bytes) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        load(raw)
    assert info.value.reject is False  # AE: in this volet AR means "circumstantial, resend later"
    return info.value


@pytest.mark.parametrize(
    "data",
    ["PENsaW5pY2Fs!G9j", "PENs aW5p", "PENs&aW5p", "PEN=saW5p", "PENsa", "QUJD\\E\\", "PENsaW5péY2Fs"],
)
def test_invalid_base64(data: str) -> None:
    error = error_of(mdm(data=data))
    assert (error.code, error.location) == ("102", "OBX^1^5^1^5")


def test_missing_padding_is_a_warning() -> None:
    doc = load(mdm(data="QUJDRA"))  # "ABCD" without "=="
    assert doc.cda == b"ABCD"
    assert [(w.code, w.severity) for w in doc.warnings] == [("102", "W")]


def test_missing_document_obx() -> None:
    error = error_of(mdm(data=None))
    assert (error.code, error.location) == ("100", "OBX")


@pytest.mark.parametrize("data", ["", "ICAg"])  # nothing / only spaces once decoded
def test_empty_document(data: str) -> None:
    raw = mdm().replace(b"^Base64^" + mdm().split(b"^Base64^")[1].split(b"|")[0], b"^Base64^" + data.encode())
    error = error_of(raw)
    assert (error.code, error.location) == ("101", "OBX^1^5^1^5")


def test_not_base64_encoding() -> None:
    error = error_of(mdm(encoding="A"))
    assert (error.code, error.location) == ("103", "OBX^1^5^1^4")


@pytest.mark.parametrize(("message_type", "trigger", "code"), [("MDM", "T01", "201"), ("ORU", "R03", "201")])
def test_unknown_trigger(message_type: str, trigger: str, code: str) -> None:
    error = error_of(mdm(message_type=message_type, trigger=trigger))
    assert (error.code, error.location) == (code, "MSH^1^9^1^2")


def test_unknown_message_type() -> None:
    error = error_of(mdm(message_type="ADT", trigger="A01"))
    assert (error.code, error.location) == ("200", "MSH^1^9^1^1")


def test_replacement_without_parent() -> None:
    error = error_of(mdm(trigger="T10", orc="RO", status="C"))
    assert (error.code, error.location) == ("101", "TXA^1^13")
    doc = load(mdm(trigger="T10", orc="RO", status="C", txa13="58131^^1.2.250.2345.3245.13^ISO"))
    assert doc.parent_document_id == DocumentId("1.2.250.2345.3245.13", "58131")


def test_deletion_is_t04() -> None:
    assert load(mdm(trigger="T04", orc="CA", status="D")).kind == "deletion"
    # T11 is HL7's "document cancel" but not used by the volet.
    assert error_of(mdm(trigger="T11", orc="CA", status="D")).code == "201"


@pytest.mark.parametrize(
    ("trigger", "orc", "status", "location"),
    [("T02", "NW", "C", "OBX^1^11"), ("T10", "NW", "C", "ORC^1^1"), ("T04", "CA", "F", "OBX^1^11")],
)
def test_incoherent_request(trigger: str, orc: str, status: str, location: str) -> None:
    error = error_of(mdm(trigger=trigger, orc=orc, status=status, txa13="1.2.3"))
    assert (error.code, error.application_code, error.location) == ("207", "906", location)
    ack = build_ack(parse(mdm())[1], "AE", [error], control_id="A1").decode()
    assert f"ERR||{location}|207^Application internal error^HL70357|E|906" in ack


def test_unknown_obx11() -> None:
    error = error_of(mdm(status="X"))
    assert (error.code, error.location) == ("103", "OBX^1^11")


def test_duplicated_flags() -> None:
    conflicting = error_of(
        mdm(extra_obx=("OBX|10|CWE|DESTDMP^^MetaDMPMSS||N^^expandedYes-NoIndicator||||||F|",))
    )
    assert (conflicting.code, conflicting.location) == ("198", "OBX^10^5")
    same = load(mdm(extra_obx=("OBX|10|CWE|DESTDMP^^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F|",)))
    assert same.meta.dest_dmp is True


def test_flag_value_and_absence() -> None:
    error = error_of(mdm(flags={"MASQUE_PS": "O"}))
    assert (error.code, error.location) == ("103", "OBX^2^5^1^1")
    raw = b"\r".join(line for line in mdm().split(b"\r") if b"|DESTDMP^" not in line)
    missing = error_of(raw)
    assert missing.code == "100" and "DESTDMP" in missing.message


def test_optional_flags_alias_mail_bodies_and_fin() -> None:
    body = base64.b64encode("Bonjour M. Dupont, voici votre CR d’imagerie".encode()).decode()
    doc = load(
        mdm(
            flags={"DESTMSSANTEPAT": "Y"},
            prt=(
                "PRT||UC||SB^^participation|801234564895^Eric^Thomas",
                "PRT||UC||RCT^^participation|||||||||||^^X.400^279035121518989@patient.mssante.fr",
            ),
            extra_obx=(
                "NTE|1|||FIN|",
                "OBX|10|CE|ACK_LECTURE^Accusé de lecture^MetaDMPMSS||Y^^expandedYes-NoIndicator||||||F|",
                f"OBX|11|ED|CORPSMAIL_PATIENT^Corps^MetaDMPMSS||^text^^Base64^{body}||||||F|",
            ),
        )
    )
    # NTE must follow DESTMSSANTEPAT: here it follows the last flag OBX, which is DESTMSSANTEPAT.
    assert doc.meta.patient_reply_forbidden is True
    assert doc.meta.ack_lecture_mss is True and doc.meta.ack_reception is False
    assert doc.meta.corpsmail_patient == "Bonjour M. Dupont, voici votre CR d’imagerie"


def test_prt_requirements() -> None:
    assert error_of(mdm(prt=())).location == "PRT"  # DESTDMP=Y needs the sender
    no_address = error_of(mdm(flags={"DESTMSSANTEPS": "Y"}))
    assert (no_address.code, no_address.location) == ("100", "PRT")


def test_two_documents_in_mdm() -> None:
    second = mdm().split(b"\r")[7].decode().replace("OBX|1|", "OBX|9|")
    error = error_of(mdm(extra_obx=(second,)))
    assert error.code == "198"


def test_hostile_xml_is_not_expanded() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="&b;"/></ClinicalDocument>'
    )
    doc = load(mdm(data=base64.b64encode(bomb).decode()))
    assert doc.documents[0].header is None and doc.cda == bomb


def test_txa12_differs_from_cda_id_is_a_warning() -> None:
    content = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="9.9.9"/></ClinicalDocument>'
    doc = load(mdm(data=base64.b64encode(content).decode()))
    assert [(w.code, w.location, w.severity) for w in doc.warnings] == [("207", "TXA^1^12", "W")]


def test_50_mb_document_memory_bound() -> None:
    size = 50 * 1024 * 1024
    content = (
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3.4"/><component><!--'
        + b"x" * size
        + b"--></component></ClinicalDocument>"
    )
    raw = mdm(data=base64.b64encode(content).decode())
    message, header = parse(raw)
    del raw
    tracemalloc.start()
    try:
        doc = parse_document_message(message, header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert doc.cda == content
    assert doc.documents[0].header is not None and doc.documents[0].header.id == DocumentId("1.2.3.4")
    # One decoded copy and nothing else of that order: no copy of the base64 text, no body parsing.
    assert peak < len(content) * 1.05, peak


@pytest.mark.parametrize("depth", [300, 200_000])
def test_header_nested_beyond_any_cda_is_not_read_and_nothing_is_kept(depth: int) -> None:
    """The review's case: 200,000 levels before the document id made the header read quadratic (31 s)."""
    nested = b"<x>" * depth + b"</x>" * depth
    raw = (
        b'<ClinicalDocument xmlns="urn:hl7-org:v3">'
        + nested
        + b'<id root="1.2.3"/><component/></ClinicalDocument>'
    )
    tracemalloc.start()
    try:
        assert read_cda_header(raw) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * len(raw) + 5_000_000


def test_header_of_a_replacement_still_names_its_parent() -> None:
    raw = (
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="2"/>'
        b'<relatedDocument typeCode="RPLC"><parentDocument><id root="1.2.3" extension="1"/></parentDocument>'
        b"</relatedDocument><component/></ClinicalDocument>"
    )
    header = read_cda_header(raw)
    assert header is not None and header.relation == "RPLC"
    assert header.parent_id is not None and header.parent_id.extension == "1"
