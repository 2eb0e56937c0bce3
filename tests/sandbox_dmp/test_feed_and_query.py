"""ITI-41 → ITI-18 → ITI-43 → ITI-57 round trips against the DMP sandbox, built as the platform's client builds them."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from opensegur.content import jdv
from opensegur.sandbox.dmp import REPOSITORY_UNIQUE_ID, create_dmp_app
from opensegur.security.pki import TestPki
from opensegur.transactions import xds
from tests.sandbox_dmp.helpers import (
    OTHER_STRUCTURE,
    PAT_TROIS,
    Soap,
    author,
    cda,
    cx,
    iti41,
    metadata,
    new_oid,
    post,
    query,
    read,
    registry_result,
    soap,
    submission_set,
)

STATUS_DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"


async def test_register_then_find_documents_returns_the_metadata(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    sub = iti41(pki)
    result = registry_result(await post(client, "/dmp/iti41", sub.request))
    assert result.ok, result.errors

    found = await query(client, pki, xds.build_find_documents(PAT_TROIS))
    assert found.status == "Success"
    docs = {d.unique_id: d for d in found.documents}
    sent = sub.documents[0]
    got = docs[sent.unique_id]
    assert got.entry_uuid == sent.entry_uuid
    assert got.availability_status == "Approved"
    assert got.type_code == sent.type_code and got.class_code == sent.class_code
    assert got.format_code == sent.format_code
    assert got.confidentiality_codes == sent.confidentiality_codes
    assert got.patient_id == PAT_TROIS
    assert got.size == len(sub.contents[0])
    assert got.hash_sha1 == hashlib.sha1(sub.contents[0]).hexdigest()
    assert got.repository_unique_id == REPOSITORY_UNIQUE_ID
    assert got.authors == sent.authors
    # The signature entry is stored as an entry of its own, as the DMP does.
    assert any(d.class_code.code == xds.SIGNATURE_CLASS.code for d in found.documents)

    by_type = await query(
        client, pki, xds.build_find_documents(PAT_TROIS, type_codes=[jdv.CLASS_CODES["10"]])
    )  # a class code used as a type code matches nothing
    assert sent.unique_id not in {d.unique_id for d in by_type.documents}
    by_class = await query(client, pki, xds.build_find_documents(PAT_TROIS, class_codes=[sent.class_code]))
    assert [d.unique_id for d in by_class.documents] == [sent.unique_id]

    sets = await query(client, pki, xds.build_find_submission_sets(PAT_TROIS))
    assert [s.unique_id for s in sets.submission_sets] == [sub.submission_set.unique_id]
    # $XDSSubmissionSetSubmissionTimeFrom, inclusive, compared at the precision given (PDSM4DMP later openings).
    sent_at = sub.submission_set.submission_time or ""
    for since, found in ((sent_at, True), (sent_at[:8], True), (str(int(sent_at[:4]) + 1), False)):
        later = await query(
            client, pki, xds.build_find_submission_sets(PAT_TROIS, submission_time_from=since)
        )
        assert bool(later.submission_sets) is found, since

    both = await query(client, pki, xds.build_get_documents_and_associations(unique_ids=[sent.unique_id]))
    assert [d.entry_uuid for d in both.documents] == [sent.entry_uuid]
    assert {a.type for a in both.associations} == {xds.ASSOC_HAS_MEMBER}

    ss_of = await query(client, pki, xds.build_get_submission_sets([sent.entry_uuid or ""]))
    assert [s.unique_id for s in ss_of.submission_sets] == [sub.submission_set.unique_id]

    refs = await query(
        client, pki, xds.build_get_documents(unique_ids=[sent.unique_id], return_type="ObjectRef")
    )
    assert refs.object_refs == [sent.entry_uuid]


async def test_retrieve_returns_the_same_bytes_as_mtom(client: httpx.AsyncClient, pki: TestPki) -> None:
    sub = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    uid = sub.documents[0].unique_id
    req = soap(
        xds.ACTION_ITI43,
        xds.build_retrieve_request(
            [xds.RetrieveRequest(REPOSITORY_UNIQUE_ID, uid), xds.RetrieveRequest("1.2.3.4", uid)]
        ),
        pki,
        authentication_mode="INDIRECTE_RENFORCEE",
    )
    resp = await post(client, "/dmp/iti43", req)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("multipart/related")
    body, parts = read(resp)
    result, docs = xds.parse_retrieve_response(body, parts)
    assert result.status == "PartialSuccess"
    assert [e.code for e in result.errors] == ["XDSUnknownRepositoryId"]
    assert len(docs) == 1 and docs[0].content == sub.contents[0] and docs[0].mime_type == "text/xml"


async def test_duplicate_unique_id_is_refused(client: httpx.AsyncClient, pki: TestPki) -> None:
    sub = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    uid = sub.documents[0].unique_id
    again = iti41(pki, docs=[(metadata(uid), cda(uid))])
    result = registry_result(await post(client, "/dmp/iti41", again.request))
    assert result.status == "Failure"
    assert [e.code for e in result.errors] == ["XDSDuplicateUniqueIdInRegistry"]
    assert uid in result.errors[0].context


async def test_persistent_across_restarts(tmp_path: Path, pki: TestPki) -> None:
    data = tmp_path / "persist"
    sub = iti41(pki)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_dmp_app(data, pki)), base_url="http://dmp.test"
    ) as c:
        assert registry_result(await post(c, "/dmp/iti41", sub.request)).ok
    assert (data / "dmp-sandbox.db").exists()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_dmp_app(data, pki)), base_url="http://dmp.test"
    ) as c:
        found = await query(c, pki, xds.build_get_documents(unique_ids=[sub.documents[0].unique_id]))
        assert [d.entry_uuid for d in found.documents] == [sub.documents[0].entry_uuid]


async def test_replacement_deprecates_the_old_version(client: httpx.AsyncClient, pki: TestPki) -> None:
    first = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", first.request)).ok
    old = first.documents[0]
    new_uid = new_oid()
    new = metadata(new_uid, entry_uuid=f"urn:uuid:{uuid.uuid4()}")
    second = iti41(pki, docs=[(new, cda(new_uid))], replaces={new.entry_uuid or "": old.entry_uuid or ""})
    assert registry_result(await post(client, "/dmp/iti41", second.request)).ok

    approved = await query(client, pki, xds.build_find_documents(PAT_TROIS))
    assert old.unique_id not in {d.unique_id for d in approved.documents}
    assert new_uid in {d.unique_id for d in approved.documents}
    deprecated = await query(client, pki, xds.build_find_documents(PAT_TROIS, [xds.STATUS_DEPRECATED]))
    assert [d.unique_id for d in deprecated.documents] == [old.unique_id]

    # Replacing a deprecated entry again is refused: only an Approved entry can be replaced.
    third_uid = new_oid()
    third = metadata(third_uid, entry_uuid=f"urn:uuid:{uuid.uuid4()}")
    again = iti41(
        pki, docs=[(third, cda(third_uid))], replaces={third.entry_uuid or "": old.entry_uuid or ""}
    )
    result = registry_result(await post(client, "/dmp/iti41", again.request))
    assert result.status == "Failure" and result.errors[0].code == "XDSRegistryError"
    unknown_uid = new_oid()
    unknown = metadata(unknown_uid, entry_uuid=f"urn:uuid:{uuid.uuid4()}")
    dangling = iti41(
        pki,
        docs=[(unknown, cda(unknown_uid))],
        replaces={unknown.entry_uuid or "": f"urn:uuid:{uuid.uuid4()}"},
    )
    result = registry_result(await post(client, "/dmp/iti41", dangling.request))
    assert result.errors[0].code == "XDSUnresolvedReferenceException"


def _delete(pki: TestPki, entry_uuid: str, **vihf: Any) -> Soap:
    ss = submission_set()
    body = xds.build_update_document_set(
        ss, status_updates=[xds.StatusUpdate(entry_uuid, xds.STATUS_APPROVED, STATUS_DELETED)]
    )
    return soap(xds.ACTION_ITI57, body, pki, **vihf)


async def test_deletion_by_the_author_hides_the_entry(client: httpx.AsyncClient, pki: TestPki) -> None:
    sub = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    entry = sub.documents[0]

    refused = registry_result(
        await post(
            client,
            "/dmp/iti57",
            _delete(pki, entry.entry_uuid or "", structure_id=OTHER_STRUCTURE, subject_id="899999999999"),
        )
    )
    assert refused.status == "Failure" and refused.errors[0].code == "DMP_SBX_NON_AUTORISE"

    ok = registry_result(await post(client, "/dmp/iti57", _delete(pki, entry.entry_uuid or "")))
    assert ok.ok, ok.errors
    approved = await query(client, pki, xds.build_find_documents(PAT_TROIS))
    assert entry.unique_id not in {d.unique_id for d in approved.documents}
    # No physical delete: the entry is still there, with the Deleted status.
    got = await query(client, pki, xds.build_get_documents(unique_ids=[entry.unique_id]))
    assert [d.availability_status for d in got.documents] == ["Deleted"]
    deleted = await query(client, pki, xds.build_find_documents(PAT_TROIS, [STATUS_DELETED]))
    assert [d.unique_id for d in deleted.documents] == [entry.unique_id]

    retrieve = soap(
        xds.ACTION_ITI43,
        xds.build_retrieve_request([xds.RetrieveRequest(REPOSITORY_UNIQUE_ID, entry.unique_id)]),
        pki,
    )
    result, docs = xds.parse_retrieve_response(*read(await post(client, "/dmp/iti43", retrieve)))
    assert docs == [] and result.errors[0].code == "XDSDocumentUniqueIdError"

    # Deleting again: the OriginalStatus no longer matches.
    again = registry_result(await post(client, "/dmp/iti57", _delete(pki, entry.entry_uuid or "")))
    assert again.errors[0].code == "XDSMetadataUpdateError"


async def test_masking_creates_a_new_version_hidden_from_other_professionals(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    sub = iti41(pki)
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    found = await query(client, pki, xds.build_get_documents(unique_ids=[sub.documents[0].unique_id]))
    current = found.documents[0]
    assert current.version == "1" and current.logical_id
    masked = metadata(
        current.unique_id,
        logical_id=current.logical_id,
        confidentiality_codes=[
            jdv.load_value_set(jdv.JDV_CONFIDENTIALITY).codes["N"],
            jdv.load_value_set(jdv.JDV_CONFIDENTIALITY).codes["MASQUE_PS"],
        ],
    )
    body = xds.build_update_document_set(submission_set(), metadata_updates=[(masked, "1")])
    assert registry_result(await post(client, "/dmp/iti57", soap(xds.ACTION_ITI57, body, pki))).ok

    mine = await query(client, pki, xds.build_get_documents(unique_ids=[current.unique_id]))
    assert [(d.version, d.availability_status) for d in mine.documents] == [
        ("2", "Approved"),
        ("1", "Deprecated"),
    ]
    assert mine.documents[0].logical_id == current.logical_id
    assert mine.documents[0].entry_uuid != current.entry_uuid
    assert "MASQUE_PS" in {c.code for c in mine.documents[0].confidentiality_codes}

    other = await query(
        client,
        pki,
        xds.build_find_documents(PAT_TROIS),
        structure_id=OTHER_STRUCTURE,
        subject_id="899999999999",
        authentication_mode="INDIRECTE_RENFORCEE",
    )
    assert current.unique_id not in {d.unique_id for d in other.documents}

    stale = xds.build_update_document_set(submission_set(), metadata_updates=[(masked, "1")])
    result = registry_result(await post(client, "/dmp/iti57", soap(xds.ACTION_ITI57, stale, pki)))
    assert result.errors[0].code == "XDSMetadataVersionError"


async def test_indirect_authentication_sees_only_its_structure(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    other_author = author(structure=OTHER_STRUCTURE, ps="899999999999")
    uid = new_oid()
    sub = iti41(
        pki,
        docs=[(metadata(uid, authors=[other_author]), cda(uid))],
        structure_id=OTHER_STRUCTURE,
        subject_id="899999999999",
    )
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    mine = await query(client, pki, xds.build_find_documents(PAT_TROIS))
    assert uid not in {d.unique_id for d in mine.documents}
    reinforced = await query(
        client, pki, xds.build_find_documents(PAT_TROIS), authentication_mode="INDIRECTE_RENFORCEE"
    )
    assert uid in {d.unique_id for d in reinforced.documents}


async def test_query_for_another_patient_than_the_vihf_is_refused(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    other = cx("1700133063101")
    resp = await post(client, "/dmp/iti18", soap(xds.ACTION_ITI18, xds.build_find_documents(other), pki))
    result = xds.parse_query_response(read(resp)[0])
    assert result.status == "Failure" and result.errors[0].code == "XDSPatientIdDoesNotMatch"


async def test_concurrent_duplicates_commit_once(client: httpx.AsyncClient, pki: TestPki) -> None:
    uid = new_oid()
    subs = [iti41(pki, docs=[(metadata(uid), cda(uid))]) for _ in range(4)]
    responses = await asyncio.gather(*(post(client, "/dmp/iti41", s.request) for s in subs))
    results = [registry_result(r) for r in responses]
    assert sum(r.ok for r in results) == 1
    assert {e.code for r in results if not r.ok for e in r.errors} == {"XDSDuplicateUniqueIdInRegistry"}


async def test_the_platform_dmp_client_works_against_the_sandbox(app: FastAPI, pki: TestPki) -> None:
    """Interop with opensegur.connectors.dmp_client: register, find, replace, delete."""
    from opensegur.connectors.dmp_client import DmpClient, DmpCredentials, DmpEndpoints, DmpIdentity
    from opensegur.flows.dmp_feed import DmpRequest

    base = "http://dmp.test/dmp"
    client = DmpClient(
        DmpEndpoints(f"{base}/iti41", f"{base}/iti18", f"{base}/iti57", f"{base}/iti43"),
        DmpCredentials(pki.signing_cert, pki.signing_key),
        DmpIdentity(oid_root="1.2.250.1.999.88"),
        transport=httpx.ASGITransport(app=app),
    )
    structure = {"idnat_struct": pki.structure_id, "settings": {"secteur_activite": "SA01"}}
    try:
        uid = new_oid()
        outcome = await client.register(DmpRequest(structure, metadata(uid), cda(uid), "I"), None)
        found = await client.find(structure, PAT_TROIS, uid)
        assert found is not None and found.entry_uuid == outcome.entry_uuid
        new_uid = new_oid()
        await client.register(DmpRequest(structure, metadata(new_uid), cda(new_uid), "I", uid), found)
        assert (await client.find(structure, PAT_TROIS, uid)) is not None  # deprecated, still there
        replacement = await client.find(structure, PAT_TROIS, new_uid)
        assert replacement is not None
        await client.delete(structure, replacement)
        assert await client.find(structure, PAT_TROIS, new_uid) is None
    finally:
        await client.aclose()
