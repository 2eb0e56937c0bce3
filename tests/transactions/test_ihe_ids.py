"""The identifier table against the IHE IT Infrastructure Technical Framework.

The expected values below are typed from the standard (ITI TF-3 §4.2.5 tables of XDSDocumentEntry,
XDSSubmissionSet and XDSFolder attributes, §4.2.2 association types, §4.1.9 status; ITI TF-2a Table
3.18.4.1.2.3.7-1 for stored queries), not copied from this or any other code base: a typo in either place fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import opensegur
from opensegur.transactions import ihe_ids
from opensegur.transactions.ihe_ids import Q

pytestmark = pytest.mark.requirement("IHE-IDS")


ITI_TF_3_SCHEMES = {
    # XDSDocumentEntry (ITI TF-3 Table 4.2.5.1-1 and §4.2.3.2)
    "OBJECT_TYPE_STABLE": "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1",
    "OBJECT_TYPE_ON_DEMAND": "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248",
    "DE_AUTHOR": "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",
    "DE_CLASS_CODE": "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
    "DE_CONFIDENTIALITY": "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
    "DE_EVENT_CODE": "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4",
    "DE_FORMAT_CODE": "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",
    "DE_FACILITY_TYPE": "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",
    "DE_PRACTICE_SETTING": "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",
    "DE_TYPE_CODE": "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983",
    "DE_LIMITED_METADATA": "urn:uuid:ab9b591b-83ab-4d03-8f5d-f93b1fb92e85",
    "DE_PATIENT_ID": "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",
    "DE_UNIQUE_ID": "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab",
    # XDSSubmissionSet (§4.2.3.3)
    "SS_NODE": "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd",
    "SS_AUTHOR": "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d",
    "SS_CONTENT_TYPE": "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500",
    "SS_LIMITED_METADATA": "urn:uuid:5003a9db-8d8d-49e6-bf0c-990e34ac7707",
    "SS_PATIENT_ID": "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
    "SS_SOURCE_ID": "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832",
    "SS_UNIQUE_ID": "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8",
    # XDSFolder (§4.2.3.4)
    "FOLDER_NODE": "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2",
    "FOLDER_CODE_LIST": "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5",
    "FOLDER_PATIENT_ID": "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a",
    "FOLDER_UNIQUE_ID": "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a",
    # ebRIM 3.0 canonical object types
    "OBJECT_TYPE_CLASSIFICATION": "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification",
    "OBJECT_TYPE_EXTERNAL_ID": "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier",
    "OBJECT_TYPE_ASSOCIATION": "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association",
    "OBJECT_TYPE_REGISTRY_PACKAGE": "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage",
    # Association types (§4.2.2)
    "ASSOC_HAS_MEMBER": "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
    "ASSOC_APND": "urn:ihe:iti:2007:AssociationType:APND",
    "ASSOC_RPLC": "urn:ihe:iti:2007:AssociationType:RPLC",
    "ASSOC_XFRM": "urn:ihe:iti:2007:AssociationType:XFRM",
    "ASSOC_XFRM_RPLC": "urn:ihe:iti:2007:AssociationType:XFRM_RPLC",
    "ASSOC_SIGNS": "urn:ihe:iti:2007:AssociationType:signs",
    "ASSOC_IS_SNAPSHOT_OF": "urn:ihe:iti:2010:AssociationType:IsSnapshotOf",
    "ASSOC_UPDATE_AVAILABILITY": "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus",
    "ASSOC_SUBMIT_ASSOCIATION": "urn:ihe:iti:2010:AssociationType:SubmitAssociation",
    # Status (§4.1.9, §4.2.4)
    "STATUS_APPROVED": "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved",
    "STATUS_DEPRECATED": "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated",
    "STATUS_SUBMITTED": "urn:oasis:names:tc:ebxml-regrep:StatusType:Submitted",
    "RESPONSE_SUCCESS": "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success",
    "RESPONSE_FAILURE": "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure",
    "RESPONSE_PARTIAL": "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess",
    "SEVERITY_ERROR": "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error",
    "SEVERITY_WARNING": "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning",
}

# ITI TF-2a Table 3.18.4.1.2.3.7-1: a registry answers "unknown stored query" to any other value.
ITI_TF_STORED_QUERIES = {
    "FIND_DOCUMENTS": "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d",
    "FIND_SUBMISSION_SETS": "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9",
    "FIND_FOLDERS": "urn:uuid:958f3006-baad-4929-a4de-ff1114824431",
    "GET_ALL": "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3",
    "GET_DOCUMENTS": "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4",
    "GET_FOLDERS": "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4",
    "GET_ASSOCIATIONS": "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155",
    "GET_DOCUMENTS_AND_ASSOCIATIONS": "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a",
    "GET_SUBMISSION_SETS": "urn:uuid:51224314-5390-4169-9b91-b1980040715a",
    "GET_SUBMISSION_SET_AND_CONTENTS": "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83",
    "GET_FOLDER_AND_CONTENTS": "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7",
    "GET_FOLDERS_FOR_DOCUMENT": "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578",
    "GET_RELATED_DOCUMENTS": "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6",
}


def test_every_identifier_of_the_table_is_the_one_of_iti_tf_3() -> None:
    ours = {
        name: value
        for name, value in vars(ihe_ids).items()
        if name.isupper() and isinstance(value, str) and name != "ASSOC_ALIASES"
    }
    assert ours == ITI_TF_3_SCHEMES


def test_stored_query_ids_are_those_of_iti_tf_2a() -> None:
    assert {name: value for name, value in vars(Q).items() if name.isupper()} == ITI_TF_STORED_QUERIES


def test_aliases_only_map_to_standard_association_types() -> None:
    standard = {v for k, v in ITI_TF_3_SCHEMES.items() if k.startswith("ASSOC_")}
    assert set(ihe_ids.ASSOC_ALIASES.values()) <= standard
    assert not set(ihe_ids.ASSOC_ALIASES) & standard


def test_no_module_writes_an_ihe_identifier_outside_the_table() -> None:
    """Every IHE UUID or URN in the code comes from :mod:`ihe_ids`: a second copy is where a typo would hide."""
    root = Path(opensegur.__file__).parent
    known = set(ITI_TF_3_SCHEMES.values()) | set(ITI_TF_STORED_QUERIES.values())
    pattern = re.compile(
        r"urn:(?:uuid:[0-9a-f-]{36}|oasis:names:tc:ebxml-regrep:[A-Za-z]+Type:[A-Za-z:]+|ihe:iti:20\d\d:AssociationType:\w+)"
    )
    offenders = [
        f"{path.relative_to(root)}: {found}"
        for path in root.rglob("*.py")
        if path.name != "ihe_ids.py"
        for found in pattern.findall(path.read_text(encoding="utf-8"))
        if found in known
    ]
    assert offenders == []
