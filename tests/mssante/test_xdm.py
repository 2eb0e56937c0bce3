from __future__ import annotations

import io
import stat
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from lxml import etree

from opensegur.transactions.ebrim import NS_RIM
from opensegur.transactions.ihe_ids import (
    DE_CONFIDENTIALITY,
    DE_LIMITED_METADATA,
    SS_CONTENT_TYPE,
)
from opensegur.transactions.xdm import (
    METADATA_PATH,
    XdmError,
    XdmOrigin,
    _inflate,
    build_xdm,
    cda_unique_id,
    intended_recipient,
    read_xdm,
    readme_text,
)
from tests.ebrim_forms import as_ebrim21, hoist, short_association_types
from tests.mssante.conftest import (
    DOC_ID,
    INS,
    INS_OID_TEST,
    MSS_EXAMPLES,
    OTHER_INS,
    metadata_for,
    other_patient_cda,
    package,
)
from tests.schemas import schema_errors

DOC = "IHE_XDM/SUBSET01/DOC0001.XML"


def rezip(
    data: bytes, replace: dict[str, bytes] | None = None, extra: list[tuple[zipfile.ZipInfo, bytes]] = ()
) -> bytes:
    replace = replace or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, replace.get(info.filename, src.read(info)))
        for info, content in extra:
            dst.writestr(info, content)
    return out.getvalue()


def member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


def code_of(exc: pytest.ExceptionInfo[XdmError]) -> str:
    return exc.value.code


# ------------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    "path",
    [
        MSS_EXAMPLES / "Transmission initiale MDM" / "CR_Radio_CDAN1_v1.XML",
        MSS_EXAMPLES / "Remplacement MDM" / "CR_Radio_CDAN1_v2.XML",
    ],
    ids=["initial", "replacement"],
)
def test_round_trip_of_the_mss_volet_examples(path) -> None:  # type: ignore[no-untyped-def]
    raw = path.read_bytes()
    data = package(raw)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["README.TXT", "INDEX.HTM", METADATA_PATH, DOC]
        assert b"DOC0001.XML" in zf.read("INDEX.HTM")
        metadata = zf.read(METADATA_PATH)
    assert b'<rim:Slot name="URI"><rim:ValueList><rim:Value>DOC0001.XML</rim:Value>' in metadata
    pkg = read_xdm(data)
    assert len(pkg.documents) == 1
    doc = pkg.documents[0]
    assert doc.content == raw
    assert doc.metadata.size == len(raw)
    assert doc.cda is not None and doc.cda.patient.ins_matricule == INS
    assert pkg.patient_id == f"{INS}^^^&{INS_OID_TEST}&ISO^NH"
    assert pkg.readme is not None and pkg.readme.startswith("OpenSégur")


def test_metadata_reads_back_as_built(cda: bytes) -> None:
    m, ss = metadata_for(cda)
    data = build_xdm(ss, [(m, cda)], readme_text="r", index_html_title="t")
    got = read_xdm(data).documents[0].metadata
    assert (got.unique_id, got.type_code, got.class_code, got.hash_sha1) == (
        m.unique_id,
        m.type_code,
        m.class_code,
        m.hash_sha1,
    )
    assert got.entry_uuid == m.entry_uuid


@pytest.mark.requirement("XDS-SCHEMAS")
def test_metadata_xml_is_schema_valid(cda: bytes) -> None:
    m, ss = metadata_for(cda)
    with zipfile.ZipFile(io.BytesIO(build_xdm(ss, [(m, cda)], readme_text="r", index_html_title="t"))) as zf:
        metadata = etree.fromstring(zf.read(METADATA_PATH))
    assert schema_errors(metadata) == []


def test_build_refuses_two_patients(cda: bytes) -> None:
    m1, ss = metadata_for(cda)
    m2, _ = metadata_for(other_patient_cda(cda))
    with pytest.raises(ValueError, match="submission set patient"):
        build_xdm(ss, [(m1, cda), (m2, other_patient_cda(cda))], readme_text="r", index_html_title="t")


def test_build_refuses_a_stale_hash(cda: bytes) -> None:
    m, ss = metadata_for(cda)
    m.hash_sha1 = "00" * 20
    with pytest.raises(ValueError, match="hash"):
        build_xdm(ss, [(m, cda)], readme_text="r", index_html_title="t")


# ------------------------------------------------------------------------------------------------------------
# Hostile archives


