from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
from lxml import etree

from opensegur.documents.metadata import Coded, DocumentMetadata, SubmissionSetMetadata, XdsAuthor
from opensegur.security.pki import TestPki, certificate_chain_pem, ensure_test_pki
from opensegur.transactions import xds
from opensegur.transactions.xades import SignedDocument, sign_submission_set, verify_submission_set_signature
from opensegur.transactions.xds import (
    ASSOC_HAS_MEMBER,
    ASSOC_RPLC,
    ASSOC_SIGNS,
    ASSOC_UPDATE_AVAILABILITY,
    NS_RIM,
    NS_XDSB,
    STATUS_APPROVED,
    STATUS_DEPRECATED,
    Association,
    Q,
    RetrievedDocument,
    RetrieveRequest,
    StatusUpdate,
    XdsError,
    XdsErrorInfo,
)
from opensegur.transport.mtom import build_mtom, parse_mtom
from opensegur.transport.soap import envelope, parse_envelope
from tests.schemas import schema_errors

R = f"{{{NS_RIM}}}"
X = f"{{{NS_XDSB}}}"
PID = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
CDA = b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.250.1.999.2.1"/></ClinicalDocument>'
AUTHOR = XdsAuthor(
    person="801234567897^RÉAULT^Pierre^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
    institutions=("CH X^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1010000000009",),
    specialties=("G15_10/SM07^Médecine générale^1.2.250.1.213.1.1.4.5",),
)


def _doc(uid: str = "1.2.250.1.999.2.1", **kw: object) -> DocumentMetadata:
    m = DocumentMetadata(
        unique_id=uid,
        patient_id=PID,
        mime_type="text/xml",
        class_code=Coded("10", "1.2.250.1.213.1.1.4.1", "Compte rendu"),
        type_code=Coded("11490-0", "2.16.840.1.113883.6.1", "Lettre de sortie"),
        format_code=Coded(
            "urn:ihe:iti:xds-sd:text:2008", "1.3.6.1.4.1.19376.1.2.3", "Document à corps non structuré"
        ),
        healthcare_facility_type_code=Coded("SA01", "1.2.250.1.71.4.2.4", "Etablissement public de santé"),
        practice_setting_code=Coded("ETABLISSEMENT", "1.2.250.1.213.1.1.4.9", "Etablissement de santé"),
        confidentiality_codes=[
            Coded("N", "2.16.840.1.113883.5.25", "Normal"),
            Coded("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13", "Non visible par le patient"),
        ],
        creation_time="20260101120000",
        title="Lettre de liaison",
        comments="sortie",
        authors=[AUTHOR],
        legal_authenticator=AUTHOR.person,
        service_start_time="20251228",
        service_stop_time="20260101",
        event_codes=[Coded("ZZQK002", "1.2.250.1.215.300.1", "Radiographie")],
        source_patient_id="123456^^^&1.2.250.1.999.1&ISO^PI",
        source_patient_info=["PID-5|DUPONT^Marie^^^^^L", "PID-7|19790315", "PID-8|F"],
        reference_ids=["V123^^^&1.2.250.1.999.2&ISO^urn:ihe:iti:xds:2013:encounterId"],
    )
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def _ss(**kw: object) -> SubmissionSetMetadata:
    ss = SubmissionSetMetadata(
        unique_id="1.2.250.1.999.1.1.1",
        source_id="1.2.250.1.999",
        patient_id=PID,
        content_type_code=Coded("03", "1.2.250.1.213.2.2", "Hospitalisation complète"),
        submission_time="20260101130000",
        authors=[AUTHOR],
        title="Lot",
    )
    for k, v in kw.items():
        setattr(ss, k, v)
    return ss


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return ensure_test_pki(Path(tmp_path_factory.mktemp("pki")))


def test_document_entry_round_trip_and_structure() -> None:
    m = _doc(entry_uuid="urn:uuid:11111111-1111-1111-1111-111111111111", size=10, hash_sha1="ab" * 20)
    el = xds.render_document_entry(m, m.entry_uuid)
    assert el.get("objectType") == "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
    schemes = [c.get("classificationScheme") for c in el.findall(f"{R}Classification")]
    assert schemes.count("urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f") == 2  # repeated confidentialityCode
    assert "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a" in schemes
    assert all(c.get("classifiedObject") == m.entry_uuid for c in el.findall(f"{R}Classification"))
    ext = {e.get("identificationScheme"): e.get("value") for e in el.findall(f"{R}ExternalIdentifier")}
    assert ext["urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"] == m.unique_id
    assert ext["urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"] == PID
    # ebRIM order: Slot*, Name, Description, Classification*, ExternalIdentifier*
    order = [etree.QName(c).localname for c in el]
    assert order.index("Name") > max(i for i, t in enumerate(order) if t == "Slot")
    assert order.index("Description") < order.index("Classification") < order.index("ExternalIdentifier")
    assert xds.read_document_entry(el) == m


