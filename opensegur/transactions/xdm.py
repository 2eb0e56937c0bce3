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
- ``size`` and ``hash`` are mandatory in XDM metadata (ITI-32 requires them on media) and checked against the
  inflated bytes.
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
from opensegur.documents.metadata import DocumentMetadata, SubmissionSetMetadata
from opensegur.transactions.ebrim import normalize
from opensegur.transactions.ihe_ids import SS_NODE
from opensegur.transactions.xds import (
    ASSOC_HAS_MEMBER,
    NS_LCM,
    NS_RIM,
    Association,
    XdsError,
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


class XdmError(ValueError):
    """The package is unusable or unsafe. ``code`` is stable for programs, ``message_fr`` is shown to staff."""

    def __init__(self, code: str, message_fr: str, path: str | None = None) -> None:
        super().__init__(f"{code}: {message_fr}" + (f" ({path})" if path else ""))
        self.code = code
        self.message_fr = message_fr
        self.path = path


@dataclass
class XdmDocument:
    metadata: DocumentMetadata
    content: bytes
    path: str  # member name in the ZIP
    cda: CdaHeader | None = None  # set for CDA documents, already cross-checked against ``metadata``


@dataclass
class XdmPackage:
    submission_set: SubmissionSetMetadata
    documents: list[XdmDocument]
    associations: list[Association]
    readme: str | None = None
    members: list[str] = field(default_factory=list)

    @property
    def patient_id(self) -> str:
        return self.submission_set.patient_id


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
    raw = info.orig_filename
    name = info.filename
    if "\x00" in raw or any(ord(c) < 0x20 for c in raw):
        raise XdmError(
            "XDM_PATH_INVALID", "Nom de fichier avec caractères de contrôle dans l'archive", repr(raw)
        )
    if "\\" in raw:
        raise XdmError("XDM_PATH_INVALID", "Nom de fichier avec barre oblique inverse dans l'archive", raw)
    if raw.startswith("/") or _DRIVE_RE.match(raw):
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


def _read_metadata(
    raw: bytes, path: str
) -> tuple[SubmissionSetMetadata, list[etree._Element], list[Association]]:
    try:
        root = safe_parse(raw)
    except SoapFormatError as exc:
        code = "XDM_METADATA_UNSAFE" if exc.unsafe else "XDM_METADATA_INVALID"
        raise XdmError(code, f"METADATA.XML refusé : {exc}", path) from exc
    normalize(root)
    rol = root.find(f"{_R}RegistryObjectList")
    if root.tag != f"{_LCM}SubmitObjectsRequest" or rol is None:
        raise XdmError("XDM_METADATA_INVALID", "METADATA.XML n'est pas un SubmitObjectsRequest ebRIM", path)
    packages = rol.findall(f"{_R}RegistryPackage")
    ss_nodes = {
        c.get("classifiedObject")
        for c in rol.iter(f"{_R}Classification")
        if c.get("classificationNode") == SS_NODE
    }
    sets = [p for p in packages if p.get("id") in ss_nodes]
    if len(sets) != 1:
        raise XdmError("XDM_METADATA_INVALID", f"Un lot de soumission attendu, {len(sets)} trouvé(s)", path)
    try:
        submission_set = read_submission_set(sets[0])
        associations = read_associations(rol)
    except XdsError as exc:
        raise XdmError("XDM_METADATA_INVALID", f"Métadonnées XDS invalides : {exc.message}", path) from exc
    return submission_set, rol.findall(f"{_R}ExtrinsicObject"), associations


def _cross_check_cda(m: DocumentMetadata, content: bytes, path: str) -> CdaHeader:
    try:
        _, header = parse_cda(content)
    except CdaError as exc:
        raise XdmError("XDM_CDA_INVALID", f"Document CDA illisible : {exc.message_fr}", path) from exc
    if cda_unique_id(header) != m.unique_id:
        raise XdmError(
            "XDM_UNIQUE_ID_MISMATCH",
            f"L'identifiant du document CDA ({cda_unique_id(header)}) diffère de celui des métadonnées "
            f"({m.unique_id})",
            path,
        )
    ident, oid = cx_identifier(m.patient_id)
    p = header.patient
    cda_ids: list[tuple[str | None, str | None]] = [(p.ins_matricule, p.ins_oid)] if p.ins_matricule else []
    cda_ids += [(i.extension, i.root) for i in p.other_ids]
    if (ident, oid) not in cda_ids:
        raise XdmError(
            "XDM_PATIENT_MISMATCH",
            "Le patient du document CDA ne correspond pas à l'identifiant patient des métadonnées XDM",
            path,
        )
    return header


def read_xdm(
    data: bytes,
    *,
    max_total: int = DEFAULT_MAX_TOTAL,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_files: int = DEFAULT_MAX_FILES,
) -> XdmPackage:
    """Open an untrusted ``IHE_XDM.ZIP``: safety checks on every member, then metadata ↔ content cross-checks."""
    if len(data) > max_total:
        raise XdmError("XDM_TOO_LARGE", f"Archive trop volumineuse ({len(data)} octets > {max_total})")
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
        for info in infos:
            name = _check_name(info)
            key = name.rstrip("/").upper()
            # Case-insensitive: XDM names are ISO 9660 and the package may be extracted on a case-folding disk.
            if key in seen:
                raise XdmError("XDM_DUPLICATE_NAME", "Nom de fichier en double dans l'archive", name)
            seen.add(key)
            if _is_symlink(info):
                raise XdmError("XDM_SYMLINK", "Lien symbolique interdit dans l'archive", name)
            if info.is_dir():
                continue
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
    by_upper = {n.upper(): n for n in files}
    subsets = [n for n in files if _SUBSET_RE.match(n)]
    if not subsets:
        raise XdmError("XDM_METADATA_MISSING", "METADATA.XML absent de l'archive IHE_XDM")
    if len(subsets) > 1:
        raise XdmError(
            "XDM_MULTIPLE_SUBSETS", "Plusieurs lots (SUBSET) dans une même archive : non pris en charge"
        )
    metadata_path = subsets[0]
    subset_dir = metadata_path.rsplit("/", 1)[0]
    submission_set, entries, associations = _read_metadata(files[metadata_path], metadata_path)
    members = {
        a.target for a in associations if a.type == ASSOC_HAS_MEMBER and a.source == submission_set.entry_uuid
    }
    documents: list[XdmDocument] = []
    for entry in entries:
        try:
            m = read_document_entry(entry)
        except XdsError as exc:
            raise XdmError(
                "XDM_METADATA_INVALID", f"Métadonnées XDS invalides : {exc.message}", metadata_path
            ) from exc
        if m.entry_uuid not in members:
            raise XdmError(
                "XDM_METADATA_INVALID", f"Document {m.unique_id} hors du lot de soumission", metadata_path
            )
        uri = _uri(entry)
        if not uri or "\\" in uri or uri.startswith("/") or ".." in uri.split("/") or ":" in uri:
            raise XdmError("XDM_METADATA_INVALID", f"URI absente ou invalide pour le document {m.unique_id}")
        path = by_upper.get(f"{subset_dir}/{uri}".upper())
        if path is None:
            raise XdmError(
                "XDM_DOCUMENT_MISSING", f"Fichier {uri} annoncé dans METADATA.XML mais absent", uri
            )
        content = files[path]
        if m.size is None or m.hash_sha1 is None:
            raise XdmError(
                "XDM_METADATA_INVALID", f"Taille ou empreinte absente pour le document {m.unique_id}", path
            )
        if m.size != len(content):
            raise XdmError(
                "XDM_SIZE_MISMATCH", f"Taille du fichier ({len(content)}) ≠ taille déclarée ({m.size})", path
            )
        if m.hash_sha1.lower() != hashlib.sha1(content).hexdigest():
            raise XdmError("XDM_HASH_MISMATCH", "Empreinte SHA-1 du fichier ≠ empreinte déclarée", path)
        header = None
        if m.mime_type in ("text/xml", "application/xml"):
            header = _cross_check_cda(m, content, path)
        documents.append(XdmDocument(m, content, path, header))
    if not documents:
        raise XdmError("XDM_METADATA_INVALID", "Aucun document dans METADATA.XML", metadata_path)
    patients = {d.metadata.patient_id for d in documents}
    if len(patients) > 1:
        raise XdmError("XDM_MULTIPLE_PATIENTS", "Documents de plusieurs patients dans une même archive")
    if patients != {submission_set.patient_id}:
        raise XdmError(
            "XDM_PATIENT_MISMATCH",
            "Le patient du lot de soumission diffère de celui des documents",
            metadata_path,
        )
    readme_name = by_upper.get("README.TXT")
    readme = files[readme_name].decode("utf-8", errors="replace") if readme_name else None
    return XdmPackage(submission_set, documents, associations, readme, sorted(files))
