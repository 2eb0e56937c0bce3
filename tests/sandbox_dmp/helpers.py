"""Build DMP requests exactly as a client does (xds / vihf / xades / mtom builders) and read the answers."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, replace
from typing import Any

import httpx
from lxml import etree

from opensegur.content import jdv
from opensegur.documents.metadata import Coded, DocumentMetadata, SubmissionSetMetadata, XdsAuthor
from opensegur.identity.ins import nir_key
from opensegur.security.pki import DEFAULT_STRUCTURE_ID, TestPki, certificate_chain_pem
from opensegur.transactions import xds
from opensegur.transactions.vihf import VihfContext, build_vihf, wsse_security_header
from opensegur.transactions.xades import SignedDocument, sign_submission_set
from opensegur.transport.mtom import build_mtom, parse_mtom
from opensegur.transport.soap import SoapFaultError, envelope, parse_envelope, wsa_headers

PAT_TROIS = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
PS_ID = "810000000001"
OTHER_STRUCTURE = "1020000000007"
OID_ROOT = "1.2.250.1.999.77"
_counter = iter(range(1, 10**9))


def cx(number13: str, oid: str = "1.2.250.1.213.1.4.10") -> str:
    return f"{number13}{nir_key(number13):02d}^^^&{oid}&ISO^NH"


def new_oid() -> str:
    return f"{OID_ROOT}.{uuid.uuid4().int % 10**12}.{next(_counter)}"


def cda(unique_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><!-- signed with comments -->'
        f'<id root="{unique_id}"/><title>Lettre de liaison</title></ClinicalDocument>'
    ).encode()


def author(structure: str = DEFAULT_STRUCTURE_ID, ps: str = PS_ID) -> XdsAuthor:
    spec = jdv.load_value_set(jdv.JDV_AUTHOR_SPECIALTY).codes["G15_10/SM26"]
    return XdsAuthor(
        person=f"{ps}^MEDECIN^Alice^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        institutions=(f"CH SANDBOX^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^{structure}",),
        specialties=(f"{spec.code}^{spec.display}^{spec.scheme}",),
    )


def metadata(unique_id: str, patient: str = PAT_TROIS, **changes: Any) -> DocumentMetadata:
    """Document metadata whose codes come from the vendored JDV files (as the content layer derives them)."""
    type_code = jdv.load_value_set(jdv.JDV_TYPE_CODE).codes["11490-0"]
    class_code = jdv.class_code_for_type("11490-0")
    format_code = jdv.format_code_for_templates(["1.2.250.1.213.1.1.1.29"])
    assert class_code is not None and format_code is not None
    m = DocumentMetadata(
        unique_id=unique_id,
        patient_id=patient,
        mime_type="text/xml",
        class_code=class_code,
        type_code=type_code,
        format_code=format_code,
        healthcare_facility_type_code=jdv.load_value_set(jdv.JDV_HEALTHCARE_FACILITY).codes["SA01"],
        practice_setting_code=jdv.load_value_set(jdv.JDV_PRACTICE_SETTING).codes["ETABLISSEMENT"],
        confidentiality_codes=[jdv.load_value_set(jdv.JDV_CONFIDENTIALITY).codes["N"]],
        creation_time="20260301101500",
        title="Lettre de liaison à la sortie",
        authors=[author()],
        source_patient_id="123456^^^&1.2.250.1.999.1&ISO^PI",
        source_patient_info=["PID-5|PAT-TROIS^DOMINIQUE^^^^^L", "PID-7|19790328", "PID-8|F"],
    )
    return replace(m, **changes)


def submission_set(patient: str = PAT_TROIS, **changes: Any) -> SubmissionSetMetadata:
    ct = jdv.content_type_code_for_patient_class("I")
    assert ct is not None
    ss = SubmissionSetMetadata(
        unique_id=new_oid(),
        source_id=OID_ROOT,
        patient_id=patient,
        content_type_code=ct,
        submission_time=dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"),
        authors=[author()],
        title="Lot de test",
    )
    return replace(ss, **changes)


def vihf_context(patient: str = PAT_TROIS, **changes: Any) -> VihfContext:
    ctx = VihfContext(
        subject_id=PS_ID,
        subject_name="OpenSégur PFI, 0.1, flux DMP",
        roles=[Coded("AUTOMATE", "1.2.250.1.213.1.1.4.6", "Automate")],
        structure_id=DEFAULT_STRUCTURE_ID,
        secteur_activite="SA01",
        patient_ins=patient,
        lps_name="OpenSégur",
        lps_version="0.1.0",
        lps_homologation_id="SANDBOX-TEST",
    )
    for k, v in changes.items():
        setattr(ctx, k, v)
    return ctx


@dataclass
class Soap:
    content_type: str
    body: bytes
    envelope: bytes


def soap(
    action: str,
    body: etree._Element,
    pki: TestPki | None,
    *,
    patient: str = PAT_TROIS,
    attachments: dict[str, bytes] | None = None,
    vihf: etree._Element | None = None,
    vihf_now: dt.datetime | None = None,
    mtom: bool = True,
    **vihf_changes: Any,
) -> Soap:
    """SOAP 1.2 request with WS-Addressing and the VIHF (signed by ``pki``; none when ``pki`` is None)."""
    headers = wsa_headers(action, to="http://dmp.test/")
    if vihf is None and pki is not None:
        vihf = build_vihf(
            vihf_context(patient, **vihf_changes),
            pki.signing_key.read_bytes(),
            certificate_chain_pem(pki),
            now=vihf_now,
        )
    if vihf is not None:
        headers.append(wsse_security_header(vihf))
    env = envelope(body, headers)
    if not mtom:
        return Soap(f'application/soap+xml; charset=utf-8; action="{action}"', env, env)
    ct, chunks = build_mtom(env, attachments or {}, action=action)
    return Soap(ct, b"".join(chunks), env)


@dataclass
class Submission:
    request: Soap
    documents: list[DocumentMetadata]
    submission_set: SubmissionSetMetadata
    contents: list[bytes]


def iti41(
    pki: TestPki,
    *,
    patient: str = PAT_TROIS,
    docs: list[tuple[DocumentMetadata, bytes]] | None = None,
    replaces: dict[str, str] | None = None,
    sign: bool = True,
    signer: TestPki | None = None,
    signed_contents: list[bytes] | None = None,
    vihf_pki: TestPki | None = None,
    action: str = xds.ACTION_ITI41,
    **vihf_changes: Any,
) -> Submission:
    """A full signed ITI-41 for one CDA (or ``docs``), as the platform's DMP client sends it."""
    if docs is None:
        uid = new_oid()
        docs = [(metadata(uid, patient), cda(uid))]
    ss = submission_set(patient)
    signature = None
    if sign:
        signing = signer or pki
        contents = signed_contents or [c for _m, c in docs]
        signature = sign_submission_set(
            ss.unique_id,
            [SignedDocument(m.unique_id, c, m.mime_type) for (m, _c), c in zip(docs, contents, strict=True)],
            signing.signing_key.read_bytes(),
            certificate_chain_pem(signing),
            signature_id=new_oid(),
        )
    for m, _c in docs:
        m.entry_uuid = m.entry_uuid or f"urn:uuid:{uuid.uuid4()}"
    body, attachments = xds.build_provide_and_register(ss, docs, replaces=replaces, signature=signature)
    req = soap(action, body, vihf_pki or pki, patient=patient, attachments=attachments, **vihf_changes)
    return Submission(req, [m for m, _c in docs], ss, [c for _m, c in docs])


