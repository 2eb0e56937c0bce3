"""The DMP sandbox refuses what the real DMP refuses, with the codes documented in opensegur.sandbox.dmp.app."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest
from lxml import etree

from opensegur.documents.metadata import Coded
from opensegur.identity.ins import nir_key
from opensegur.sandbox.dmp.patients import CLOSED_NUMBER, NO_DMP_NUMBER, OPPOSED_NUMBER
from opensegur.security.pki import TestPki, certificate_chain_pem
from opensegur.transactions import xds
from opensegur.transactions.vihf import NS_SAML, build_vihf
from tests.sandbox_dmp.helpers import (
    PAT_TROIS,
    Soap,
    cda,
    cx,
    iti41,
    metadata,
    new_oid,
    post,
    registry_result,
    soap,
    soap_fault,
    vihf_context,
)


async def _failure(client: httpx.AsyncClient, req: Soap) -> xds.XdsErrorInfo:
    result = registry_result(await post(client, "/dmp/iti41", req))
    assert result.status == "Failure"
    assert len(result.errors) == 1
    return result.errors[0]


@pytest.mark.parametrize(
    ("number", "code"),
    [
        (NO_DMP_NUMBER, "XDSUnknownPatientId"),
        (CLOSED_NUMBER, "DMP_SBX_DMP_FERME"),
        (OPPOSED_NUMBER, "DMP_SBX_OPPOSITION"),
    ],
)
async def test_patient_dmp_state(client: httpx.AsyncClient, pki: TestPki, number: str, code: str) -> None:
    patient = cx(number)
    err = await _failure(client, iti41(pki, patient=patient).request)
    assert err.code == code


@pytest.mark.requirement("DMP-PATIENT-FIXTURES")
async def test_an_ins_not_in_the_fixture_list_has_no_dmp_whatever_its_oid(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    for oid in ("1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.10"):
        unknown = cx("1551275123456", oid)
        assert (await _failure(client, iti41(pki, patient=unknown).request)).code == "XDSUnknownPatientId"
    # A test declares the patient's DMP, as another editor's CI would: then it is fed.
    declared = await client.put(
        "/dmp/_admin/patients",
        json={"matricule": cx("1551275123456")[:15], "oid": "1.2.250.1.213.1.4.10", "name": "DÉCLARÉ PAUL"},
    )
    assert declared.status_code == 200 and declared.json()["dmp"] == "OUVERT"
    result = registry_result(
        await post(client, "/dmp/iti41", iti41(pki, patient=cx("1551275123456")).request)
    )
    assert result.ok, result.errors
    listed = (await client.get("/dmp/_admin/patients")).json()
    assert {"patient": cx("1551275123456")[:15], "oid": "1.2.250.1.213.1.4.10"}.items() <= next(
        p for p in listed if p["name"] == "DÉCLARÉ PAUL"
    ).items()
    closed = await client.put(
        "/dmp/_admin/patients",
        json={"matricule": cx("1551275123456")[:15], "oid": "1.2.250.1.213.1.4.10", "status": "FERME"},
    )
    assert closed.status_code == 200
    assert (
        await _failure(client, iti41(pki, patient=cx("1551275123456")).request)
    ).code != "XDSUnknownPatientId"
    bad_key = await client.put(
        "/dmp/_admin/patients", json={"matricule": "155127512345600", "oid": "1.2.250.1.213.1.4.10"}
    )
    assert bad_key.status_code == 422 and "INS refusé" in bad_key.json()["detail"]
    # An INSi qualification identity is known under its production OID too.
    insi = cx("2751263220749", "1.2.250.1.213.1.4.8")
    assert registry_result(await post(client, "/dmp/iti41", iti41(pki, patient=insi).request)).ok


async def test_bad_nir_key_is_a_metadata_error(client: httpx.AsyncClient, pki: TestPki) -> None:
    good_key = nir_key("2790351215189")
    bad = f"2790351215189{(good_key + 1) % 100:02d}^^^&1.2.250.1.213.1.4.10&ISO^NH"
    err = await _failure(client, iti41(pki, patient=bad).request)
    assert err.code == "XDSRegistryMetadataError"
    assert "Clé NIR invalide" in err.context


async def test_non_ins_oid_is_refused(client: httpx.AsyncClient, pki: TestPki) -> None:
    patient = "279035121518989^^^&1.2.250.1.999.1&ISO^NH"
    resp = await post(client, "/dmp/iti41", iti41(pki, patient=patient).request)
    # The VIHF already names a non-INS authority: a security refusal before the metadata is read.
    assert soap_fault(resp).subcode == "VIHF_INS"


async def test_submission_patient_must_be_the_vihf_patient(client: httpx.AsyncClient, pki: TestPki) -> None:
    sub = iti41(pki, patient_ins=cx("1700133063101"))
    assert (await _failure(client, sub.request)).code == "XDSPatientIdDoesNotMatch"


async def test_code_outside_the_jdv_names_slot_and_value(client: httpx.AsyncClient, pki: TestPki) -> None:
    uid = new_oid()
    bad_type = metadata(uid, type_code=Coded("99999-9", "2.16.840.1.113883.6.1", "Inventé"))
    err = await _failure(client, iti41(pki, docs=[(bad_type, cda(uid))]).request)
    assert err.code == "XDSRegistryMetadataError"
    assert "typeCode 99999-9^^2.16.840.1.113883.6.1" in err.context

    uid = new_oid()
    bad_facility = metadata(uid, healthcare_facility_type_code=Coded("SA01", "1.2.3"))
    err = await _failure(client, iti41(pki, docs=[(bad_facility, cda(uid))]).request)
    assert "healthcareFacilityTypeCode SA01^^1.2.3" in err.context

    uid = new_oid()
    bad_conf = metadata(uid, confidentiality_codes=[Coded("MASQUE_PS", "1.2.250.1.213.1.1.4.13")])
    err = await _failure(client, iti41(pki, docs=[(bad_conf, cda(uid))]).request)
    assert "exactement un code N, R ou V" in err.context

    uid = new_oid()
    bad_format = metadata(uid, format_code=Coded("urn:example:none", "1.3.6.1.4.1.19376.1.2.3"))
    err = await _failure(client, iti41(pki, docs=[(bad_format, cda(uid))]).request)
    assert "formatCode urn:example:none" in err.context


async def test_missing_signature_entry(client: httpx.AsyncClient, pki: TestPki) -> None:
    err = await _failure(client, iti41(pki, sign=False).request)
    assert err.code == "XDSRegistryMetadataError"
    assert "non signé" in err.context and "1.3.6.1.4.1.19376.1.2.1.1.1" in err.context


async def test_signature_not_matching_the_documents(client: httpx.AsyncClient, pki: TestPki) -> None:
    uid = new_oid()
    sub = iti41(pki, docs=[(metadata(uid), cda(uid))], signed_contents=[cda(uid) + b"<!-- altered -->"])
    err = await _failure(client, sub.request)
    assert err.code == "XDSRegistryMetadataError" and "digest mismatch" in err.context


async def test_signature_by_an_untrusted_ca(
    client: httpx.AsyncClient, pki: TestPki, rogue_pki: TestPki
) -> None:
    err = await _failure(client, iti41(pki, signer=rogue_pki).request)
    assert err.code == "XDSRegistryMetadataError" and "untrusted" in err.context


async def test_hash_and_size_mismatch(client: httpx.AsyncClient, pki: TestPki) -> None:
    uid = new_oid()
    wrong_hash = metadata(uid, hash_sha1="0" * 40)
    err = await _failure(client, iti41(pki, docs=[(wrong_hash, cda(uid))]).request)
    assert err.code == "XDSRepositoryMetadataError"
    uid = new_oid()
    wrong_size = metadata(uid, size=3)
    err = await _failure(client, iti41(pki, docs=[(wrong_size, cda(uid))]).request)
    assert err.code == "XDSRepositoryMetadataError"


async def test_missing_vihf(client: httpx.AsyncClient, pki: TestPki) -> None:
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), None)
    resp = await post(client, "/dmp/iti18", req)
    assert resp.status_code == 400
    f = soap_fault(resp)
    assert f.code == "Sender" and f.subcode == "VIHF_ABSENT"


async def test_tampered_vihf(client: httpx.AsyncClient, pki: TestPki) -> None:
    vihf = build_vihf(vihf_context(), pki.signing_key.read_bytes(), certificate_chain_pem(pki))
    name_id = vihf.find(f"{{{NS_SAML}}}Subject/{{{NS_SAML}}}NameID")
    assert name_id is not None
    name_id.text = "899999999999"  # impersonate another professional after signing
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), None, vihf=vihf)
    assert soap_fault(await post(client, "/dmp/iti18", req)).subcode == "VIHF_SIGNATURE"


async def test_vihf_from_another_ca(client: httpx.AsyncClient, rogue_pki: TestPki) -> None:
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), rogue_pki)
    assert soap_fault(await post(client, "/dmp/iti18", req)).subcode == "VIHF_CERTIFICAT"


async def test_expired_vihf(client: httpx.AsyncClient, pki: TestPki) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), pki, vihf_now=old)
    assert soap_fault(await post(client, "/dmp/iti18", req)).subcode == "VIHF_EXPIRE"


async def test_direct_mode_with_a_structure_certificate(client: httpx.AsyncClient, pki: TestPki) -> None:
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), pki, authentication_mode="DIRECTE")
    assert soap_fault(await post(client, "/dmp/iti18", req)).subcode == "VIHF_MODE"


async def test_action_must_match_the_endpoint(client: httpx.AsyncClient, pki: TestPki) -> None:
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), pki)
    resp = await post(client, "/dmp/iti41", req)
    assert resp.status_code == 400
    assert soap_fault(resp).subcode == "wsa:ActionMismatch"
    # The ANS kit's ITI-41 action is accepted as well as the IHE one.
    kit = iti41(pki, action="urn:ihe:iti:xds-b:2007:ProvideAndRegisterDocumentSet-b")
    assert registry_result(await post(client, "/dmp/iti41", kit.request)).ok
    # A Content-Type action contradicting wsa:Action is refused.
    sub = iti41(pki)
    ct = sub.request.content_type.replace(xds.ACTION_ITI41, xds.ACTION_ITI18)
    resp = await client.post("/dmp/iti41", content=sub.request.body, headers={"Content-Type": ct})
    assert soap_fault(resp).subcode == "wsa:ActionMismatch"


_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body>&lol2;</soap:Body></soap:Envelope>"""
_XXE = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body><a>&xxe;</a></soap:Body></soap:Envelope>"""


@pytest.mark.parametrize("payload", [_BOMB, _XXE], ids=["bomb", "xxe"])
async def test_unsafe_xml_is_a_sender_fault(client: httpx.AsyncClient, payload: bytes) -> None:
    resp = await client.post(
        "/dmp/iti41", content=payload, headers={"Content-Type": "application/soap+xml; charset=utf-8"}
    )
    assert resp.status_code == 400
    f = soap_fault(resp)
    assert f.code == "Sender" and f.subcode == "XML_NON_SUR"
    assert b"root:" not in resp.content


async def test_malformed_mtom_and_xml(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/dmp/iti41", content=b"--x\r\n", headers={"Content-Type": 'multipart/related; boundary="nope"'}
    )
    assert soap_fault(resp).subcode == "MTOM_INVALIDE"
    resp = await client.post("/dmp/iti18", content=b"<a>", headers={"Content-Type": "application/soap+xml"})
    assert soap_fault(resp).subcode == "XML_INVALIDE"


async def test_unknown_must_understand_header(client: httpx.AsyncClient, pki: TestPki) -> None:
    req = soap(xds.ACTION_ITI18, xds.build_find_documents(PAT_TROIS), pki)
    root = etree.fromstring(req.envelope)
    header = root.find("{http://www.w3.org/2003/05/soap-envelope}Header")
    assert header is not None
    extra = etree.SubElement(header, "{urn:example}Unknown")
    extra.set("{http://www.w3.org/2003/05/soap-envelope}mustUnderstand", "true")
    raw = etree.tostring(root)
    resp = await client.post("/dmp/iti18", content=raw, headers={"Content-Type": "application/soap+xml"})
    assert soap_fault(resp).code == "MustUnderstand"


async def test_symbolic_ids_are_replaced_by_uuids(client: httpx.AsyncClient, pki: TestPki) -> None:
    uid = new_oid()
    m = metadata(uid, entry_uuid="Document01")
    sub = iti41(pki, docs=[(m, cda(uid))])
    assert registry_result(await post(client, "/dmp/iti41", sub.request)).ok
    resp = await client.get("/dmp/inspect", params={"patient": PAT_TROIS[:15]})
    entry = next(e for e in resp.json()["entries"] if e["uniqueId"] == uid)
    assert uuid.UUID(entry["entryUUID"].removeprefix("urn:uuid:"))