def test_document_entry_missing_metadata_is_rejected() -> None:
    el = xds.render_document_entry(_doc(), "urn:uuid:1")
    for cl in el.findall(f"{R}Classification"):
        if cl.get("classificationScheme") == "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983":
            el.remove(cl)
    with pytest.raises(XdsError) as exc:
        xds.read_document_entry(el)
    assert exc.value.code == "XDSRegistryMetadataError" and "typeCode" in exc.value.message


def test_submission_set_round_trip() -> None:
    ss = _ss(entry_uuid="urn:uuid:22222222-2222-2222-2222-222222222222")
    rp, node = xds.render_submission_set(ss, ss.entry_uuid)
    assert node.get("classificationNode") == "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
    assert node.get("classifiedObject") == ss.entry_uuid
    assert xds.read_submission_set(rp) == ss


@pytest.mark.requirement("XDM-ORIGIN")
def test_intended_recipients_round_trip_in_their_slot() -> None:
    ss = _ss(entry_uuid="urn:uuid:22222222-2222-2222-2222-222222222222")
    ss.intended_recipients = ["||^^Internet^dr.reault@ch-test.mssante.fr"]
    rp, _ = xds.render_submission_set(ss, ss.entry_uuid)
    assert rp.find(f"{R}Slot[@name='intendedRecipient']") is not None
    assert xds.read_submission_set(rp) == ss


def _iti41(
    pki: TestPki | None = None, docs: list[tuple[DocumentMetadata, bytes]] | None = None, **kw: object
):
    ss = _ss()
    docs = docs or [(_doc(), CDA)]
    signature = None
    if pki is not None:
        signature = sign_submission_set(
            ss.unique_id,
            [SignedDocument(m.unique_id, c, m.mime_type) for m, c in docs],
            pki.signing_key.read_bytes(),
            certificate_chain_pem(pki),
            signature_id="1.2.250.1.999.3.1",
        )
    body, atts = xds.build_provide_and_register(ss, docs, signature=signature, **kw)  # type: ignore[arg-type]
    return ss, docs, body, atts


@pytest.mark.requirement("ITI41-SUBMISSION")
def test_iti41_structure_and_round_trip_over_mtom(pki: TestPki) -> None:
    ss, docs, body, atts = _iti41(pki)
    rol = body.find(
        f"{{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}}SubmitObjectsRequest/{R}RegistryObjectList"
    )
    assert rol is not None
    tags = [etree.QName(c).localname for c in rol]
    assert (
        tags
        == ["ExtrinsicObject", "ExtrinsicObject", "RegistryPackage", "Classification"] + ["Association"] * 3
    )
    assoc_types = [a.get("associationType") for a in rol.findall(f"{R}Association")]
    assert assoc_types == [ASSOC_HAS_MEMBER, ASSOC_HAS_MEMBER, ASSOC_SIGNS]
    documents = body.findall(f"{X}Document")
    assert [d.get("id") for d in documents] == [e.get("id") for e in rol.findall(f"{R}ExtrinsicObject")]
    assert ss.entry_uuid and docs[0][0].entry_uuid  # assigned in place

    ctype, stream = build_mtom(envelope(body), atts, action=xds.ACTION_ITI41)
    raw_env, parts = parse_mtom(ctype, b"".join(stream), 10_000_000)
    _, body_el = parse_envelope(raw_env)
    pnr = xds.parse_provide_and_register(body_el, parts)
    assert pnr.submission_set == ss
    assert [d.content for d in pnr.documents] == [CDA]
    got = pnr.documents[0].metadata
    assert (
        got.unique_id == docs[0][0].unique_id
        and got.confidentiality_codes == docs[0][0].confidentiality_codes
    )
    assert pnr.signature is not None
    sig_meta = pnr.signature.metadata
    assert sig_meta.unique_id == "1.2.250.1.999.3.1"
    assert sig_meta.class_code.code == "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"
    assert sig_meta.type_code == Coded("E1762", "ASTM", "Full Document")
    assert sig_meta.language_code == "art"
    assert sig_meta.event_codes[0].code == "1.2.840.10065.1.12.1.14"
    assert sig_meta.hash_sha1 == hashlib.sha1(pnr.signature.content).hexdigest()
    # The sandbox can check the signature against what was actually submitted.
    result = verify_submission_set_signature(
        pnr.signature.content,
        pnr.submission_set.unique_id,
        [SignedDocument(d.metadata.unique_id, d.content, d.metadata.mime_type) for d in pnr.documents],
        pki.ca_cert.read_bytes(),
    )
    assert result.references == (f"urn:oid:{docs[0][0].unique_id}", f"urn:oid:{ss.unique_id}")