async def post(client: httpx.AsyncClient, path: str, req: Soap) -> httpx.Response:
    return await client.post(path, content=req.body, headers={"Content-Type": req.content_type})


def read(resp: httpx.Response) -> tuple[etree._Element, dict[str, bytes]]:
    env, parts = parse_mtom(resp.headers["content-type"], resp.content, 200_000_000)
    _headers, body = parse_envelope(env)
    return body, parts


def registry_result(resp: httpx.Response) -> xds.RegistryResult:
    assert resp.status_code == 200, resp.text[:500]
    body, _ = read(resp)
    return xds.parse_registry_response(body)


def soap_fault(resp: httpx.Response) -> SoapFaultError:
    try:
        read(resp)
    except SoapFaultError as exc:
        return exc
    raise AssertionError(f"no SOAP fault in HTTP {resp.status_code}: {resp.text[:300]}")


async def query(
    client: httpx.AsyncClient, pki: TestPki, body: etree._Element, patient: str = PAT_TROIS, **vihf: Any
) -> xds.QueryResult:
    resp = await post(client, "/dmp/iti18", soap(xds.ACTION_ITI18, body, pki, patient=patient, **vihf))
    assert resp.status_code == 200, resp.text[:500]
    return xds.parse_query_response(read(resp)[0])