def _deflate_zeros(total: int, chunk: int = 1 << 20) -> bytes:
    """Raw deflate of ``total`` zero bytes without compressing them all: after a full flush the compressor state
    is reset, so every further chunk compresses to the same bytes and can be repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero = bytes(chunk)
    first = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    steady = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    last = c.compress(zero) + c.flush()
    return first + steady * (total // chunk - 2) + last


def _single_member_zip(name: str, stream: bytes, declared_size: int, crc: int = 0) -> bytes:
    n = name.encode()
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream), declared_size, len(n), 0
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 20, 20, 0, 8, 0, 0x21, crc, len(stream), declared_size,
        len(n), 0, 0, 0, 0, (stat.S_IFREG | 0o644) << 16, 0,
    )  # fmt: skip
    body = local + n + stream
    cd = central + n
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), len(body), 0)
    return body + cd + eocd


@pytest.fixture(scope="module")
def gigabyte_of_zeros() -> bytes:
    stream = _deflate_zeros(1 << 30)
    # Sanity: the stream really inflates to 1 GiB (checked in bounded memory).
    d = zlib.decompressobj(-15)
    total, pos = 0, 0
    while pos < len(stream):
        total += len(d.decompress(stream[pos : pos + 65536], 1 << 20))
        while d.unconsumed_tail:
            total += len(d.decompress(d.unconsumed_tail, 1 << 20))
        pos += 65536
    assert total == 1 << 30
    return stream


def test_zip_bomb_is_refused_without_inflating_it(gigabyte_of_zeros: bytes) -> None:
    data = _single_member_zip(DOC, gigabyte_of_zeros, 1 << 30)
    assert len(data) < 1_200_000  # deflate tops out near 1:1032, so 1 GiB needs ~1 MB, not 10 KB
    tracemalloc.start()
    try:
        with pytest.raises(XdmError) as exc:
            read_xdm(data, max_total=2 << 30, max_ratio=100, max_files=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code_of(exc) == "XDM_ZIP_BOMB"
    assert peak < 20_000_000


def test_zip_bomb_under_a_lying_header_stops_at_the_declared_size(gigabyte_of_zeros: bytes) -> None:
    # The central directory claims 5 MB (ratio 5:1, total well under the limit): only the streamed bytes count.
    data = _single_member_zip(DOC, gigabyte_of_zeros, 5_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(XdmError) as exc:
            read_xdm(data, max_total=100_000_000, max_ratio=100, max_files=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code_of(exc) == "XDM_CORRUPT"  # CRC of the truncated content
    assert peak < 30_000_000


def test_declared_total_over_the_limit(gigabyte_of_zeros: bytes) -> None:
    data = _single_member_zip(DOC, gigabyte_of_zeros, 1 << 30)
    with pytest.raises(XdmError) as exc:
        read_xdm(data, max_total=100_000_000, max_ratio=10_000, max_files=10)
    assert code_of(exc) == "XDM_TOO_LARGE"


def test_streaming_budget_is_enforced_while_inflating() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member("A.BIN"), bytes(3_000_000))
    with zipfile.ZipFile(out) as zf, pytest.raises(XdmError) as exc:
        _inflate(zf, zf.infolist()[0], 1_000_000, 1e9, 1_000_000)
    assert code_of(exc) == "XDM_TOO_LARGE"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../../etc/cron.d/x", "XDM_PATH_TRAVERSAL"),
        ("IHE_XDM/SUBSET01/../../x", "XDM_PATH_TRAVERSAL"),
        ("/etc/passwd", "XDM_PATH_TRAVERSAL"),
        ("C:/Windows/x.dll", "XDM_PATH_TRAVERSAL"),
        ("IHE_XDM\\SUBSET01\\..\\..\\x", "XDM_PATH_TRAVERSAL"),
        ("C:\\Windows\\x.dll", "XDM_PATH_TRAVERSAL"),
        ("IHE_XDM/SUBSET01/\x01x", "XDM_PATH_INVALID"),
        ("IHE_XDM//x", "XDM_PATH_TRAVERSAL"),
    ],
)
def test_hostile_paths(xdm: bytes, name: str, code: str) -> None:
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, extra=[(member(name), b"x")]))
    assert code_of(exc) == code


def test_symlink_refused(xdm: bytes) -> None:
    link = zipfile.ZipInfo("IHE_XDM/SUBSET01/LINK")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, extra=[(link, b"/etc/passwd")]))
    assert code_of(exc) == "XDM_SYMLINK"


def test_duplicate_names_refused_case_insensitively(xdm: bytes) -> None:
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, extra=[(member("readme.txt"), b"second")]))
    assert code_of(exc) == "XDM_DUPLICATE_NAME"


def _set_encrypted_flag(data: bytes, name: str) -> bytes:
    """zipfile clears flag_bits on write, so the "encrypted" bit is set in the bytes (local + central headers)."""
    buf = bytearray(data)
    n = name.encode()
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        pos = buf.find(sig + b"")
        while pos != -1:
            if buf[pos + name_at : pos + name_at + len(n)] == n:
                buf[pos + flag_at] |= 0x1
            pos = buf.find(sig, pos + 4)
    return bytes(buf)


def test_encrypted_member_refused(xdm: bytes) -> None:
    name = "IHE_XDM/SUBSET01/SECRET.BIN"
    data = _set_encrypted_flag(rezip(xdm, extra=[(member(name), b"cipher")]), name)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.getinfo(name).flag_bits & 0x1
    with pytest.raises(XdmError) as exc:
        read_xdm(data)
    assert code_of(exc) == "XDM_ENCRYPTED"


@pytest.mark.parametrize("name", ["IHE_XDM/SUBSET01/INNER.ZIP", "IHE_XDM/SUBSET01/DATA.BIN"])
def test_nested_archive_refused(xdm: bytes, name: str) -> None:
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, extra=[(member(name), xdm)]))
    assert code_of(exc) == "XDM_NESTED_ARCHIVE"


def test_too_many_members(xdm: bytes) -> None:
    extra = [(member(f"IHE_XDM/SUBSET01/F{i:04d}.TXT"), b"x") for i in range(20)]
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, extra=extra), max_files=10)
    assert code_of(exc) == "XDM_TOO_MANY_FILES"


def test_not_a_zip() -> None:
    with pytest.raises(XdmError) as exc:
        read_xdm(b"%PDF-1.4 definitely not a zip")
    assert code_of(exc) == "XDM_NOT_ZIP"


def test_metadata_with_external_entity(xdm: bytes) -> None:
    evil = (
        b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
        b'<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">&e;'
        b"</lcm:SubmitObjectsRequest>"
    )
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, replace={METADATA_PATH: evil}))
    assert code_of(exc) == "XDM_METADATA_UNSAFE"


@pytest.mark.requirement("XDM-TOLERANT")
def test_metadata_missing(xdm: bytes) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xdm)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != METADATA_PATH:
                dst.writestr(info.filename, src.read(info))
    package = read_xdm(out.getvalue())
    assert [cda_unique_id(d.cda) for d in package.documents if d.cda] == [DOC_ID]
    assert package.documents[0].metadata is None and package.submission_set is None
    assert package.patient_id == f"{INS}^^^&{INS_OID_TEST}&ISO^NH"
    assert package.warnings == [
        "METADATA.XML absent de l'archive : documents identifiés par leur en-tête CDA"
    ]


ANS_METADATA = Path(__file__).parents[1] / "samples" / "ans-drim-m" / "METADATA.XML"


@pytest.mark.requirement("XDM-TOLERANT")
def test_the_ans_informative_metadata_is_not_xml_and_the_cda_is_still_read(xdm: bytes) -> None:
    """`ansforge/DRIM-M_DATA` "informatif/XDM/KA202401/IHE_XDM/SS000001/METADATA.XML" starts with
    ``<ns3:SubmitObjectsRequest>`` and declares no namespace: not well-formed XML. The warning names that defect,
    and the CDA of the package is read from its header."""
    package = read_xdm(rezip(xdm, replace={METADATA_PATH: ANS_METADATA.read_bytes()}))
    assert [cda_unique_id(d.cda) for d in package.documents if d.cda] == [DOC_ID]
    assert package.patient_id == f"{INS}^^^&{INS_OID_TEST}&ISO^NH"
    [warning] = package.warnings
    assert warning.startswith("METADATA.XML illisible") and "prefix ns3" in warning


@pytest.mark.requirement("XDM-TOLERANT")
def test_metadata_of_another_kind_is_a_warning(xdm: bytes) -> None:
    package = read_xdm(rezip(xdm, replace={METADATA_PATH: b"<RegistryObjectList/>"}))
    assert [cda_unique_id(d.cda) for d in package.documents if d.cda] == [DOC_ID]
    assert "élément racine RegistryObjectList" in package.warnings[0]


def test_no_metadata_and_no_subset_folder_is_refused(xdm: bytes) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        dst.writestr("README.TXT", b"rien")
    with pytest.raises(XdmError) as exc:
        read_xdm(out.getvalue())
    assert code_of(exc) == "XDM_METADATA_MISSING"


def _metadata(xdm: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(xdm)) as zf:
        return zf.read(METADATA_PATH)


@pytest.mark.requirement("XDM-TOLERANT")
def test_metadata_size_disagrees_with_the_file(xdm: bytes, cda: bytes) -> None:
    size = f"<rim:Value>{len(cda)}</rim:Value>".encode()
    assert size in _metadata(xdm)
    forged = _metadata(xdm).replace(size, f"<rim:Value>{len(cda) + 1}</rim:Value>".encode())
    package = read_xdm(rezip(xdm, replace={METADATA_PATH: forged}))
    assert package.documents[0].content == cda
    assert package.warnings == [f"{DOC} : taille du fichier ({len(cda)}) ≠ taille déclarée ({len(cda) + 1})"]


@pytest.mark.requirement("XDM-TOLERANT")
def test_document_altered_after_hashing(xdm: bytes, cda: bytes) -> None:
    altered = cda.replace(b"Radio de hanche", b"Radio de HANCHE", 1)
    assert len(altered) == len(cda) and altered != cda
    package = read_xdm(rezip(xdm, replace={DOC: altered}))
    assert package.documents[0].content == altered
    assert package.warnings == [f"{DOC} : empreinte SHA-1 du fichier ≠ empreinte déclarée"]


@pytest.mark.requirement("XDM-TOLERANT")
def test_metadata_patient_disagrees_with_the_cda(cda: bytes) -> None:
    m, ss = metadata_for(cda)
    m.patient_id = ss.patient_id = f"{OTHER_INS}^^^&{INS_OID_TEST}&ISO^NH"
    data = build_xdm(ss, [(m, cda)], readme_text="r", index_html_title="t")
    with pytest.raises(XdmError) as exc:
        read_xdm(data)
    assert code_of(exc) == "XDM_PATIENT_MISMATCH"


@pytest.mark.requirement("XDM-TOLERANT")
def test_metadata_unique_id_disagrees_with_the_cda(cda: bytes) -> None:
    m, ss = metadata_for(cda)
    m.unique_id = DOC_ID + ".1"
    package = read_xdm(build_xdm(ss, [(m, cda)], readme_text="r", index_html_title="t"))
    assert package.documents[0].cda is not None
    assert package.warnings == [
        f"{DOC} : l'identifiant du document CDA ({DOC_ID}) diffère de celui des métadonnées ({DOC_ID}.1) ; "
        "celui du CDA est retenu"
    ]


def test_document_listed_but_absent(xdm: bytes) -> None:
    forged = _metadata(xdm).replace(
        b"<rim:Value>DOC0001.XML</rim:Value>", b"<rim:Value>DOC0009.XML</rim:Value>"
    )
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, replace={METADATA_PATH: forged}))
    assert code_of(exc) == "XDM_DOCUMENT_MISSING"


def test_uri_escaping_the_subset_is_refused(xdm: bytes) -> None:
    forged = _metadata(xdm).replace(
        b"<rim:Value>DOC0001.XML</rim:Value>", b"<rim:Value>../../README.TXT</rim:Value>"
    )
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, replace={METADATA_PATH: forged}))
    assert code_of(exc) == "XDM_PATH_TRAVERSAL"


# ------------------------------------------------------------------------------------------------------------
# What peers really send: every legal ebRIM form, and what they leave out (read with a warning, CDA authoritative)

R = f"{{{NS_RIM}}}"


def _rewrite_metadata(xdm: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    root = etree.fromstring(_metadata(xdm))
    change(root)
    return rezip(xdm, replace={METADATA_PATH: etree.tostring(root, xml_declaration=True, encoding="UTF-8")})


@pytest.mark.requirement("XDM-EBRIM21", "EBRIM-PLACEMENT")
def test_ebrim_21_metadata_at_the_top_level_with_short_association_types_reads_as_built(xdm: bytes) -> None:
    built = read_xdm(xdm)
    root = short_association_types(hoist(etree.fromstring(_metadata(xdm))))
    older = as_ebrim21(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    assert b"rim:xsd:2.1" in older and b"LeafRegistryObjectList" in older and b'"HasMember"' in older
    package = read_xdm(rezip(xdm, replace={METADATA_PATH: older}))
    assert package.warnings == []
    assert package.submission_set == built.submission_set
    assert [d.metadata for d in package.documents] == [d.metadata for d in built.documents]


def _drop(scheme: str):  # type: ignore[no-untyped-def]
    def change(root: etree._Element) -> None:
        for cl in list(root.iter(f"{R}Classification")):
            if cl.get("classificationScheme") == scheme:
                cl.getparent().remove(cl)

    return change


@pytest.mark.requirement("XDM-TOLERANT")
def test_missing_content_type_code_is_a_warning(xdm: bytes) -> None:
    package = read_xdm(_rewrite_metadata(xdm, _drop(SS_CONTENT_TYPE)))
    assert package.submission_set is None and package.documents[0].metadata is not None
    assert package.patient_id == f"{INS}^^^&{INS_OID_TEST}&ISO^NH"
    assert package.warnings == ["Lot de soumission incomplet : un seul contentTypeCode attendu"]


@pytest.mark.requirement("XDM-TOLERANT")
def test_missing_confidentiality_code_is_a_warning_naming_the_document(xdm: bytes) -> None:
    package = read_xdm(_rewrite_metadata(xdm, _drop(DE_CONFIDENTIALITY)))
    doc = package.documents[0]
    assert doc.metadata is None and doc.cda is not None and doc.confidentiality == frozenset()
    assert package.warnings == [f"Métadonnées incomplètes du document {DOC_ID} : confidentialityCode absent"]


@pytest.mark.requirement("XDM-TOLERANT")
def test_visibility_flags_survive_an_incomplete_entry(cda: bytes) -> None:
    m, ss = metadata_for(cda)
    m.confidentiality_codes.append(
        type(m.confidentiality_codes[0])("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13")
    )
    data = build_xdm(ss, [(m, cda)], readme_text="r", index_html_title="t")

    def drop_creation_time(root: etree._Element) -> None:
        for slot in list(root.iter(f"{R}Slot")):
            if slot.get("name") == "creationTime":
                slot.getparent().remove(slot)

    doc = read_xdm(_rewrite_metadata(data, drop_creation_time)).documents[0]
    assert doc.metadata is None and "INVISIBLE_PATIENT" in doc.confidentiality


@pytest.mark.requirement("XDM-TOLERANT")
def test_metadata_limited_package_is_read_and_said_so(xdm: bytes) -> None:
    def limited(root: etree._Element) -> None:
        _drop(DE_CONFIDENTIALITY)(root)
        eo = root.find(f".//{R}ExtrinsicObject")
        assert eo is not None
        etree.SubElement(
            eo,
            f"{R}Classification",
            id="urn:uuid:limited",
            classifiedObject=eo.get("id", ""),
            classificationNode=DE_LIMITED_METADATA,
        )

    package = read_xdm(_rewrite_metadata(xdm, limited))
    assert package.documents[0].cda is not None
    assert (
        "Métadonnées XDM déclarées limitées par l'émetteur (Metadata-Limited Document Source)"
        in package.warnings
    )


def _renamed(xdm: bytes, rename) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xdm)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(member(rename(info.filename)), src.read(info))
    return out.getvalue()


@pytest.mark.requirement("XDM-TOLERANT")
def test_a_wrapper_folder_is_read_with_a_warning(xdm: bytes) -> None:
    package = read_xdm(_renamed(xdm, lambda n: f"CR_Radio/{n}"))
    assert package.documents[0].path == DOC
    assert package.warnings == [
        "Archive IHE_XDM placée dans un dossier « CR_Radio » : contenu lu depuis ce dossier"
    ]


@pytest.mark.requirement("XDM-TOLERANT")
def test_backslash_paths_are_read_with_a_warning(xdm: bytes) -> None:
    package = read_xdm(_renamed(xdm, lambda n: n.replace("/", "\\")))
    assert package.documents[0].path == DOC and package.documents[0].cda is not None
    assert package.warnings == ["Chemins de l'archive écrits avec des barres obliques inverses (Windows)"]


@pytest.mark.requirement("XDM-TOLERANT")
def test_unreadable_cda_is_still_refused(xdm: bytes) -> None:
    with pytest.raises(XdmError) as exc:
        read_xdm(rezip(xdm, replace={DOC: b"<ClinicalDocument>"}))
    assert code_of(exc) == "XDM_CDA_INVALID"


@pytest.mark.requirement("XDM-ORIGIN")
def test_readme_names_the_application_its_version_vendor_and_contact() -> None:
    origin = XdmOrigin(
        "CHU-X", "750000028", "dpi@hopitalA.mssante.fr", "OpenSégur", "1.2.3", "Projet OpenSégur"
    )
    text = readme_text(origin)
    for expected in (
        "CHU-X (FINESS 750000028)",
        "Contact : dpi@hopitalA.mssante.fr",
        "Application : OpenSégur 1.2.3",
        "Éditeur : Projet OpenSégur",
        "IHE_XDM/SUBSET01/METADATA.XML",
    ):
        assert expected in text
    assert intended_recipient("dr.x@ch.mssante.fr") == "||^^Internet^dr.x@ch.mssante.fr"