def test_iti41_document_altered_after_signing_is_detected(pki: TestPki) -> None:
    from opensegur.transactions.xades import XadesError

    ss, _, body, atts = _iti41(pki)
    pnr = xds.parse_provide_and_register(body, atts)
    altered = pnr.documents[0].content.replace(b"1.2.250.1.999.2.1", b"1.2.250.1.999.2.9")
    with pytest.raises(XadesError, match="mismatch"):
        verify_submission_set_signature(
            pnr.signature.content,  # type: ignore[union-attr]
            ss.unique_id,
            [SignedDocument(pnr.documents[0].metadata.unique_id, altered)],
            pki.ca_cert.read_bytes(),
        )


def test_iti41_replacement() -> None:
    new = _doc(entry_uuid="urn:uuid:33333333-3333-3333-3333-333333333333")
    old = "urn:uuid:44444444-4444-4444-4444-444444444444"
    _, _, body, atts = _iti41(docs=[(new, CDA)], replaces={new.entry_uuid: old})
    pnr = xds.parse_provide_and_register(body, atts)
    assert pnr.replaces == {new.entry_uuid: old}
    assert pnr.signature is None
    rplc = [a for a in pnr.associations if a.type == ASSOC_RPLC]
    assert len(rplc) == 1 and rplc[0].target == old


def test_iti41_accepts_the_2010_rplc_alias_and_inline_base64() -> None:
    new = _doc(entry_uuid="urn:uuid:33333333-3333-3333-3333-333333333333")
    _, _, body, atts = _iti41(docs=[(new, CDA)], replaces={new.entry_uuid: "urn:uuid:4"})
    for a in body.iter(f"{R}Association"):
        if a.get("associationType") == ASSOC_RPLC:
            a.set("associationType", "urn:ihe:iti:2010:AssociationType:RPLC")
    doc = body.find(f"{X}Document")
    assert doc is not None
    doc.remove(doc[0])
    doc.text = xds.document_content_b64(CDA)
    pnr = xds.parse_provide_and_register(body, {})
    assert pnr.replaces and pnr.documents[0].content == CDA


def _mutated(mutate) -> tuple[etree._Element, dict[str, bytes]]:
    _, _, body, atts = _iti41()
    mutate(body, atts)
    return body, atts


def _eo(body: etree._Element) -> etree._Element:
    found = body.find(f".//{R}ExtrinsicObject")
    assert found is not None
    return found


def _set_ext(body: etree._Element, scheme: str, value: str) -> None:
    for e in body.iter(f"{R}ExternalIdentifier"):
        if e.get("identificationScheme") == scheme:
            e.set("value", value)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda b, a: a.clear(), "XDSMissingDocument"),
        (lambda b, a: b.remove(b.find(f"{X}Document")), "XDSMissingDocument"),
        (
            lambda b, a: etree.SubElement(b, f"{X}Document", id="urn:uuid:extra").__setattr__("text", "QQ=="),
            "XDSMissingDocumentMetadata",
        ),
        (
            lambda b, a: _set_ext(
                b, "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427", "1^^^&1.2.250.1.213.1.4.10&ISO^NH"
            ),
            "XDSPatientIdDoesNotMatch",
        ),
        (lambda b, a: a.update({k: v + b"x" for k, v in a.items()}), "XDSRepositoryMetadataError"),
        (
            lambda b, a: _eo(b).remove(_eo(b).find(f"{R}Slot[@name='creationTime']")),
            "XDSRegistryMetadataError",
        ),
        (lambda b, a: _eo(b).attrib.pop("mimeType"), "XDSRegistryMetadataError"),
        (
            lambda b, a: [
                x.getparent().remove(x)
                for x in b.iter(f"{R}Association")
                if x.get("associationType") == ASSOC_HAS_MEMBER
            ],
            "XDSRegistryMetadataError",
        ),
        (
            lambda b, a: [
                x.getparent().remove(x) for x in b.iter(f"{R}Classification") if x.get("classificationNode")
            ],
            "XDSRegistryMetadataError",
        ),
    ],
)
def test_iti41_strict_errors(mutate, code: str) -> None:
    body, atts = _mutated(mutate)
    with pytest.raises(XdsError) as exc:
        xds.parse_provide_and_register(body, atts)
    assert exc.value.code == code


