"""The sandbox DMP takes what the DMP test platform took from the ANS DRIMbox: a KOS imaging manifest.

The metadata are those of the ANS sample publication (`ansforge/DRIM-M_DATA`, "Echantillons validateurs/Validateur
XDS/XDS.xml", as summarised in reference/digests/imaging.md §1.8), adapted only in patient, VIHF and the
signature entry: mimeType application/dicom, classCode 31, typeCode IMG-KOS, formatCode
1.2.840.10008.5.1.4.1.1.88.59, region and modality event codes, accession and study UID references, the DRIMbox
as device author — and the KOS sent as a base64 MIME part, as the sample's sender did.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from lxml import etree

from opensegur.content import jdv
from opensegur.content.xds_metadata import document_metadata
from opensegur.documents.metadata import Coded, XdsAuthor
from opensegur.imaging.kos import KosIds, build_kos
from opensegur.imaging.kos import kos_bytes as build_kos_bytes
from opensegur.imaging.report import read_imaging_report
from opensegur.imaging.study import study_from_matches
from opensegur.imaging.xdsi import KOS_FORMAT
from opensegur.imaging.xdsi import kos_metadata as build_kos_metadata
from opensegur.security.pki import TestPki, certificate_chain_pem
from opensegur.transactions import xds
from opensegur.transactions.ebrim import NS_RIM
from opensegur.transactions.ihe_ids import DE_UNIQUE_ID, SS_UNIQUE_ID
from opensegur.transactions.xades import SignedDocument, sign_submission_set
from opensegur.transport.mtom import parse_mtom
from opensegur.transport.soap import SOAP12_NS
from tests.imaging.helpers import INITIAL, exam_matches
from tests.imaging.helpers import STUDY_UID as RIS_STUDY_UID
from tests.sandbox_dmp.helpers import (
    PAT_TROIS,
    Soap,
    iti41,
    metadata,
    new_oid,
    post,
    query,
    registry_result,
    soap,
)
from tests.schemas import schema_errors

pytestmark = pytest.mark.requirement("DMP-KOS")


STUDY_UID = "1.2.250.1.999.77.7.1"


def kos_bytes(sop_instance_uid: str) -> bytes:
    """A DICOM Part 10 file header (128-byte preamble, "DICM", group 0002) naming a KOS instance."""

    def element(tag: bytes, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        return tag + vr + len(value).to_bytes(2, "little") + value

    meta = element(b"\x02\x00\x02\x00", b"UI", KOS_FORMAT.code.encode())
    meta += element(b"\x02\x00\x03\x00", b"UI", sop_instance_uid.encode())
    meta += element(b"\x02\x00\x10\x00", b"UI", b"1.2.840.10008.1.2.1")
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(meta).to_bytes(4, "little")
    return b"\0" * 128 + b"DICM" + group_length + meta


def kos_metadata(unique_id: str, **changes: object):  # type: ignore[no-untyped-def]
    ts = jdv.load_value_set(jdv.JDV_TYPE_CODE).codes["IMG-KOS"]
    m = metadata(
        unique_id,
        mime_type="application/dicom",
        class_code=jdv.CLASS_CODES["31"],
        type_code=ts,
        format_code=KOS_FORMAT,
        title="Reference d'Objets d'un Examen d'Imagerie",
        comments="KOS",
        language_code="fr-FR",
        event_codes=[
            Coded("63337009", "1.2.250.1.213.2.5", "Abdomen + pelvis"),
            Coded("MR", "1.2.250.1.213.1.1.5.618", "Résonance magnétique"),
        ],
        reference_ids=[
            "ACC2026001^^^&1.2.250.1.999.77.8&ISO^urn:ihe:iti:xds:2013:accession",
            f"{STUDY_UID}^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
        ],
        authors=[
            XdsAuthor(
                person="899711256811^DRIMBox^ANS^^^^^^&1.2.250.1.71.4.2.1&ISO^U^^^EI",
                institutions=("CH SANDBOX^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^10B0152622",),
            )
        ],
    )
    return replace(m, **changes)


def base64_parts(req: Soap) -> Soap:
    """The same request with every attachment sent ``Content-Transfer-Encoding: base64``, typed
    application/dicom for the KOS."""
    envelope, attachments = parse_mtom(req.content_type, req.body, 10_000_000)
    boundary = "ANS_" + secrets.token_hex(8)
    out = [
        f'--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n'
        "Content-Transfer-Encoding: binary\r\nContent-ID: <root@ans>\r\n\r\n".encode(),
        envelope,
    ]
    for cid, data in attachments.items():
        kind = "application/dicom" if data[128:132] == b"DICM" else "text/xml"
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
        out += [
            f"\r\n--{boundary}\r\nContent-Type: {kind}\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-ID: <{cid}>\r\n\r\n".encode(),
            encoded,
        ]
    out.append(f"\r\n--{boundary}--\r\n".encode())
    action = re.search(r'action="([^"]+)"', req.content_type)
    ct = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; start="<root@ans>"; '
        f'start-info="application/soap+xml"' + (f'; action="{action[1]}"' if action else "")
    )
    return Soap(ct, b"".join(out), envelope)


async def test_the_drimbox_kos_publication_is_accepted(
    client: httpx.AsyncClient, pki: TestPki, record_property: Callable[[str, object], None]
) -> None:
    uid = new_oid()
    sub = iti41(pki, docs=[(kos_metadata(uid), kos_bytes(uid))])
    request = base64_parts(sub.request)
    assert b"Content-Transfer-Encoding: base64" in request.body
    response = await post(client, "/dmp/iti41", request)
    # The exchange, for the conformance report: the envelope (VIHF of the test PKI, the test INS) and the answer.
    record_property("échange ITI-41 — requête (enveloppe SOAP)", request.envelope.decode("utf-8"))
    record_property("échange ITI-41 — réponse", response.text)
    result = registry_result(response)
    assert result.ok, result.errors
    inspected = (await client.get("/dmp/inspect", params={"patient": PAT_TROIS[:15]})).json()["entries"]
    [entry] = [e for e in inspected if e["uniqueId"] == uid]
    assert entry["mimeType"] == "application/dicom" and entry["typeCode"]["code"] == "IMG-KOS"


@pytest.mark.requirement("IMG-DRIMBOX-SOURCE")
@pytest.mark.skipif(not INITIAL.exists(), reason="ANS examples not available")
async def test_the_manifest_built_for_the_ris_example_is_published_and_findable(
    client: httpx.AsyncClient, pki: TestPki
) -> None:
    report = read_imaging_report(INITIAL.read_bytes())
    study = study_from_matches(exam_matches())
    sop = new_oid()
    ids = KosIds(sop, new_oid())
    now = datetime.now(UTC)
    content = build_kos_bytes(
        build_kos(study, report, ids, wado_base="https://db.test", institution="CHU-X", now=now)
    )
    report_entry = document_metadata(report.header, ipp=None, ipp_authority_oid=None)
    entry = build_kos_metadata(report_entry, report, study, sop, content)
    result = registry_result(await post(client, "/dmp/iti41", iti41(pki, docs=[(entry, content)]).request))
    assert result.ok, result.errors

    async def found(modality: str) -> list[str]:
        # What a DRIMbox consumer asks: the patient's imaging manifests of an exam of this modality.
        coded = Coded(modality, "1.2.250.1.213.1.1.5.618")
        answer = await query(client, pki, xds.build_find_documents(PAT_TROIS, event_codes=[coded]))
        return [d.unique_id for d in answer.documents if d.mime_type == "application/dicom"]

    assert await found("MR") == [sop] and await found("CT") == []
    [stored] = (await query(client, pki, xds.build_get_documents(unique_ids=[sop]))).documents
    assert stored.size == len(content) and any(RIS_STUDY_UID in r for r in stored.reference_ids)


@pytest.mark.parametrize(
    ("change", "content", "code", "message"),
    [
        ({"mime_type": "text/xml"}, None, "XDSRegistryMetadataError", "mimeType"),
        ({"format_code": None}, None, "XDSRegistryMetadataError", "mimeType"),
        ({}, b"<ClinicalDocument/>", "XDSRepositoryMetadataError", "DICM"),
    ],
    ids=["kos-as-text-xml", "dicom-with-a-cda-format", "dicom-that-is-not-dicom"],
)
async def test_what_the_dmp_refuses_of_a_manifest(
    client: httpx.AsyncClient,
    pki: TestPki,
    change: dict[str, object],
    content: bytes | None,
    code: str,
    message: str,
) -> None:
    uid = new_oid()
    if change.get("format_code", 1) is None:
        change = {"format_code": jdv.format_code_for_templates(["1.2.250.1.213.1.1.1.29"])}
    # Signed only when the content is what its mimeType says (a KOS cannot be canonicalised as XML): the DMP
    # checks the metadata before the signature.
    signable = change.get("mime_type", "application/dicom") == "application/dicom"
    sub = iti41(pki, docs=[(kos_metadata(uid, **change), content or kos_bytes(uid))], sign=signable)
    result = registry_result(await post(client, "/dmp/iti41", sub.request))
    assert not result.ok
    assert result.errors[0].code == code and message in result.errors[0].context


ANS_SAMPLE = Path(__file__).parents[1] / "samples" / "ans-drim-m" / "XDS.xml"
ANS_PATIENT = "162018885045327^^^&1.2.250.1.213.1.4.10&ISO"
R = f"{{{NS_RIM}}}"


def ans_publication(pki: TestPki, kos: bytes) -> Soap:
    """The ANS sample publication, adapted only where it must be: our test patient instead of the ANS one, our
    VIHF instead of its placeholder one (``XXXXXXX`` certificate and structure), a KOS and a signature entry whose
    hash and size are those of the content we send (the sample's two entries carry the hash of an absent file)."""
    envelope = etree.parse(
        str(ANS_SAMPLE), etree.XMLParser(resolve_entities=False, no_network=True)
    ).getroot()
    body = envelope.find(f"{{{SOAP12_NS}}}Body/{{{xds.NS_XDSB}}}ProvideAndRegisterDocumentSetRequest")
    assert body is not None
    ours = PAT_TROIS.rsplit("^", 1)[0]
    for el in body.iter(f"{R}Value", f"{R}ExternalIdentifier"):
        if el.text and ANS_PATIENT in el.text:
            el.text = el.text.replace(ANS_PATIENT, ours)
        if ANS_PATIENT in el.get("value", ""):
            el.set("value", el.get("value", "").replace(ANS_PATIENT, ours))
    ids = {e.get("identificationScheme"): e.get("value") for e in body.iter(f"{R}ExternalIdentifier")}
    entries = {e.get("id"): e for e in body.iter(f"{R}ExtrinsicObject")}
    kos_uid = entries["DocumentKOS"].find(f"{R}ExternalIdentifier[@identificationScheme='{DE_UNIQUE_ID}']")
    assert kos_uid is not None
    signature = sign_submission_set(
        ids[SS_UNIQUE_ID] or "",
        [SignedDocument(kos_uid.get("value", ""), kos, "application/dicom")],
        pki.signing_key.read_bytes(),
        certificate_chain_pem(pki),
        signature_id=new_oid(),
    )
    for entry_id, content in (("DocumentKOS", kos), ("Signature01", signature)):
        for slot in entries[entry_id].findall(f"{R}Slot"):
            value = slot.find(f"{R}ValueList/{R}Value")
            assert value is not None
            if slot.get("name") == "hash":
                value.text = hashlib.sha1(content).hexdigest()
            elif slot.get("name") == "size":
                value.text = str(len(content))
    return soap(xds.ACTION_ITI41, body, pki, attachments={"0.2": kos, "0.3": signature})


async def test_the_ans_sample_publication_itself_is_accepted(client: httpx.AsyncClient, pki: TestPki) -> None:
    """`ansforge/DRIM-M_DATA` "Echantillons validateurs/Validateur XDS/XDS.xml", which the ANS reports as accepted
    by the DMP test platform. It is not valid against rim.xsd (its referenceIdList and URI slots follow the
    classifications), so the sandbox reads slots wherever they sit, as the DMP did."""
    kos = kos_bytes("1.3.2.751468943.3.1234.16461.231103161723.1.1.1")
    request = base64_parts(ans_publication(pki, kos))
    body = etree.fromstring(request.envelope).find(f"{{{SOAP12_NS}}}Body")
    assert body is not None and any("Slot" in e for e in schema_errors(body[0], {"0.2": kos, "0.3": b""}))
    result = registry_result(await post(client, "/dmp/iti41", request))
    assert result.ok, result.errors
    inspected = (await client.get("/dmp/inspect", params={"patient": PAT_TROIS[:15]})).json()["entries"]
    [entry] = [e for e in inspected if e["uniqueId"] == "1.3.2.751468943.3.1234.16461.231103161723.1.1.1"]
    assert entry["mimeType"] == "application/dicom" and entry["typeCode"]["code"] == "IMG-KOS"
