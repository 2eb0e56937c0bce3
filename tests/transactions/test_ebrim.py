"""Every legal ebRIM placement reads the same: nested or top level, ebRIM 3.0 or 2.1, long or short types."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from lxml import etree

from opensegur.transactions import xds
from opensegur.transactions.ebrim import NS_RIM, normalize
from opensegur.transactions.ihe_ids import ASSOC_HAS_MEMBER, ASSOC_RPLC, DE_CLASS_CODE, SS_CONTENT_TYPE
from opensegur.transactions.xds import Association, XdsError
from tests.ebrim_forms import hoist, short_association_types
from tests.schemas import schema_errors
from tests.transactions.test_xds import CDA, _doc, _iti41, _ss

pytestmark = pytest.mark.requirement("EBRIM-PLACEMENT")


R = f"{{{NS_RIM}}}"


def test_iti41_with_every_classification_and_identifier_at_the_top_level_reads_as_nested() -> None:
    _, _, nested, atts = _iti41()
    top = hoist(copy.deepcopy(nested))
    rol = top.find(f".//{R}RegistryObjectList")
    assert rol is not None
    # The rewrite really moved them: no object keeps a Classification or an ExternalIdentifier inside.
    assert all(obj.find(f"{R}Classification") is None for obj in rol.findall(f"{R}ExtrinsicObject"))
    assert len(rol.findall(f"{R}ExternalIdentifier")) == 5
    # Both placements are legal ebRIM 3.0, and so is what normalize() makes of the top-level one.
    assert schema_errors(nested, atts) == [] and schema_errors(top, atts) == []
    assert schema_errors(normalize(copy.deepcopy(top)), atts) == []
    assert xds.parse_provide_and_register(top, atts) == xds.parse_provide_and_register(nested, atts)


def test_short_association_types_read_as_the_standard_ones() -> None:
    new = _doc(entry_uuid="urn:uuid:33333333-3333-3333-3333-333333333333")
    _, _, body, atts = _iti41(docs=[(new, CDA)], replaces={new.entry_uuid: "urn:uuid:4"})
    pnr = xds.parse_provide_and_register(short_association_types(body), atts)
    assert {a.type for a in pnr.associations} == {ASSOC_HAS_MEMBER, ASSOC_RPLC}
    assert pnr.replaces == {new.entry_uuid: "urn:uuid:4"}


def test_query_response_in_top_level_form_reads_as_nested() -> None:
    d = _doc(entry_uuid="urn:uuid:55555555-5555-5555-5555-555555555555", availability_status="Approved")
    ss = _ss(entry_uuid="urn:uuid:77777777-7777-7777-7777-777777777777")
    a = Association(ASSOC_HAS_MEMBER, ss.entry_uuid or "", d.entry_uuid or "", "urn:uuid:8", {})
    response = xds.build_query_response([d], [ss], [a])
    result = xds.parse_query_response(hoist(response))
    assert result.documents == [d] and result.submission_sets == [ss] and result.associations == [a]


def test_a_top_level_classification_naming_no_object_is_reported_against_the_entry() -> None:
    _, _, body, atts = _iti41()
    hoist(body)
    for cl in body.iter(f"{R}Classification"):
        if cl.get("classificationScheme") == DE_CLASS_CODE:
            cl.set("classifiedObject", "urn:uuid:00000000-0000-0000-0000-000000000000")
    with pytest.raises(XdsError) as exc:
        xds.parse_provide_and_register(body, atts)
    assert exc.value.code == "XDSRegistryMetadataError"
    assert "classCode" in exc.value.message and exc.value.location.startswith("ExtrinsicObject")


def test_a_nested_classification_of_another_object_is_still_refused() -> None:
    _, _, body, atts = _iti41()
    rp = body.find(f".//{R}RegistryPackage")
    assert rp is not None
    for cl in rp.findall(f"{R}Classification"):
        if cl.get("classificationScheme") == SS_CONTENT_TYPE:
            cl.set("classifiedObject", "urn:uuid:00000000-0000-0000-0000-000000000000")
    with pytest.raises(XdsError, match="classification d'un autre objet"):
        xds.parse_provide_and_register(body, atts)


def test_normalize_keeps_the_schema_order_inside_an_object() -> None:
    _, _, body, _ = _iti41()
    normalize(hoist(body))
    eo = body.find(f".//{R}ExtrinsicObject")
    assert eo is not None
    tags = [etree.QName(c).localname for c in eo]
    assert tags.index("ExternalIdentifier") > max(i for i, t in enumerate(tags) if t == "Classification")


NIST_SINGLE_DOC = Path(__file__).parents[1] / "samples" / "nist-toolkit" / "single_doc.xml"


def test_the_nist_toolkit_ebrim21_submission_reads_in_full() -> None:
    """NIST XDS toolkit test 11966 "single_doc.xml": ebRIM 2.1, LeafRegistryObjectList, the submission-set
    classification at the top level, a short "HasMember", symbolic ids and ObjectRefs."""
    root = normalize(etree.parse(str(NIST_SINGLE_DOC)).getroot())
    rol = root.find(f"{R}RegistryObjectList")
    assert rol is not None
    [package] = rol.findall(f"{R}RegistryPackage")
    assert xds.is_submission_set(package)
    ss = xds.read_submission_set(package)
    assert (ss.unique_id, ss.source_id, ss.content_type_code.code) == (
        "SubmissionSet01",
        "129.6.58.92.1.1",
        "34133-9",
    )
    entry = xds.read_document_entry(rol.find(f"{R}ExtrinsicObject"))
    assert entry.patient_id == ss.patient_id == "SELF-5^^^&1.3.6.1.4.1.21367.2005.3.7&ISO"
    assert [a.person for a in entry.authors] == ["^Smitty^Gerald^^^", "^Dopplemeyer^Sherry^^^"]
    assert (entry.class_code.code, entry.format_code.code) == ("DEMO-Ext Summary", "urn:ihe:rad:TEXT")
    assert [c.code for c in entry.confidentiality_codes] == ["V"]
    [member] = xds.read_associations(rol)
    assert (member.type, member.source, member.target) == (ASSOC_HAS_MEMBER, "SubmissionSet01", "Document01")
