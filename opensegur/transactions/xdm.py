"""IHE XDM (ITI-32, "Distribute Document Set on Media") ZIP packages as MSSanté carries them (``IHE_XDM.ZIP``).

Layout (IHE ITI TF-3 §3.32.4.1, as digested in reference/digests/standards.md §4.1)::

    README.TXT  INDEX.HTM  IHE_XDM/SUBSET01/METADATA.XML  IHE_XDM/SUBSET01/DOC0001.XML …

``METADATA.XML`` is an ebRIM ``lcm:SubmitObjectsRequest`` rendered with the XDS.b functions of
:mod:`opensegur.transactions.xds`, plus the XDM-only ``URI`` slot naming each document's file (relative to the
subset folder). Packages arrive by mail from anyone holding an MSSanté address, so :func:`read_xdm` treats the
archive as hostile: every limit is enforced on the bytes actually inflated, never on the sizes the headers claim.

Decisions:
- One subset per package: MSSanté sends one mail per patient (digest §4.1); a second ``SUBSETnn`` is refused
  (``XDM_MULTIPLE_SUBSETS``) rather than silently ignored.
- Only STORED and DEFLATE members are read (the methods ITI-32 ZIPs use); bzip2/LZMA decoders are attack surface
  for no interoperability gain.
- Two kinds of defect, two answers. An unsafe archive (traversal, symlink, bomb, nested archive, encryption) is
  refused. What the sender left out of or got wrong in the metadata (ITI-32 requires ``size`` and ``hash``;
  XDS.b requires codes that a metadata-limited source may omit) is read with a French warning in
  :attr:`XdmPackage.warnings`: the CDA header is authoritative, and the mail's reader decides on it. Only a
  patient in the metadata that is not the CDA's, or no readable document, is an error.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import stat
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field

from lxml import etree

from opensegur.content.cda import CdaError, CdaHeader, parse_cda
from opensegur.content.xds_metadata import cx
from opensegur.documents.metadata import DocumentMetadata, SubmissionSetMetadata
from opensegur.errors import OpenSegurError
from opensegur.transactions.ebrim import normalize
from opensegur.transactions.ihe_ids import (
    DE_CONFIDENTIALITY,
    DE_LIMITED_METADATA,
    DE_PATIENT_ID,
    DE_UNIQUE_ID,
    SS_LIMITED_METADATA,
    SS_PATIENT_ID,
)
from opensegur.transactions.xds import (
    ASSOC_HAS_MEMBER,
    NS_LCM,
    NS_RIM,
    Association,
    XdsError,
    is_submission_set,
    read_associations,
    read_document_entry,
    read_submission_set,
    render_association,
    render_document_entry,
    render_submission_set,
)
from opensegur.transport.soap import SoapFormatError, safe_parse

__all__ = [
    "XDM_ZIP_NAME",
    "SUBSET_DIR",
    "METADATA_PATH",
    "XdmError",
    "XdmDocument",
    "XdmPackage",
    "build_xdm",
    "read_xdm",
    "cx_identifier",
    "XdmOrigin",
    "intended_recipient",
    "readme_text",
    "cda_unique_id",
    "DEFAULT_MAX_TOTAL",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_FILES",
]

XDM_ZIP_NAME = "IHE_XDM.ZIP"
SUBSET_DIR = "IHE_XDM/SUBSET01"
METADATA_PATH = f"{SUBSET_DIR}/METADATA.XML"
# Defaults sized for a CR with its PDF (a few MB) plus images; callers pass their own policy.
DEFAULT_MAX_TOTAL = 50_000_000
DEFAULT_MAX_RATIO = 100.0
DEFAULT_MAX_FILES = 100
_CHUNK = 64 * 1024
# Below this many inflated bytes the ratio test is skipped: a 200-byte README compresses 3:1 but a tiny member
# compressing 100:1 (an all-blank INDEX) is no bomb.
_RATIO_FLOOR = 1_000_000
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_NESTED_EXT = (".zip", ".jar", ".gz", ".tgz", ".7z", ".rar", ".bz2", ".xz")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SUBSET_RE = re.compile(r"^IHE_XDM/([^/]+)/METADATA\.XML$", re.IGNORECASE)
_EXT_BY_MIME = {"text/xml": "XML", "application/xml": "XML", "application/pdf": "PDF", "text/plain": "TXT"}
_R = f"{{{NS_RIM}}}"
_LCM = f"{{{NS_LCM}}}"


class XdmError(OpenSegurError, ValueError):
    """The package is unusable or unsafe. ``code`` is stable for programs, ``message_fr`` is shown to staff."""

    def __init__(self, code: str, message_fr: str, path: str | None = None) -> None:
        super().__init__(f"{code}: {message_fr}" + (f" ({path})" if path else ""))
        self.code = code
        self.message_fr = message_fr
        self.path = path


@dataclass
class XdmDocument:
    # As the sender wrote it; None when its entry is incomplete (the reason is in XdmPackage.warnings): the CDA
    # header is then what says what the document is.
    metadata: DocumentMetadata | None
    content: bytes
    path: str  # member name in the ZIP
    cda: CdaHeader | None = None  # set for CDA documents, already cross-checked against the metadata
    # confidentialityCode values of the entry, read even when the rest of it is incomplete (visibility flags).
    confidentiality: frozenset[str] = frozenset()


@dataclass
class XdmPackage:
    patient_id: str  # XDS CX: the submission set's, else the documents', else the INS of the CDA
    documents: list[XdmDocument]
    associations: list[Association]
    submission_set: SubmissionSetMetadata | None = None  # None when the sender's submission set is incomplete
    readme: str | None = None
    members: list[str] = field(default_factory=list)
    # What the sender left out or got wrong, in French, for the people who read the mail: the package was read
    # anyway because the CDA is authoritative.
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# Building


def cda_unique_id(header: CdaHeader) -> str:
    """The XDS uniqueId a CDA ``ClinicalDocument/id`` maps to (``root`` or ``root^extension``)."""
    return header.id.root if not header.id.extension else f"{header.id.root}^{header.id.extension}"


def cx_identifier(cx: str) -> tuple[str, str]:
    """(id, assigning authority OID) of an XDS CX such as ``279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH``."""
    parts = cx.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    oid = authority[1] if len(authority) > 1 else ""
    return parts[0], oid


def intended_recipient(address: str) -> str:
    """``XDSSubmissionSet.intendedRecipient`` for a mail address: XON|XCN|XTN with only the telecom (ITI TF-3
    4.2.3.3.6), the form XDM-by-mail peers read."""
    return f"||^^Internet^{address}"


@dataclass(frozen=True)
class XdmOrigin:
    """Who made the package, for README.TXT (ITI-32: the contact for the content and the application that wrote
    it, with its version and vendor)."""

    institution: str
    finess: str | None
    contact: str  # the sender's MSSanté mailbox
    application: str
    version: str
    vendor: str


def readme_text(origin: XdmOrigin) -> str:
    finess = f" (FINESS {origin.finess})" if origin.finess else ""
    return (
        f"Documents de santé transmis par {origin.institution}{finess} par messagerie sécurisée de santé.\n"
        f"Contact : {origin.contact}\n"
        f"Application : {origin.application} {origin.version}\n"
        f"Éditeur : {origin.vendor}\n"
        "Organisation : IHE_XDM/SUBSET01/METADATA.XML décrit les documents (IHE XDM, ITI-32) ; "
        "INDEX.HTM les liste.\n"
    )


def _file_name(index: int, mime_type: str) -> str:
    # ISO 9660 level-1 names (8.3, upper case), as ITI-32 asks so the package survives any medium.
    return f"DOC{index:04d}.{_EXT_BY_MIME.get(mime_type, 'BIN')}"


def _with_uri_slot(entry: etree._Element, uri: str) -> etree._Element:
    # ebRIM requires every Slot before Name/Description, so the URI slot goes right after the last slot.
    slot = etree.Element(f"{_R}Slot", name="URI")
    etree.SubElement(etree.SubElement(slot, f"{_R}ValueList"), f"{_R}Value").text = uri
    slots = entry.findall(f"{_R}Slot")
    if slots:
        slots[-1].addnext(slot)
    else:
        entry.insert(0, slot)
    return entry


def _zip_time(dtm: str) -> tuple[int, int, int, int, int, int]:
    digits = (dtm + "00000000000000")[:14]
    try:
        stamp = tuple(int(digits[i:j]) for i, j in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)))
    except ValueError:
        return (1980, 1, 1, 0, 0, 0)
    year, month, day, hour, minute, second = stamp
    if year < 1980 or not 1 <= month <= 12 or not 1 <= day <= 31:
        return (1980, 1, 1, 0, 0, 0)
    return (year, month, day, hour, minute, second)


def _index_html(title: str, readme_text: str, files: list[tuple[str, DocumentMetadata]]) -> str:
    items = "\n".join(
        f'<li><a href="{html.escape(path)}">{html.escape(m.title or path)}</a></li>' for path, m in files
    )
    return (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n<body><h1>{html.escape(title)}</h1>\n"
        f"<pre>{html.escape(readme_text)}</pre>\n<ul>\n{items}\n</ul>\n"
        f'<p><a href="README.TXT">README.TXT</a></p></body></html>\n'
    )


def build_xdm(
    submission_set: SubmissionSetMetadata,
    documents: list[tuple[DocumentMetadata, bytes]],
    *,
    readme_text: str,
    index_html_title: str,
) -> bytes:
    """The bytes of ``IHE_XDM.ZIP`` for one patient's documents.

    Missing entry UUIDs, sizes and SHA-1 hashes are filled in place (as for ITI-41) so the caller can record them;
    values already set must match the content, since a receiver rejects the package otherwise.
    """
    if not documents:
        raise ValueError("an XDM package needs at least one document")
    patients = {m.patient_id for m, _ in documents}
    if patients != {submission_set.patient_id}:
        # MSSanté: one mail (hence one package) per patient; mixing would leak one patient's data to another's file.
        raise ValueError(f"all documents must belong to the submission set patient, got {sorted(patients)}")
    submission_set.entry_uuid = submission_set.entry_uuid or f"urn:uuid:{uuid.uuid4()}"
    root = etree.Element(f"{_LCM}SubmitObjectsRequest", nsmap={"lcm": NS_LCM, "rim": NS_RIM})
    rol = etree.SubElement(root, f"{_R}RegistryObjectList")
    files: list[tuple[str, DocumentMetadata, bytes]] = []
    for index, (m, content) in enumerate(documents, start=1):
        digest = hashlib.sha1(content).hexdigest()
        if m.size is not None and m.size != len(content):
            raise ValueError(f"document {m.unique_id}: metadata size {m.size} != {len(content)}")
        if m.hash_sha1 is not None and m.hash_sha1.lower() != digest:
            raise ValueError(f"document {m.unique_id}: metadata hash does not match the content")
        m.size, m.hash_sha1 = len(content), digest
        m.entry_uuid = m.entry_uuid or f"urn:uuid:{uuid.uuid4()}"
        name = _file_name(index, m.mime_type)
        rol.append(_with_uri_slot(render_document_entry(m, m.entry_uuid), name))
        files.append((name, m, content))
    for el in render_submission_set(submission_set, submission_set.entry_uuid):
        rol.append(el)
    for _, m, _ in files:
        assoc = Association(
            ASSOC_HAS_MEMBER,
            submission_set.entry_uuid,
            m.entry_uuid or "",
            slots={"SubmissionSetStatus": ["Original"]},
        )
        rol.append(render_association(assoc))
    # The XDS renderers declare every XDS namespace on each element; hoist them so METADATA.XML stays readable.
    etree.cleanup_namespaces(root, top_nsmap={"lcm": NS_LCM, "rim": NS_RIM})
    metadata = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    when = _zip_time(submission_set.submission_time)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=when)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)

        add("README.TXT", readme_text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8"))
        index_files = [(f"{SUBSET_DIR}/{name}", m) for name, m, _ in files]
        add("INDEX.HTM", _index_html(index_html_title, readme_text, index_files).encode("utf-8"))
        add(METADATA_PATH, metadata)
        for name, _, content in files:
            add(f"{SUBSET_DIR}/{name}", content)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Reading


def _check_name(info: zipfile.ZipInfo) -> str:
    """The member's name with ``/`` separators, or XdmError when it could land outside the extraction folder."""
    raw = info.orig_filename
    if "\x00" in raw or any(ord(c) < 0x20 for c in raw):
        raise XdmError(
            "XDM_PATH_INVALID", "Nom de fichier avec caractères de contrôle dans l'archive", repr(raw)
        )
    # Archives made on Windows may separate with backslashes (APPNOTE 4.4.17 says "/", zipfile keeps "\" on
    # POSIX): read them as separators, then hold the result to the same traversal rules.
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE_RE.match(name):
        raise XdmError("XDM_PATH_TRAVERSAL", "Chemin absolu interdit dans l'archive", raw)
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise XdmError(
            "XDM_PATH_TRAVERSAL", "Chemin relatif (« .. », « . » ou vide) interdit dans l'archive", raw
        )
    return name


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def _inflate(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, max_ratio: float, max_total: int
) -> bytes:
    """Inflate one member, stopping as soon as it exceeds ``budget`` or the ratio: never trusts ``file_size``."""
    name = info.filename
    chunks: list[bytes] = []
    size = 0
    # zipfile never reads past compress_size, so the ratio against it bounds what this member can inflate to.
    allowed_by_ratio = max(info.compress_size, 1) * max_ratio
    try:
        with zf.open(info) as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                if not chunks and chunk.startswith(_ZIP_MAGIC):
                    raise XdmError("XDM_NESTED_ARCHIVE", "Archive imbriquée interdite dans IHE_XDM", name)
                size += len(chunk)
                if size > budget:
                    raise XdmError(
                        "XDM_TOO_LARGE",
                        f"Archive trop volumineuse une fois décompressée (plus de {max_total} octets)",
                        name,
                    )
                if size > _RATIO_FLOOR and size > allowed_by_ratio:
                    raise XdmError(
                        "XDM_ZIP_BOMB",
                        f"Taux de compression anormal (plus de {max_ratio:g}:1) : archive refusée",
                        name,
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        # A CRC mismatch lands here too: it is how a header under-declaring file_size shows up.
        raise XdmError("XDM_CORRUPT", f"Fichier corrompu dans l'archive : {exc}", name) from exc
    except NotImplementedError as exc:
        raise XdmError(
            "XDM_UNSUPPORTED", f"Méthode de compression non prise en charge : {exc}", name
        ) from exc
    return b"".join(chunks)


def _uri(entry: etree._Element) -> str | None:
    for slot in entry.findall(f"{_R}Slot"):
        if slot.get("name") == "URI":
            values = [v.text or "" for v in slot.iterfind(f"{_R}ValueList/{_R}Value")]
            if len(values) == 1:
                return values[0]
            # ITI-32: a URI longer than a slot value is split as "1|part", "2|part"…
            parts = [v.split("|", 1) for v in values if "|" in v]
            if len(parts) != len(values) or not all(p[0].isdigit() for p in parts):
                return None
            return "".join(p[1] for p in sorted(parts, key=lambda p: int(p[0])))
    return None


def _values(obj: etree._Element, slot: str) -> list[str]:
    return [
        v.text or ""
        for sl in obj.findall(f"{_R}Slot")
        if sl.get("name") == slot
        for v in sl.iterfind(f"{_R}ValueList/{_R}Value")
    ]


def _external_id(obj: etree._Element, scheme: str) -> str | None:
    for ei in obj.findall(f"{_R}ExternalIdentifier"):
        if ei.get("identificationScheme") == scheme and ei.get("value"):
            return ei.get("value")
    return None


@dataclass
class _Metadata:
    submission_set_id: str | None  # the RegistryPackage's id, even when the submission set is incomplete
    submission_set: SubmissionSetMetadata | None
    patient_id: str | None
    entries: list[etree._Element]
    associations: list[Association]


def _read_metadata(raw: bytes, path: str, warnings: list[str]) -> _Metadata | None:
    """METADATA.XML in any legal ebRIM form; what XDS.b requires but the sender left out becomes a warning.

    None, with a warning naming the defect, when the file cannot be read as ebRIM at all (malformed XML, another
    root): the caller then reads the CDA headers, as for a package without METADATA.XML. Hostile XML is refused.
    """
    try:
        root = safe_parse(raw)
    except SoapFormatError as exc:
        if exc.unsafe:
            raise XdmError("XDM_METADATA_UNSAFE", f"METADATA.XML refusé : {exc}", path) from exc
        cause = exc.__cause__
        # libxml2's own words name the defect; its "(<string>, line n)" suffix only repeats the line.
        detail = f"XML mal formé : {cause.msg}" if isinstance(cause, etree.XMLSyntaxError) else str(exc)
        warnings.append(f"METADATA.XML illisible ({detail}) : documents identifiés par leur en-tête CDA")
        return None
    normalize(root)
    rol = root.find(f"{_R}RegistryObjectList")
    if root.tag != f"{_LCM}SubmitObjectsRequest" or rol is None:
        warnings.append(
            f"METADATA.XML n'est pas un SubmitObjectsRequest ebRIM 2.1 ou 3.0 (élément racine {root.tag}) : "
            "documents identifiés par leur en-tête CDA"
        )
        return None
    sets = [p for p in rol.findall(f"{_R}RegistryPackage") if is_submission_set(p)]
    if len(sets) > 1:
        raise XdmError("XDM_METADATA_INVALID", f"Un lot de soumission attendu, {len(sets)} trouvés", path)
    try:
        associations = read_associations(rol)
    except XdsError as exc:
        raise XdmError("XDM_METADATA_INVALID", f"Association XDS illisible : {exc.message}", path) from exc
    submission_set = None
    patient_id = None
    if not sets:
        warnings.append("METADATA.XML sans lot de soumission (XDSSubmissionSet)")
    else:
        patient_id = _external_id(sets[0], SS_PATIENT_ID)
        try:
            submission_set = read_submission_set(sets[0])
        except XdsError as exc:
            warnings.append(f"Lot de soumission incomplet : {exc.message}")
    entries = rol.findall(f"{_R}ExtrinsicObject")
    if any(_limited_metadata(obj) for obj in [*sets, *entries]):
        warnings.append(
            "Métadonnées XDM déclarées limitées par l'émetteur (Metadata-Limited Document Source)"
        )
    return _Metadata(sets[0].get("id") if sets else None, submission_set, patient_id, entries, associations)


def _limited_metadata(obj: etree._Element) -> bool:
    """True when the sender flagged the object as written by a Metadata-Limited Document Source (ITI TF-3 4.2.3)."""
    nodes = {c.get("classificationNode") for c in obj.findall(f"{_R}Classification")}
    return bool(nodes & {DE_LIMITED_METADATA, SS_LIMITED_METADATA})


def _read_cda(content: bytes, path: str) -> CdaHeader:
    try:
        return parse_cda(content)[1]
    except CdaError as exc:
        raise XdmError("XDM_CDA_INVALID", f"Document CDA illisible : {exc.message_fr}", path) from exc


def _cross_check_cda(
    header: CdaHeader, unique_id: str | None, patient_id: str | None, path: str
) -> list[str]:
    """Warnings for metadata that disagree with the CDA; XdmError when the patient differs (no trust left)."""
    if patient_id:
        ident, oid = cx_identifier(patient_id)
        p = header.patient
        cda_ids: list[tuple[str | None, str | None]] = (
            [(p.ins_matricule, p.ins_oid)] if p.ins_matricule else []
        )
        cda_ids += [(i.extension, i.root) for i in p.other_ids]
        if (ident, oid) not in cda_ids:
            raise XdmError(
                "XDM_PATIENT_MISMATCH",
                "Le patient du document CDA ne correspond pas à l'identifiant patient des métadonnées XDM",
                path,
            )
    if unique_id and cda_unique_id(header) != unique_id:
        return [
            f"{path} : l'identifiant du document CDA ({cda_unique_id(header)}) diffère de celui des métadonnées "
            f"({unique_id}) ; celui du CDA est retenu"
        ]
    return []


def _sniff_mime(content: bytes) -> str:
    head = content.lstrip()[:5]
    if head.startswith(b"%PDF"):
        return "application/pdf"
    return "text/xml" if head.startswith(b"<") else "application/octet-stream"


def _entry_document(
    entry: etree._Element,
    files: dict[str, bytes],
    by_upper: dict[str, str],
    subset_dir: str,
    members: set[str],
    warnings: list[str],
) -> XdmDocument:
    label = _external_id(entry, DE_UNIQUE_ID) or entry.get("id") or "?"
    metadata: DocumentMetadata | None
    try:
        metadata = read_document_entry(entry)
    except XdsError as exc:
        warnings.append(f"Métadonnées incomplètes du document {label} : {exc.message}")
        metadata = None
    if entry.get("id") not in members:
        warnings.append(f"Document {label} non rattaché au lot de soumission (association HasMember absente)")
    uri = _uri(entry)
    if uri is not None and "\\" in uri:
        uri = uri.replace("\\", "/")
        warnings.append(f"Chemin du document {label} écrit avec des barres obliques inverses ({uri})")
    if uri is not None and (uri.startswith("/") or ".." in uri.split("/") or ":" in uri):
        raise XdmError("XDM_PATH_TRAVERSAL", f"URI du document {label} hors du dossier du lot : {uri}")
    if uri is None:
        # ITI-32 requires the URI slot; a package with one document in its folder still says which file it is.
        in_subset = [n for n in files if n.rsplit("/", 1)[0] == subset_dir and not _SUBSET_RE.match(n)]
        if len(in_subset) != 1:
            raise XdmError("XDM_METADATA_INVALID", f"URI absente pour le document {label}")
        path = in_subset[0]
        warnings.append(f"URI absente pour le document {label} : seul fichier du lot, {path}, retenu")
    else:
        found = by_upper.get(f"{subset_dir}/{uri}".upper())
        if found is None:
            raise XdmError(
                "XDM_DOCUMENT_MISSING", f"Fichier {uri} annoncé dans METADATA.XML mais absent", uri
            )
        path = found
    content = files[path]
    sizes, hashes = _values(entry, "size"), _values(entry, "hash")
    if not sizes or not hashes:
        warnings.append(f"{path} : taille ou empreinte SHA-1 absente des métadonnées")
    if sizes and sizes[0] != str(len(content)):
        warnings.append(f"{path} : taille du fichier ({len(content)}) ≠ taille déclarée ({sizes[0]})")
    if hashes and hashes[0].lower() != hashlib.sha1(content).hexdigest():
        warnings.append(f"{path} : empreinte SHA-1 du fichier ≠ empreinte déclarée")
    mime = entry.get("mimeType") or _sniff_mime(content)
    header = None
    if mime in ("text/xml", "application/xml"):
        header = _read_cda(content, path)
        patient = metadata.patient_id if metadata else _external_id(entry, DE_PATIENT_ID)
        warnings += _cross_check_cda(header, _external_id(entry, DE_UNIQUE_ID), patient, path)
    confidentiality = frozenset(
        c.get("nodeRepresentation") or ""
        for c in entry.findall(f"{_R}Classification")
        if c.get("classificationScheme") == DE_CONFIDENTIALITY
    )
    return XdmDocument(metadata, content, path, header, confidentiality)


def _cda_documents(files: dict[str, bytes], subset_dir: str) -> list[XdmDocument]:
    """Without usable METADATA.XML: the other XML files of the subset folder, each read as a CDA."""
    documents = []
    for path in sorted(files):
        folder, _, name = path.rpartition("/")
        if folder == subset_dir and name.upper() != "METADATA.XML" and _sniff_mime(files[path]) == "text/xml":
            documents.append(XdmDocument(None, files[path], path, _read_cda(files[path], path)))
    return documents


def _ins_cx(header: CdaHeader) -> str | None:
    p = header.patient
    return cx(p.ins_matricule, p.ins_oid, "NH") if p.ins_matricule and p.ins_oid else None


def _unwrap(files: dict[str, bytes], warnings: list[str]) -> dict[str, bytes]:
    """Strip one wrapper folder (``CR_2026/IHE_XDM/…``): the package as extracted and zipped again by a person."""
    if any(n.upper().startswith("IHE_XDM/") for n in files):
        return files
    tops = {n.split("/", 1)[0] for n in files}
    if len(tops) != 1 or not all("/" in n for n in files):
        return files
    top = tops.pop()
    unwrapped = {n.split("/", 1)[1]: c for n, c in files.items()}
    if not any(n.upper().startswith("IHE_XDM/") for n in unwrapped):
        return files
    warnings.append(f"Archive IHE_XDM placée dans un dossier « {top} » : contenu lu depuis ce dossier")
    return unwrapped


def _safe_members(
    data: bytes, max_total: int, max_ratio: float, max_files: int, warnings: list[str]
) -> dict[str, bytes]:
    """Every member of the archive, inflated under the limits; XdmError at the first unsafe one."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise XdmError("XDM_NOT_ZIP", f"La pièce jointe n'est pas une archive ZIP lisible : {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise XdmError(
                "XDM_TOO_MANY_FILES", f"Trop de fichiers dans l'archive ({len(infos)} > {max_files})"
            )
        declared = sum(i.file_size for i in infos)
        if declared > max_total:
            raise XdmError(
                "XDM_TOO_LARGE",
                f"Archive trop volumineuse une fois décompressée ({declared} octets > {max_total})",
            )
        seen: set[str] = set()
        files: dict[str, bytes] = {}
        total = 0
        backslashes = False
        for info in infos:
            name = _check_name(info)
            key = name.rstrip("/").upper()
            # Case-insensitive: XDM names are ISO 9660 and the package may be extracted on a case-folding disk.
            if key in seen:
                raise XdmError("XDM_DUPLICATE_NAME", "Nom de fichier en double dans l'archive", name)
            seen.add(key)
            if _is_symlink(info):
                raise XdmError("XDM_SYMLINK", "Lien symbolique interdit dans l'archive", name)
            if name.endswith("/"):
                continue  # a folder entry, "/" or "\\" terminated
            if "\\" in info.filename and not backslashes:
                backslashes = True
                warnings.append("Chemins de l'archive écrits avec des barres obliques inverses (Windows)")
            if info.flag_bits & 0x1 or info.flag_bits & 0x40:
                raise XdmError(
                    "XDM_ENCRYPTED", "Fichier chiffré dans l'archive : illisible sans secret", name
                )
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise XdmError(
                    "XDM_UNSUPPORTED",
                    f"Méthode de compression {info.compress_type} non prise en charge",
                    name,
                )
            if name.lower().endswith(_NESTED_EXT):
                raise XdmError("XDM_NESTED_ARCHIVE", "Archive imbriquée interdite dans IHE_XDM", name)
            # Cheap early refusals on the declared sizes; the streamed counts in _inflate are what is enforced.
            if info.file_size > _RATIO_FLOOR and info.file_size > max(info.compress_size, 1) * max_ratio:
                raise XdmError(
                    "XDM_ZIP_BOMB",
                    f"Taux de compression anormal (plus de {max_ratio:g}:1) : archive refusée",
                    name,
                )
            content = _inflate(zf, info, max_total - total, max_ratio, max_total)
            total += len(content)
            files[name] = content
    return files


def read_xdm(
    data: bytes,
    *,
    max_total: int = DEFAULT_MAX_TOTAL,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_files: int = DEFAULT_MAX_FILES,
) -> XdmPackage:
    """Open an untrusted ``IHE_XDM.ZIP``: safety checks on every member, then metadata ↔ content cross-checks.

    Unsafe archives are refused (:class:`XdmError`). What the sender left out or got wrong in the metadata —
    missing codes, a wrapper folder, Windows paths, a size or hash that disagrees — is read with a warning in
    :attr:`XdmPackage.warnings`: the CDA header is authoritative. A patient in the metadata that is not the CDA's
    is an error (``XDM_PATIENT_MISMATCH``), as is a package without any readable document.
    """
    if len(data) > max_total:
        raise XdmError("XDM_TOO_LARGE", f"Archive trop volumineuse ({len(data)} octets > {max_total})")
    warnings: list[str] = []
    files = _unwrap(_safe_members(data, max_total, max_ratio, max_files, warnings), warnings)
    subset_dirs = {
        n.rsplit("/", 1)[0] for n in files if n.upper().startswith("IHE_XDM/") and n.count("/") == 2
    }
    subsets = [n for n in files if _SUBSET_RE.match(n)]
    if len(subsets) > 1 or (not subsets and len(subset_dirs) > 1):
        raise XdmError(
            "XDM_MULTIPLE_SUBSETS", "Plusieurs lots (SUBSET) dans une même archive : non pris en charge"
        )
    associations: list[Association] = []
    submission_set = None
    patient_id = None
    meta = _read_metadata(files[subsets[0]], subsets[0], warnings) if subsets else None
    if meta is not None:
        subset_dir = subsets[0].rsplit("/", 1)[0]
        submission_set, patient_id, associations = meta.submission_set, meta.patient_id, meta.associations
        members = {
            a.target
            for a in associations
            if a.type == ASSOC_HAS_MEMBER and a.source == meta.submission_set_id
        }
        # ISO 9660 names: the URI finds its file whatever the case either side used.
        by_upper = {n.upper(): n for n in files}
        documents = [_entry_document(e, files, by_upper, subset_dir, members, warnings) for e in meta.entries]
    elif subsets:
        documents = _cda_documents(files, subsets[0].rsplit("/", 1)[0])
    elif subset_dirs:
        warnings.append("METADATA.XML absent de l'archive : documents identifiés par leur en-tête CDA")
        documents = _cda_documents(files, subset_dirs.pop())
    else:
        raise XdmError("XDM_METADATA_MISSING", "Ni METADATA.XML ni dossier IHE_XDM/SUBSET dans l'archive")
    if not documents:
        raise XdmError("XDM_METADATA_INVALID", "Aucun document dans l'archive IHE_XDM")
    named = {d.metadata.patient_id for d in documents if d.metadata is not None}
    for d in documents:
        ins_cx = _ins_cx(d.cda) if d.metadata is None and d.cda is not None else None
        if ins_cx:
            named.add(ins_cx)
    if len(named) > 1:
        raise XdmError("XDM_MULTIPLE_PATIENTS", "Documents de plusieurs patients dans une même archive")
    if patient_id and named and named != {patient_id}:
        raise XdmError(
            "XDM_PATIENT_MISMATCH",
            "Le patient du lot de soumission diffère de celui des documents",
            "METADATA.XML",
        )
    patient_id = patient_id or (named.pop() if named else None)
    if not patient_id:
        raise XdmError(
            "XDM_METADATA_INVALID", "Aucun identifiant patient dans les métadonnées ni dans un CDA"
        )
    readme_name = next((n for n in files if n.upper() == "README.TXT"), None)
    readme = files[readme_name].decode("utf-8", errors="replace") if readme_name else None
    return XdmPackage(patient_id, documents, associations, submission_set, readme, sorted(files), warnings)
