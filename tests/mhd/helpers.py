"""Builders of ITI-65 Provide Document Bundles (PDSm shape) for the MHD tests, and the apps that serve them."""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from opensegur.identity.ins import OID_NIR_TEST
from opensegur.web.app import create_app
from tests.actors import act_as
from tests.conftest import EXAMPLES
from tests.web.test_rest_intake import RPPS

MDM_FOLDER = EXAMPLES / "Vague 2" / "Trans_Doc-CDA-HL7V2" / "TRANSMISSION_DOCS_CDA_EN_HL7V2_V2.1" / "MDM"
CDA_V1: Path = MDM_FOLDER / "Transmission initiale MDM" / "CR_Radio_CDAN1_v1.XML"
CDA_V2: Path = MDM_FOLDER / "Remplacement MDM" / "CR_Radio_CDAN1_v2.XML"
# The ANS example patient of the MDM volet (PAT-TROIS), under the test NIR OID its CDA uses.
EXAMPLE_INS = "279035121518989"
EXAMPLE_CDA_ID = "1.2.250.1.71.4.2.2.120456789.71024000081"
EXAMPLE_CDA_V2_ID = "1.2.250.1.71.4.2.2.120456789.71024000082"
FHIR_JSON = "application/fhir+json"
_numbers = itertools.count(1)


def app_for(runtime: Any) -> FastAPI:
    return act_as(create_app(runtime))  # type: ignore[no-any-return]


def new_master() -> str:
    """A fresh sender-side document id, as an OID the way PDSm shows it."""
    return f"urn:oid:1.2.250.1.999.77.{next(_numbers)}.{uuid.uuid4().int % 10**12}"


def ipp_subject(patient: dict[str, Any], authority_oid: str) -> dict[str, Any]:
    return {"identifier": {"system": f"urn:oid:{authority_oid}", "value": patient["ipp"]}}


def ins_patient(matricule: str, oid: str = OID_NIR_TEST) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": f"urn:oid:{oid}", "value": matricule}],
        "name": [{"family": "PATIENT", "given": ["TEST"]}],
    }


def practitioner(rpps: str = RPPS) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": "auteur",
        "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "8" + rpps}],
        "name": [{"family": "RÉAULT", "given": ["Pierre"]}],
    }


def sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def document(
    content: bytes,
    subject: dict[str, Any],
    *,
    content_type: str = "application/pdf",
    master: str | None = None,
    type_code: str = "11490-0",
    inline: bool = False,
    relates_to: list[dict[str, Any]] | None = None,
    security: list[dict[str, Any]] | None = None,
    author: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A Binary entry (unless ``inline``) and its DocumentReference entry."""
    binary_url, doc_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    data = base64.b64encode(content).decode()
    attachment: dict[str, Any] = {
        "contentType": content_type,
        "language": "fr-FR",
        "title": "Lettre de liaison à la sortie",
        "creation": "2026-01-15T10:30:00+01:00",
        "size": len(content),
        "hash": sha1(content),
    }
    if inline:
        attachment["data"] = data
    else:
        attachment["url"] = binary_url
    docref: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "contained": [author or practitioner()],
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": master or new_master()},
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": type_code}]},
        "subject": subject,
        "date": "2026-01-15T10:35:00+01:00",
        "author": [{"reference": "#auteur"}],
        "securityLabel": security
        or [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]}
        ],
        "content": [{"attachment": attachment}],
        "context": {
            "period": {"start": "2026-01-10T08:00:00+01:00", "end": "2026-01-15T10:00:00+01:00"},
            "practiceSetting": {
                "coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.9", "code": "ETABLISSEMENT"}]
            },
        },
    }
    if relates_to:
        docref["relatesTo"] = relates_to
    entries = []
    if not inline:
        entries.append(
            {
                "fullUrl": binary_url,
                "resource": {"resourceType": "Binary", "contentType": content_type, "data": data},
                "request": {"method": "POST", "url": "Binary"},
            }
        )
    entries.append(
        {"fullUrl": doc_url, "resource": docref, "request": {"method": "POST", "url": "DocumentReference"}}
    )
    return entries


def bundle(*documents: list[dict[str, Any]], extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A transaction Bundle: the documents' entries, ``extra`` entries, then the SubmissionSet List."""
    entries = [copy.deepcopy(e) for group in documents for e in group] + (extra or [])
    items = [
        {"item": {"reference": e["fullUrl"]}}
        for e in entries
        if e["resource"]["resourceType"] == "DocumentReference"
    ]
    submission = {
        "resourceType": "List",
        "identifier": [
            {"use": "usual", "system": "urn:ietf:rfc:3986", "value": new_master()},
            {"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        ],
        "status": "current",
        "mode": "working",
        "code": {
            "coding": [
                {
                    "system": "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes",
                    "code": "submissionset",
                }
            ]
        },
        "date": "2026-01-15T10:35:00+01:00",
        "entry": items,
    }
    entries.append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": submission,
            "request": {"method": "POST", "url": "List"},
        }
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def docref_of(b: dict[str, Any], n: int = 0) -> dict[str, Any]:
    """The n-th DocumentReference resource of a Bundle."""
    refs = [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    return refs[n]


def index_of(b: dict[str, Any], resource_type: str, n: int = 0) -> int:
    return [i for i, e in enumerate(b["entry"]) if e["resource"]["resourceType"] == resource_type][n]


def cda_document(cda: bytes, **options: Any) -> list[dict[str, Any]]:
    """A CDA built by the hospital for PAT-TROIS, by default the ANS example's id and type."""
    subject = {"identifier": {"system": f"urn:oid:{OID_NIR_TEST}", "value": EXAMPLE_INS}}
    options.setdefault("master", f"urn:oid:{EXAMPLE_CDA_ID}")
    options.setdefault("type_code", "18748-4")
    return document(cda, subject, content_type="text/xml", **options)
