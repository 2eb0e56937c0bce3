"""ITI-65 Provide Document Bundle on the offline app (real database and demo GHT, no workers): what is stored,
what is refused, and how (OperationOutcome: IssueType code, French diagnostics, FHIRPath expression)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from opensegur.flows.jobs import JobKind
from opensegur.security.tokens import create_token
from opensegur.store.models import AuditEvent, Document, Job, Structure
from opensegur.web.app import create_app
from tests.dmp.helpers import adt, pid_segment
from tests.mhd.helpers import (
    CDA_V1,
    CDA_V2,
    EXAMPLE_CDA_ID,
    EXAMPLE_INS,
    FHIR_JSON,
    app_for,
    bundle,
    cda_document,
    docref_of,
    document,
    index_of,
    ins_patient,
    ipp_subject,
    new_master,
    sha1,
)
from tests.web import test_rest_intake as shared
from tests.web.test_rest_intake import PNG, RPPS, Offline, make_pdf, qualified_patient

offline = shared.offline


@pytest.fixture
async def fhir(offline: Offline) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app_for(offline))
    async with httpx.AsyncClient(transport=transport, base_url="http://opensegur.test") as c:
        yield c


def post(client: httpx.AsyncClient, body: Any, content_type: str = FHIR_JSON) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/fhir", content=raw, headers={"content-type": content_type})


def subject_of(offline: Offline, patient: dict[str, Any]) -> dict[str, Any]:
    with offline.db.session() as s:
        site = s.get_one(Structure, patient["site"])
        assert site.ipp_authority_oid is not None
        return ipp_subject(patient, site.ipp_authority_oid)


def issue(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith(FHIR_JSON), r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    [first] = body["issue"]
    assert first["severity"] == "error"
    return dict(first)


def processing_jobs(offline: Offline) -> int:
    with offline.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Job).where(Job.kind == JobKind.PROCESS)) or 0)


# ---- PDF: accepted, stored, read back, resent safely ----------------------------------------------------------


async def test_pdf_bundle_is_stored_with_its_job_and_answered_per_entry(
    offline: Offline, fhir: httpx.AsyncClient
) -> None:
    patient = qualified_patient(offline.db)
    master = new_master()
    b = bundle(document(make_pdf(), subject_of(offline, patient), master=master))
    r = await post(fhir, b)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["resourceType"] == "Bundle" and answer["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created"] * 3  # Binary, DocumentReference, List: one per request entry, in order
    location = answer["entry"][index_of(b, "DocumentReference")]["response"]["location"]
    doc_id = int(location.removeprefix("DocumentReference/"))
    assert offline.workers.count == 1
    with offline.db.session() as s:
        doc = s.get_one(Document, doc_id)
        assert doc.source == "mhd" and doc.kind == "initial" and doc.patient_id == patient["id"]
        assert doc.type_code == "11490-0" and doc.context["mhd"]["master_identifier"] == master[8:]
        assert (
            doc.context["mhd"]["submission_set"] == b["entry"][-1]["resource"]["identifier"][0]["value"][8:]
        )
        unique_id = doc.unique_id
        assert unique_id.startswith(f"{offline.settings.oid_root}.1.")  # the platform built the CDA
        assert doc.context["first_send"] is True
        job = s.scalar(select(Job).where(Job.key == f"{JobKind.PROCESS}:{doc_id}"))
        assert job is not None and job.patient_id == patient["id"]
    read = await fhir.get(f"/fhir/{location}")
    assert read.status_code == 200 and read.headers["content-type"].startswith(FHIR_JSON)
    ref = read.json()
    assert ref["resourceType"] == "DocumentReference" and ref["id"] == str(doc_id)
    assert ref["status"] == "current" and ref["description"] == "Flux OpenSégur : Reçu"
    root, ext = unique_id.split("^")
    assert ref["masterIdentifier"] == {"system": f"urn:oid:{root}", "value": ext}
    assert ref["identifier"] == [{"use": "secondary", "system": "urn:ietf:rfc:3986", "value": master}]
    assert ref["type"]["coding"][0]["code"] == "11490-0"
    assert ref["subject"]["identifier"]["value"] == patient["ins"]
    assert ref["content"][0]["attachment"]["url"] == f"/api/v1/documents/{doc_id}/content"


async def test_the_same_bundle_sent_again_is_answered_without_a_second_document(
    offline: Offline, fhir: httpx.AsyncClient
) -> None:
    patient = qualified_patient(offline.db)
    b = bundle(document(make_pdf(), subject_of(offline, patient), inline=True))
    first = await post(fhir, b)
    again = await post(fhir, b)
    assert first.status_code == again.status_code == 200, again.text
    i = index_of(b, "DocumentReference")
    assert again.json()["entry"][i]["response"] == {
        "status": "200 OK",
        "location": first.json()["entry"][i]["response"]["location"],
    }
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK", "200 OK"]
    assert processing_jobs(offline) == 1 and offline.workers.count == 1
    with offline.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Document)) == 1

    # Same masterIdentifier, other bytes: a conflict, not a silent second version.
    other = bundle(
        document(make_pdf(2), subject_of(offline, patient), master=docref_of(b)["masterIdentifier"]["value"])
    )
    r = await post(fhir, other)
    assert r.status_code == 409
    found = issue(r)
    assert found["code"] == "conflict" and "déjà utilisé" in found["diagnostics"]
    assert found["expression"] == [
        f"Bundle.entry[{index_of(other, 'DocumentReference')}].resource.masterIdentifier"
    ]


async def test_patient_by_ins_and_visibility_labels(offline: Offline, fhir: httpx.AsyncClient) -> None:
    patient = qualified_patient(offline.db, site_index=0)
    security = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]},
        {
            "coding": [
                {
                    "system": "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/"
                    "TRE-A07-StatutVisibiliteDocument",
                    "code": "MASQUE_PS",
                },
                {"system": "urn:oid:1.2.250.1.213.1.1.4.13", "code": "INVISIBLE_REPRESENTANTS_LEGAUX"},
            ]
        },
    ]
    patient_entry = {
        "fullUrl": "urn:uuid:6f1c1a8e-1111-4c1e-9f00-000000000001",
        "resource": ins_patient(patient["ins"]),
        "request": {"method": "POST", "url": "Patient"},
    }
    b = bundle(
        document(make_pdf(), {"reference": patient_entry["fullUrl"]}, security=security),
        extra=[patient_entry],
    )
    r = await post(fhir, b)
    assert r.status_code == 200, r.text
    with offline.db.session() as s:
        doc = s.scalars(select(Document)).one()
        assert doc.patient_id == patient["id"]
        assert doc.flags["confidentiality"] == ["MASQUE_PS", "INVISIBLE_REPRESENTANTS_LEGAUX"]


# ---- refusals ---------------------------------------------------------------------------------------------------


def _docref(b: dict[str, Any]) -> dict[str, Any]:
    return docref_of(b)


def _binary(b: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = b["entry"][index_of(b, "Binary")]["resource"]
    return resource


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    target[key] = value


DR = "Bundle.entry[1].resource"  # the DocumentReference, after its Binary
CASES: list[tuple[str, Callable[[dict[str, Any]], Any], int, str, str, str | None]] = [
    ("not a Bundle", lambda b: {"resourceType": "Patient"}, 400, "structure", "Bundle attendue", "Bundle"),
    ("batch", lambda b: {**b, "type": "batch"}, 422, "value", "transaction", "Bundle.type"),
    (
        "no DocumentReference",
        lambda b: {**b, "entry": [b["entry"][2]]},
        422,
        "required",
        "Aucune ressource DocumentReference",
        "Bundle.entry",
    ),
    (
        "no SubmissionSet",
        lambda b: {**b, "entry": b["entry"][:2]},
        422,
        "required",
        "submissionset",
        "Bundle.entry",
    ),
    (
        "Binary not in the Bundle",
        lambda b: _set(_docref(b)["content"][0]["attachment"], "url", "urn:uuid:0000-absent"),
        422,
        "not-found",
        "non résolue",
        f"{DR}.content[0].attachment.url",
    ),
    (
        "subject not in the Bundle",
        lambda b: _set(_docref(b), "subject", {"reference": "urn:uuid:patient-absent"}),
        422,
        "not-found",
        "non résolue",
        f"{DR}.subject.reference",
    ),
    (
        "invalid base64",
        lambda b: _set(_binary(b), "data", "JVBERi0x***pas du base64***"),
        422,
        "value",
        "base64 invalide",
        "Bundle.entry[0].resource.data",
    ),
    (
        "hash mismatch",
        lambda b: _set(_docref(b)["content"][0]["attachment"], "hash", sha1(b"autre chose")),
        422,
        "value",
        "hash (SHA-1) ne correspond pas",
        f"{DR}.content[0].attachment.hash",
    ),
    (
        "size mismatch",
        lambda b: _set(_docref(b)["content"][0]["attachment"], "size", 12),
        422,
        "value",
        "attachment.size (12)",
        f"{DR}.content[0].attachment.size",
    ),
    (
        "PNG sent as a PDF",
        lambda b: (
            _set(_binary(b), "data", base64.b64encode(PNG).decode()),
            _docref(b)["content"][0]["attachment"].update(size=len(PNG), hash=sha1(PNG)),
        ),
        422,
        "invalid",
        "PDF",
        "Bundle.entry[0].resource.data",
    ),
    (
        "unsupported content type",
        lambda b: (
            _set(_binary(b), "contentType", "image/png"),
            _set(_docref(b)["content"][0]["attachment"], "contentType", "image/png"),
        ),
        422,
        "not-supported",
        "image/png",
        f"{DR}.content[0].attachment.contentType",
    ),
    (
        "type not in JDV_J07",
        lambda b: _set(_docref(b), "type", {"coding": [{"system": "http://loinc.org", "code": "99999-9"}]}),
        422,
        "invalid",
        "JDV_J07",
        f"{DR}.type",
    ),
    (
        "INS with a wrong key",
        lambda b: _set(
            _docref(b),
            "subject",
            {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "279035121518988"}},
        ),
        422,
        "value",
        "Clé NIR invalide",
        f"{DR}.subject.identifier.value",
    ),
    (
        "unknown patient",
        lambda b: _docref(b)["subject"]["identifier"].update(value="000000"),
        422,
        "not-found",
        "Patient inconnu",
        f"{DR}.subject",
    ),
    (
        "RPPS with a wrong key",
        lambda b: _docref(b)["contained"][0].update(
            identifier=[
                {"system": "https://rpps.esante.gouv.fr", "value": RPPS[:-1] + str((int(RPPS[-1]) + 1) % 10)}
            ]
        ),
        422,
        "invalid",
        "RPPS",
        f"{DR}.author",
    ),
    (
        "update instead of create",
        lambda b: b["entry"][1]["request"].update(method="PUT"),
        422,
        "not-supported",
        "POST",
        "Bundle.entry[1].request.method",
    ),
    (
        "replaces an unknown document",
        lambda b: _set(
            _docref(b),
            "relatesTo",
            [{"code": "replaces", "target": {"identifier": {"system": "urn:oid:1.2.3.4", "value": "NOPE"}}}],
        ),
        422,
        "not-found",
        "inconnu",
        f"{DR}.relatesTo[0]",
    ),
    (
        "unknown visibility code",
        lambda b: _set(
            _docref(b),
            "securityLabel",
            [{"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.13", "code": "SECRET"}]}],
        ),
        422,
        "code-invalid",
        "JDV_J08",
        f"{DR}.securityLabel[0]",
    ),
    (
        "stray Binary",
        lambda b: b["entry"].insert(
            0,
            {
                "fullUrl": "urn:uuid:orphelin",
                "resource": {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0="},
                "request": {"method": "POST", "url": "Binary"},
            },
        ),
        422,
        "invalid",
        "référencé par aucune",
        "Bundle.entry[0]",
    ),
]


@pytest.mark.parametrize(
    ("name", "mutate", "status", "code", "words", "expression"), CASES, ids=[c[0] for c in CASES]
)
async def test_refusals_name_the_faulty_element_in_french(
    offline: Offline,
    fhir: httpx.AsyncClient,
    name: str,
    mutate: Callable[[dict[str, Any]], Any],
    status: int,
    code: str,
    words: str,
    expression: str | None,
) -> None:
    b = bundle(document(make_pdf(), subject_of(offline, qualified_patient(offline.db))))
    changed = mutate(b)
    r = await post(fhir, changed if isinstance(changed, dict) and changed.get("resourceType") else b)
    assert r.status_code == status, r.text
    found = issue(r)
    assert found["code"] == code, found
    assert words in found["diagnostics"], found
    if expression is not None:
        assert found["expression"] == [expression], found
    assert processing_jobs(offline) == 0 and offline.workers.count == 0


async def test_one_bad_document_refuses_the_whole_bundle(offline: Offline, fhir: httpx.AsyncClient) -> None:
    subject = subject_of(offline, qualified_patient(offline.db))
    good = document(make_pdf(), subject)
    bad = document(make_pdf(2), subject, type_code="99999-9")
    r = await post(fhir, bundle(good, bad))
    assert r.status_code == 422 and issue(r)["expression"] == ["Bundle.entry[3].resource.type"]
    with offline.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Document)) == 0
    assert processing_jobs(offline) == 0


async def test_not_json_xml_and_wrong_format(offline: Offline, fhir: httpx.AsyncClient) -> None:
    r = await post(fhir, b"{pas du JSON")
    assert r.status_code == 400 and issue(r)["code"] == "structure" and "illisible" in issue(r)["diagnostics"]
    deep = b"[" * 100_000 + b"]" * 100_000
    assert (await post(fhir, deep)).status_code == 400
    xml = b'<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/></Bundle>'
    r = await post(fhir, xml, "application/fhir+xml")
    assert r.status_code == 415
    assert issue(r)["code"] == "not-supported" and "XML non pris en charge" in issue(r)["diagnostics"]
    # Plain JSON is FHIR JSON too.
    b = bundle(document(make_pdf(), subject_of(offline, qualified_patient(offline.db))))
    assert (await post(fhir, b, "application/json; charset=utf-8")).status_code == 200


async def test_over_limit_bodies_get_413_while_streaming(offline: Offline) -> None:
    offline.settings.rest_max_upload_bytes = 32 * 1024
    app = app_for(offline)
    patient = qualified_patient(offline.db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        big = make_pdf() + b"%" + b"0" * (600 * 1024)
        r = await post(c, bundle(document(big, subject_of(offline, patient))))
        assert r.status_code == 413 and issue(r)["code"] == "too-costly"  # declared Content-Length
        assert issue(r)["expression"] == ["Bundle"] and "32 Ko au plus" in issue(r)["diagnostics"]

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"resourceType": "Bundle", "type": "transaction", "entry": [{"x": "'
            for _ in range(1024):
                yield b"A" * 1024
            yield b'"}]}'

        r = await c.post("/fhir", content=chunks(), headers={"content-type": FHIR_JSON})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and issue(r)["code"] == "too-costly"

        # Within the body limit but over the document limit once decoded.
        inline = make_pdf() + b"%" + b"1" * (33 * 1024 - len(make_pdf()))
        r = await post(c, bundle(document(inline, subject_of(offline, patient), inline=True)))
        assert r.status_code == 413, r.text
        assert issue(r)["expression"] == ["Bundle.entry[0].resource.content[0].attachment.data"]
    assert processing_jobs(offline) == 0


async def test_a_system_token_is_required(offline: Offline) -> None:
    with offline.db.session() as s:
        secret = create_token(s, "dpi-mhd", "secretaire_medicale")
    fhir = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(offline)), base_url="http://t")
    b = bundle(document(make_pdf(), subject_of(offline, qualified_patient(offline.db))))
    for headers in ({}, {"authorization": "Bearer contrefait"}):
        r = await fhir.post("/fhir", content=json.dumps(b), headers={"content-type": FHIR_JSON, **headers})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert issue(r)["code"] == "login" and "Connexion requise" in issue(r)["diagnostics"]
        assert (await fhir.get("/fhir/DocumentReference/1", headers=headers)).status_code == 401
    assert processing_jobs(offline) == 0
    r = await fhir.post(
        "/fhir",
        content=json.dumps(b),
        headers={"content-type": FHIR_JSON, "authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 200, r.text
    with offline.db.session() as s:
        assert s.scalars(select(Document.context)).one()["mhd"]["actor"] == "dpi-mhd"
    await fhir.aclose()


async def test_capability_statement_and_unknown_reference(fhir: httpx.AsyncClient) -> None:
    r = await fhir.get("/fhir/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON)
    cap = r.json()
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    assert not any("xml" in f for f in cap["format"]) and "XML" in cap["rest"][0]["documentation"]
    assert [i["code"] for i in cap["rest"][0]["interaction"]] == ["transaction"]
    for path in ("/fhir/DocumentReference/999999", "/fhir/DocumentReference/abc"):
        r = await fhir.get(path)
        assert r.status_code == 404 and issue(r)["code"] == "not-found"


# ---- CDA built by the hospital -----------------------------------------------------------------------------


def create_example_patient(offline: Offline) -> None:
    """PAT-TROIS of the ANS MDM example, qualified on CHU-X through the identity feed (ADT A28)."""
    pid = pid_segment(
        "405660",
        ins=EXAMPLE_INS,
        status="QUAL",
        name="PAT-TROIS",
        first="DOMINIQUE",
        birth="19790328",
        cog="63220",
    )
    result = offline.intake.handle(adt("A28", "A28-PAT-TROIS", pid))
    assert result.ack_code == "AA", result.ack


async def test_example_cda_is_stored_like_an_hl7_document(offline: Offline, fhir: httpx.AsyncClient) -> None:
    create_example_patient(offline)
    r = await post(fhir, bundle(cda_document(CDA_V1.read_bytes())))
    assert r.status_code == 200, r.text
    with offline.db.session() as s:
        doc = s.scalars(select(Document)).one()
        assert (doc.source, doc.kind, doc.unique_id) == ("mhd", "initial", EXAMPLE_CDA_ID)
        assert doc.type_code == "18748-4" and doc.title == "Radio de hanche" and doc.version == 1
        assert doc.payload_sha256 is not None and doc.size == len(CDA_V1.read_bytes())
        [audit] = s.scalars(select(AuditEvent).where(AuditEvent.action == "submit_document")).all()
        assert audit.reason == "mhd" and audit.patient_id == doc.patient_id
    assert processing_jobs(offline) == 1


@pytest.mark.parametrize(
    ("change", "words", "path"),
    [
        ({"master": "urn:oid:1.2.250.1.71.4.2.2.120456789.1"}, EXAMPLE_CDA_ID, "masterIdentifier"),
        ({"type_code": "11490-0"}, "« 11490-0 » dans la DocumentReference, « 18748-4 » dans le CDA", "type"),
        (
            {
                "relates_to": [
                    {
                        "code": "replaces",
                        "target": {
                            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.5"}
                        },
                    }
                ]
            },
            "« 1.2.3.4.5 » dans la DocumentReference, « absent » dans le CDA",
            "relatesTo",
        ),
    ],
)
async def test_document_reference_must_agree_with_the_cda(
    offline: Offline, fhir: httpx.AsyncClient, change: dict[str, Any], words: str, path: str
) -> None:
    create_example_patient(offline)
    r = await post(fhir, bundle(cda_document(CDA_V1.read_bytes(), **change)))
    assert r.status_code == 422, r.text
    found = issue(r)
    assert found["code"] == "value" and words in found["diagnostics"], found
    assert found["expression"] == [f"Bundle.entry[1].resource.{path}"]
    assert processing_jobs(offline) == 0


async def test_subject_must_be_the_cda_patient(offline: Offline, fhir: httpx.AsyncClient) -> None:
    create_example_patient(offline)
    other = qualified_patient(offline.db)
    entries = cda_document(CDA_V1.read_bytes())
    entries[1]["resource"]["subject"] = {
        "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": other["ins"]}
    }
    r = await post(fhir, bundle(entries))
    assert r.status_code == 422 and "INS du patient (recordTarget)" in issue(r)["diagnostics"]
    assert issue(r)["expression"] == ["Bundle.entry[1].resource.subject"]


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol3;</title></ClinicalDocument>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""


@pytest.mark.parametrize("cda", [BOMB, XXE], ids=["billion-laughs", "external-entity"])
async def test_hostile_cda_is_refused_before_any_expansion(
    offline: Offline, fhir: httpx.AsyncClient, cda: bytes
) -> None:
    create_example_patient(offline)
    r = await post(fhir, bundle(cda_document(cda)))
    assert r.status_code == 422, r.text
    found = issue(r)
    assert found["code"] == "invalid" and "DOCTYPE/ENTITY interdites" in found["diagnostics"]
    assert found["expression"] == ["Bundle.entry[0].resource.data"]
    assert processing_jobs(offline) == 0


async def test_cda_replacement_needs_the_replaced_document_on_the_platform(
    offline: Offline, fhir: httpx.AsyncClient
) -> None:
    create_example_patient(offline)
    replaces = [
        {
            "code": "replaces",
            "target": {"identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{EXAMPLE_CDA_ID}"}},
        }
    ]
    v2 = cda_document(CDA_V2.read_bytes(), master=f"urn:oid:{EXAMPLE_CDA_ID[:-1]}2", relates_to=replaces)
    r = await post(fhir, bundle(v2))
    assert r.status_code == 422 and issue(r)["code"] == "not-found", r.text
    assert (await post(fhir, bundle(cda_document(CDA_V1.read_bytes())))).status_code == 200
    r = await post(fhir, bundle(v2))
    assert r.status_code == 200, r.text
    with offline.db.session() as s:
        new = s.scalars(select(Document).where(Document.kind == "replacement")).one()
        assert new.parent_unique_id == EXAMPLE_CDA_ID and new.version == 2