def test_iti41_hash_mismatch() -> None:
    m = _doc(hash_sha1="0" * 40)
    _, _, body, atts = _iti41(docs=[(m, CDA)])
    with pytest.raises(XdsError, match="hash") as exc:
        xds.parse_provide_and_register(body, atts)
    assert exc.value.code == "XDSRepositoryMetadataError"


def test_iti41_duplicate_unique_id_in_message() -> None:
    _, _, body, atts = _iti41(docs=[(_doc(), CDA), (_doc(), CDA)])
    with pytest.raises(XdsError) as exc:
        xds.parse_provide_and_register(body, atts)
    assert exc.value.code == "XDSRegistryDuplicateUniqueIdInMessage"


def test_registry_response_round_trip() -> None:
    assert xds.parse_registry_response(xds.build_registry_response("Success")).ok
    errors = [
        XdsErrorInfo("XDSPatientIdDoesNotMatch", "mismatch", "urn:uuid:1"),
        XdsErrorInfo("XDSRegistryMetadataError", "warn", severity="Warning"),
    ]
    el = xds.build_registry_response("Failure", errors)
    assert el.get("status") == "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
    lst = el.find("{urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0}RegistryErrorList")
    assert lst is not None and lst.get("highestSeverity", "").endswith("Error")
    result = xds.parse_registry_response(el)
    assert result.status == "Failure" and result.errors == errors
    partial = xds.parse_registry_response(xds.build_registry_response("PartialSuccess"))
    assert partial.status == "PartialSuccess" and not partial.ok


def test_stored_queries_round_trip() -> None:
    req = xds.build_find_documents(
        PID,
        [STATUS_APPROVED, "Deprecated"],
        type_codes=[Coded("11490-0", "2.16.840.1.113883.6.1")],
        creation_time_from="20240101",
        return_type="ObjectRef",
    )
    raw = etree.tostring(req)
    assert (
        b"('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved','urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated')"
        in raw
    )
    values = [v.text for v in req.iter(f"{R}Value")]
    assert f"'{PID}'" in values and "20240101" in values
    q = xds.parse_stored_query(req)
    assert q.query_id == Q.FIND_DOCUMENTS and q.name == "FIND_DOCUMENTS" and q.return_type == "ObjectRef"
    assert q.one("$XDSDocumentEntryPatientId") == PID
    assert q.parameters["$XDSDocumentEntryStatus"] == [STATUS_APPROVED, STATUS_DEPRECATED]
    assert q.parameters["$XDSDocumentEntryTypeCode"] == ["11490-0^^2.16.840.1.113883.6.1"]
    assert q.parameters["$XDSDocumentEntryCreationTimeFrom"] == ["20240101"]

    cases = [
        (
            xds.build_get_documents(unique_ids=["1.2.3", "O'Brien"]),
            Q.GET_DOCUMENTS,
            "$XDSDocumentEntryUniqueId",
            ["1.2.3", "O'Brien"],
        ),
        (
            xds.build_get_documents(uuids=["urn:uuid:1"]),
            Q.GET_DOCUMENTS,
            "$XDSDocumentEntryEntryUUID",
            ["urn:uuid:1"],
        ),
        (
            xds.build_get_associations(["urn:uuid:1", "urn:uuid:2"]),
            Q.GET_ASSOCIATIONS,
            "$uuid",
            ["urn:uuid:1", "urn:uuid:2"],
        ),
        (xds.build_get_submission_sets(["urn:uuid:1"]), Q.GET_SUBMISSION_SETS, "$uuid", ["urn:uuid:1"]),
        (
            xds.build_get_documents_and_associations(uuids=["urn:uuid:9"]),
            Q.GET_DOCUMENTS_AND_ASSOCIATIONS,
            "$XDSDocumentEntryEntryUUID",
            ["urn:uuid:9"],
        ),
        (xds.build_find_submission_sets(PID), Q.FIND_SUBMISSION_SETS, "$XDSSubmissionSetPatientId", [PID]),
    ]
    for el, qid, param, values in cases:
        parsed = xds.parse_stored_query(el)
        assert (
            parsed.query_id == qid
            and parsed.parameters[param] == values
            and parsed.return_type == "LeafClass"
        )


@pytest.mark.requirement("ITI18-PARAM-ERRORS")
def test_stored_query_errors() -> None:
    with pytest.raises(XdsError) as exc:
        xds.parse_stored_query(xds.build_stored_query("urn:uuid:unknown", {}))
    assert exc.value.code == "XDSUnknownStoredQuery"
    with pytest.raises(XdsError) as exc:
        xds.parse_stored_query(xds.build_stored_query(Q.FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": PID}))
    assert exc.value.code == "XDSStoredQueryMissingParam" and exc.value.location == "$XDSDocumentEntryStatus"
    both = xds.build_stored_query(
        Q.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": ["a"], "$XDSDocumentEntryUniqueId": ["b"]}
    )
    with pytest.raises(XdsError) as exc:
        xds.parse_stored_query(both)
    assert exc.value.code == "XDSStoredQueryParamNumber"
    with pytest.raises(ValueError):
        xds.build_get_documents()


@pytest.mark.parametrize("raw", ["('urn:a'", "('urn:a' 'urn:b')", "'unclosed", "('a',,'b')"])
@pytest.mark.requirement("ITI18-PARAM-ERRORS")
def test_a_malformed_query_parameter_is_param_number_not_a_registry_error(raw: str) -> None:
    query = xds.build_stored_query(
        Q.FIND_DOCUMENTS,
        {"$XDSDocumentEntryPatientId": PID, "$XDSDocumentEntryStatus": [STATUS_APPROVED]},
    )
    slot = next(sl for sl in query.iter(f"{R}Slot") if sl.get("name") == "$XDSDocumentEntryStatus")
    slot[0][0].text = raw
    with pytest.raises(XdsError) as exc:
        xds.parse_stored_query(query)
    assert exc.value.code == "XDSStoredQueryParamNumber" and exc.value.location == "$XDSDocumentEntryStatus"


def test_query_response_round_trip() -> None:
    d = _doc(
        entry_uuid="urn:uuid:55555555-5555-5555-5555-555555555555",
        repository_unique_id="1.2.250.1.213.1.1.9",
        availability_status="Approved",
        logical_id="urn:uuid:66666666-6666-6666-6666-666666666666",
        version="2",
        size=len(CDA),
        hash_sha1=hashlib.sha1(CDA).hexdigest(),
    )
    ss = _ss(entry_uuid="urn:uuid:77777777-7777-7777-7777-777777777777")
    a = Association(
        ASSOC_HAS_MEMBER,
        ss.entry_uuid or "",
        d.entry_uuid or "",
        "urn:uuid:8",
        {"SubmissionSetStatus": ["Original"]},
    )
    result = xds.parse_query_response(xds.build_query_response([d], [ss], [a]))
    assert result.status == "Success"
    assert result.documents == [d] and result.submission_sets == [ss] and result.associations == [a]
    refs = xds.parse_query_response(xds.build_query_response([d], [ss], [a], return_type="ObjectRef"))
    assert refs.object_refs == [d.entry_uuid, ss.entry_uuid, "urn:uuid:8"] and refs.documents == []
    failed = xds.parse_query_response(
        xds.build_query_response(status="Failure", errors=[XdsErrorInfo("XDSRegistryError", "boom")])
    )
    assert failed.status == "Failure" and failed.errors[0].code == "XDSRegistryError"


SWISS_ITI18_RESPONSE = Path(__file__).parents[1] / "samples" / "ehealthsuisse" / "ITI-18_response_raw.xml"


@pytest.mark.requirement("EBRIM-PLACEMENT", "XDS-SCHEMAS")
def test_the_swiss_epr_query_response_is_schema_valid_and_reads() -> None:
    """eHealth Suisse "EPR by example" ITI-18 response: a registry we did not write, with lid, home, VersionInfo
    and a default rim namespace redeclared on every element."""
    _headers, body = parse_envelope(SWISS_ITI18_RESPONSE.read_bytes())
    assert schema_errors(body) == []
    result = xds.parse_query_response(body)
    assert result.status == "Success" and result.errors == []
    [doc] = result.documents
    assert (doc.unique_id, doc.mime_type, doc.availability_status) == (
        "2.25.306443472873218838784535217290635593269",
        "application/fhir+json",
        "Approved",
    )
    assert doc.patient_id == "CHPAM3946^^^&1.3.6.1.4.1.12559.11.20.1&ISO"
    assert (doc.repository_unique_id, doc.size, doc.hash_sha1) == (
        "1.1.4567332.1.75",
        5375,
        "a72f1824ea1d57af00faf5dd5ccb9aea0b0ce390",
    )
    assert doc.entry_uuid == doc.logical_id == "urn:uuid:1415538d-41bc-41b2-9ae6-8b785f7f3aa6"
    assert (doc.class_code.code, doc.type_code.code) == ("184216000", "41000179103")
    assert [a.person for a in doc.authors] == ["^Max^Mustermann^^^Dr.Med"]


def test_retrieve_round_trip_over_mtom() -> None:
    reqs = [
        RetrieveRequest("1.2.250.1.213.1.1.9", "1.2.3"),
        RetrieveRequest("1.2.250.1.213.1.1.9", "1.2.4", "urn:oid:1.2"),
    ]
    assert xds.parse_retrieve_request(xds.build_retrieve_request(reqs)) == reqs
    docs = [RetrievedDocument("1.2.250.1.213.1.1.9", "1.2.3", "text/xml", CDA)]
    body, atts = xds.build_retrieve_response(
        docs, [XdsErrorInfo("XDSDocumentUniqueIdError", "1.2.4 unknown", "1.2.4")]
    )
    ctype, stream = build_mtom(envelope(body), atts)
    env, parts = parse_mtom(ctype, b"".join(stream), 1_000_000)
    _, el = parse_envelope(env)
    result, got = xds.parse_retrieve_response(el, parts)
    assert result.status == "PartialSuccess" and result.errors[0].location == "1.2.4"
    assert got == docs
    with pytest.raises(XdsError):
        xds.parse_retrieve_request(etree.Element(f"{X}RetrieveDocumentSetRequest"))


def test_update_document_set_round_trip() -> None:
    masked = _doc(
        logical_id="urn:uuid:66666666-6666-6666-6666-666666666666",
        version="2",
        confidentiality_codes=[
            Coded("N", "2.16.840.1.113883.5.25", "Normal"),
            Coded("MASQUE_PS", "1.2.250.1.213.1.1.4.13", "Masqué PS"),
        ],
    )
    ss = _ss()
    body = xds.build_update_document_set(
        ss,
        metadata_updates=[(masked, "1")],
        status_updates=[
            StatusUpdate("urn:uuid:99999999-9999-9999-9999-999999999999", "Approved", "Deprecated")
        ],
    )
    parsed = xds.parse_update_document_set(copy.deepcopy(body))
    assert parsed.submission_set == ss
    ((entry, prev),) = parsed.metadata_updates
    assert prev == "1" and entry.logical_id == masked.logical_id
    assert [c.code for c in entry.confidentiality_codes] == ["N", "MASQUE_PS"]
    assert parsed.status_updates == [
        StatusUpdate("urn:uuid:99999999-9999-9999-9999-999999999999", STATUS_APPROVED, STATUS_DEPRECATED)
    ]
    upd = [a for a in parsed.associations if a.type == ASSOC_UPDATE_AVAILABILITY]
    assert upd[0].source == ss.entry_uuid
    with pytest.raises(ValueError, match="lid"):
        xds.build_update_document_set(_ss(), metadata_updates=[(_doc(), "1")])
    hm = body.find(f".//{R}Association[@associationType='{ASSOC_HAS_MEMBER}']")
    assert hm is not None
    hm.remove(hm.find(f"{R}Slot[@name='PreviousVersion']"))
    with pytest.raises(XdsError) as exc:
        xds.parse_update_document_set(body)
    assert exc.value.code == "XDSMetadataUpdateError"


def test_actions() -> None:
    assert xds.ACTION_ITI41 in xds.ITI41_ACTIONS
    assert "urn:ihe:iti:xds-b:2007:ProvideAndRegisterDocumentSet-b" in xds.ITI41_ACTIONS
    assert xds.response_action("urn:ihe:iti:xds-b:2007:ProvideAndRegisterDocumentSet-b") == (
        "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
    )
