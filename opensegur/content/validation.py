"""Graded validation of a CDA R2 document: well-formedness, CDA XSD, CI-SIS schematrons, INS.

Severity policy: a document that is not XML, not a CDA, or not valid against ``CDA_extended.xsd`` is *blocking*
(the DMP and every receiver would reject it); schematron failures are *warnings* by default, because real DPIs
produce documents with minor CI-SIS defects (even the ANS examples have some) that the DMP still accepts, and
*blocking* with ``strict=True`` for asserts of role error/fatal.

Schematrons are compiled with lxml's bundled ISO skeleton (XSLT 1 pipeline, ``queryBinding`` rewritten to
``xslt`` so the skeleton accepts them) and run by Saxon (saxonche), which evaluates the XPath 2 expressions the
ANS rules use. The generated XSLT is cached on disk, keyed by a hash of the vendored schematron files; Saxon's
own compile (~12 s for structuration minimale) cannot be cached (SEF export needs Saxon-EE), so each schematron is
compiled once per process and each thread gets its own clone of the executable (SaxonC executables are not
thread-safe).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import hashlib
import logging
import multiprocessing
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import lxml
import lxml.isoschematron
from lxml import etree

from opensegur.content.cda import CDA_NS, CdaError, parse_untrusted
from opensegur.content.jdv import CISIS_DIR
from opensegur.errors import OpenSegurError
from opensegur.identity.errors import IdentityError
from opensegur.identity.ins import Ins, is_ins_oid

__all__ = [
    "Finding",
    "CdaValidator",
    "SchematronIndex",
    "schematron_index",
    "STRUCTURATION_MINIMALE",
    "ValidationSetupError",
]

log = logging.getLogger(__name__)

Severity = Literal["blocking", "warning"]
Source = Literal["xml", "xsd", "schematron", "identity", "metadata"]

SCHEMATRON_DIR = CISIS_DIR / "schematrons"
# The schematrons of the largest ANS example take about a second; sixty means something is wrong with the document.
DEFAULT_TIME_LIMIT_S = 60.0
XSD_PATH = CISIS_DIR / "infrastructure" / "cda" / "CDA_extended.xsd"
STRUCTURATION_MINIMALE = SCHEMATRON_DIR / "profils" / "structurationMinimale" / "ASIP-STRUCT-MIN-StrucMin.sch"

_SCH_NS = "http://purl.oclc.org/dsdl/schematron"
_SVRL_NS = "http://purl.oclc.org/dsdl/svrl"
_XSL_NS = "http://www.w3.org/1999/XSL/Transform"
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"
_SKELETON_DIR = Path(lxml.isoschematron.__file__).parent / "resources" / "xsl" / "iso-schematron-xslt1"
_CACHE_FORMAT = "3"  # bump when the generation pipeline changes

# Templates every CI-SIS document or every N1 carries: they never identify a volet.
_GENERIC_TEMPLATES = frozenset(
    {
        "1.2.250.1.213.1.1.1.1",  # CI-SIS structuration minimale
        "2.16.840.1.113883.2.8.2.1",  # HL7 France
        "1.3.6.1.4.1.19376.1.5.3.1.1.1",  # IHE PCC medical document
        "1.3.6.1.4.1.19376.1.2.20",  # IHE XDS-SD (any N1)
    }
)


@dataclass(frozen=True)
class Finding:
    severity: Severity
    source: Source
    code: str
    message: str
    location: str | None = None


class ValidationSetupError(OpenSegurError, RuntimeError):
    """The vendored conformance kit or the Saxon runtime is unusable (a deployment problem, not a document one)."""


# --- XSD ---------------------------------------------------------------------------------------------------------

_xsd_lock = threading.Lock()
_xsd: etree.XMLSchema | None = None


def _schema() -> etree.XMLSchema:
    global _xsd
    with _xsd_lock:
        if _xsd is None:
            parser = etree.XMLParser(no_network=True, resolve_entities=False)
            _xsd = etree.XMLSchema(etree.parse(str(XSD_PATH), parser))
        return _xsd


# --- schematron selection ------------------------------------------------------------------------------------------

_VOLET_RE = re.compile(r"^CI-SIS_(?P<family>.+)_(?P<version>\d{4}\.\d{2})\.sch$")


def _include_closure(path: Path, seen: list[Path]) -> None:
    path = path.resolve()
    if path in seen or not path.is_file():
        return
    seen.append(path)
    tree = etree.parse(str(path), etree.XMLParser(no_network=True, resolve_entities=False))
    for inc in tree.iter(f"{{{_SCH_NS}}}include"):
        _include_closure(path.parent / inc.get("href", ""), seen)


def _document_templates(volet: Path) -> frozenset[str]:
    """TemplateIds a volet requires on ClinicalDocument (asserted in a ClinicalDocument rule, or rule contexts)."""
    files: list[Path] = []
    _include_closure(volet, files)
    found: set[str] = set()
    for f in files:
        tree = etree.parse(str(f), etree.XMLParser(no_network=True, resolve_entities=False))
        for rule in tree.iter(f"{{{_SCH_NS}}}rule"):
            ctx = (rule.get("context") or "").strip()
            if re.fullmatch(r"/?cda:ClinicalDocument", ctx):
                for a in rule.iter(f"{{{_SCH_NS}}}assert"):
                    found.update(
                        re.findall(r"templateId\[@root\s*=\s*['\"]([\d.]+)['\"]\]", a.get("test", ""))
                    )
            found.update(
                re.findall(r"^\*\[cda:templateId/@root\s*=\s*['\"](1\.2\.250\.1\.213\.1\.1\.1\.[\d.]+)", ctx)
            )
    return frozenset(found - _GENERIC_TEMPLATES)


@dataclass(frozen=True)
class _Volet:
    path: Path
    family: str
    version: str
    templates: frozenset[str]


class SchematronIndex:
    """Document templateId → volet schematron, built by scanning the vendored volet schematrons."""

    def __init__(self, directory: Path = SCHEMATRON_DIR) -> None:
        volets = []
        for path in sorted(directory.glob("CI-SIS_*.sch")):
            m = _VOLET_RE.match(path.name)
            if not m:
                continue
            templates = _document_templates(path)
            if templates:
                volets.append(_Volet(path, m["family"], m["version"], templates))
        self.volets = volets

    def by_template(self) -> dict[str, list[Path]]:
        index: dict[str, list[Path]] = {}
        for v in self.volets:
            for t in v.templates:
                index.setdefault(t, []).append(v.path)
        return index

    def select(self, template_roots: list[str] | set[str] | frozenset[str]) -> list[Path]:
        """Volet schematrons applying to a document: all their document templates are present; within a family
        the latest version; a volet whose templates are a strict subset of another match is dropped (a VAC
        document also carries the VAC-NOTE template)."""
        present = set(template_roots)
        matches = [v for v in self.volets if v.templates <= present]
        matches = [v for v in matches if not any(v.templates < o.templates for o in matches)]
        latest: dict[str, _Volet] = {}
        for v in matches:
            if v.family not in latest or v.version > latest[v.family].version:
                latest[v.family] = v
        return [v.path for v in sorted(latest.values(), key=lambda v: v.family)]


@lru_cache(maxsize=1)
def schematron_index() -> SchematronIndex:
    return SchematronIndex()


# --- schematron compilation ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _kit_digest() -> str:
    """Hash of every vendored schematron resource and of the skeleton: the key of the on-disk XSLT cache."""
    h = hashlib.sha256(f"{_CACHE_FORMAT}|lxml {lxml.__version__}".encode())
    for root in (SCHEMATRON_DIR, _SKELETON_DIR):
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in {".sch", ".xml", ".xsl"}:
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()


def _schematron_to_xslt(sch: Path) -> str:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    doc = etree.parse(str(sch), parser)
    # The ANS files declare xslt2, which the XSLT 1 skeleton refuses; the generated code is run by Saxon anyway.
    doc.getroot().set("queryBinding", "xslt")
    steps = ("iso_dsdl_include.xsl", "iso_abstract_expand.xsl", "iso_svrl_for_xslt1.xsl")
    result: Any = doc
    for step in steps:
        transform = etree.XSLT(etree.parse(str(_SKELETON_DIR / step), parser))
        result = transform(result)
    for template in result.getroot().iter(f"{{{_XSL_NS}}}template"):
        match = template.get("match")
        if match:
            template.set("match", _parent_guarded(match))
    _share_repeated_checks(result.getroot())
    return str(etree.tostring(result, encoding="unicode"))


_VARIABLE_REF = re.compile(r"\$([A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?)")
_SHARED_CHECK_PREFIX = "opensegur-check-"


def _share_repeated_checks(stylesheet: etree._Element) -> None:
    """Each assert or report written out in several rules → one named template, called from each of them.

    ART-DECOR repeats the datatype checks of an element (nullFlavor, II, CD…) in every rule whose context has
    that type: structuration minimale has 13,140 assert/report blocks, of which 884 are distinct. Saxon-HE
    compiles each copy into its own expression tree: ~420 MB of the validation process's heap for structuration
    minimale alone, twice that while the collector copies it, and most of the 12 s compile. ``xsl:call-template``
    keeps the focus (context item, position, size), so a called check evaluates exactly as the inline one and
    writes the same SVRL at the same place. A block that reads a variable of its rule (``sch:let``) stays inline:
    a named template does not see the caller's variables. Checked on the ANS examples by the tests.
    """
    xsl = f"{{{_XSL_NS}}}"
    groups: dict[bytes, list[tuple[etree._Element, etree._Element]]] = {}
    for template in stylesheet.iterchildren(f"{xsl}template"):
        local = {v.get("name") for v in template.iter(f"{xsl}variable", f"{xsl}param")}
        for block in template.iterchildren(f"{xsl}choose", f"{xsl}if"):
            inner = {v.get("name") for v in block.iter(f"{xsl}variable")}
            refs = {
                name
                for el in block.iter()
                if isinstance(el.tag, str)
                for value in el.attrib.values()
                for name in _VARIABLE_REF.findall(value)
            }
            if refs & (local - inner):
                continue
            # The serialisation carries the in-scope namespaces: equal bytes, equal meaning.
            groups.setdefault(etree.tostring(block, with_tail=False), []).append((template, block))
    shared = 0
    for blocks in groups.values():
        if len(blocks) < 2:
            continue
        shared += 1
        name = f"{_SHARED_CHECK_PREFIX}{shared}"
        for template, block in blocks:
            call = etree.Element(f"{xsl}call-template", name=name)
            call.tail, block.tail = block.tail, None
            template.replace(block, call)
        etree.SubElement(stylesheet, f"{xsl}template", name=name).append(blocks[0][1])


_QNAME_STEP = re.compile(r"^([A-Za-z_][\w.-]*:[A-Za-z_][\w.-]*|[A-Za-z_][\w.-]*)(?=\[|$)")


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside predicates, parentheses and string literals."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parent_guarded(pattern: str) -> str:
    """``…/hl7:x[p]/*[q]`` → ``…/hl7:x[p]/*[parent::hl7:x][q]``: same nodes, same priority, far cheaper.

    The CI-SIS schematrons (ART-DECOR) check "no unexpected element" with a hundred-odd rules whose last step is
    ``*[not(self::a | self::b …)]``. Saxon tests a pattern from its last step, so every element of the document
    evaluated every one of those unions before looking at its parent: half the time of structuration minimale.
    The parent's name is implied by the ``/`` step, so testing it first changes no result (checked on the ANS
    examples by the tests) and only skips the work. Unions, ``//`` steps and attribute parents are left as they are.
    """
    if len(_split_top_level(pattern, "|")) > 1:
        return pattern
    steps = _split_top_level(pattern, "/")
    if len(steps) < 2 or not steps[-1].startswith("*["):
        return pattern
    parent = _QNAME_STEP.match(steps[-2])
    if parent is None:
        return pattern
    steps[-1] = f"*[parent::{parent.group(1)}]{steps[-1][1:]}"
    return "/".join(steps)


def _with_base(xslt_text: str, sch: Path) -> str:
    # doc()/document() calls in the rules use paths relative to the schematron file (e.g. include/voc-….xml,
    # ../jeuxDeValeurs/JDV_….xml); the cached text does not carry its location, so it is set at load time.
    root = etree.fromstring(xslt_text.encode("utf-8"), etree.XMLParser(huge_tree=True, no_network=True))
    root.set(_XML_BASE, sch.resolve().as_uri())
    return str(etree.tostring(root, encoding="unicode"))


_saxon_lock = threading.Lock()
_saxon_processor: Any = None


def _processor() -> Any:
    global _saxon_processor
    with _saxon_lock:
        if _saxon_processor is None:
            try:
                from saxonche import PySaxonProcessor
            except ImportError as exc:  # pragma: no cover - dependency missing in a broken install
                raise ValidationSetupError(
                    "saxonche n'est pas installé : validation schematron impossible"
                ) from exc
            processor = PySaxonProcessor(license=False)
            # SaxonC-HE 13.1's loop-lifting optimiser aborts the whole process ("Bad parent pointer in expression
            # tree", a fatal error Python cannot catch) when compiling CI-SIS_BIO-CR-BIO_2024.01; without it the
            # compile succeeds, is no slower, and gives the same reports on structuration minimale.
            processor.set_configuration_property("http://saxon.sf.net/feature/optimizationLevel", "-l")
            _saxon_processor = processor
        return _saxon_processor


class _CompiledSchematron:
    def __init__(self, path: Path, executable: Any) -> None:
        self.path = path
        self._master = executable
        self._local = threading.local()
        self._clone_lock = threading.Lock()

    def executable(self) -> Any:
        exe = getattr(self._local, "exe", None)
        if exe is None:
            with self._clone_lock:
                exe = self._master.clone()
            self._local.exe = exe
        return exe


_compiled_lock = threading.Lock()
_compiled: dict[Path, _CompiledSchematron] = {}
_compile_locks: dict[Path, threading.Lock] = {}


def _schematron_to_cache(sch: Path, cache_dir: Path | None) -> tuple[str, bool]:
    """The generated XSLT of a schematron, from the disk cache when present; whether it came from there."""
    cache_file = cache_dir / f"{sch.stem}-{_kit_digest()[:20]}.xsl" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        return cache_file.read_text(encoding="utf-8"), True
    xslt_text = _schematron_to_xslt(sch)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(xslt_text)
        os.replace(tmp, cache_file)  # atomic: a concurrent process never reads half a file
    return xslt_text, False


def _compiled_schematron(sch: Path, cache_dir: Path | None) -> _CompiledSchematron:
    sch = sch.resolve()
    with _compiled_lock:
        if sch in _compiled:
            return _compiled[sch]
        lock = _compile_locks.setdefault(sch, threading.Lock())
    with lock:  # one compile per schematron even when several threads ask at once
        with _compiled_lock:
            if sch in _compiled:
                return _compiled[sch]
        started = time.perf_counter()
        xslt_text, from_cache = _schematron_to_cache(sch, cache_dir)
        generated = time.perf_counter()
        xslt = _processor().new_xslt30_processor()
        try:
            executable = xslt.compile_stylesheet(stylesheet_text=_with_base(xslt_text, sch), encoding="utf-8")
        except Exception as exc:
            raise ValidationSetupError(f"compilation du schematron {sch.name} impossible : {exc}") from exc
        log.info(
            "schematron %s: XSLT %.1f s (%s), Saxon compile %.1f s",
            sch.name,
            generated - started,
            "disk cache" if from_cache else "generated",
            time.perf_counter() - generated,
        )
        compiled = _CompiledSchematron(sch, executable)
        with _compiled_lock:
            _compiled[sch] = compiled
        return compiled


# --- SVRL → findings -----------------------------------------------------------------------------------------------

_BLOCKING_ROLES = {"", "error", "fatal", "erreur"}


def _svrl_findings(svrl: str, schematron_name: str, *, strict: bool) -> list[Finding]:
    root = etree.fromstring(svrl.encode("utf-8"), etree.XMLParser(huge_tree=True, no_network=True))
    findings = []
    for el in root.iter(f"{{{_SVRL_NS}}}failed-assert", f"{{{_SVRL_NS}}}successful-report"):
        role = (el.get("role") or "").strip().lower()
        if role in {"info", "information", "hint"}:
            continue  # informational reports (e.g. "template instance found") are not defects
        text_el = el.find(f"{{{_SVRL_NS}}}text")
        message = " ".join("".join(text_el.itertext()).split()) if text_el is not None else ""
        kind = "assert" if el.tag.endswith("failed-assert") else "report"
        blocking = strict and role in _BLOCKING_ROLES and kind == "assert"
        findings.append(
            Finding(
                "blocking" if blocking else "warning",
                "schematron",
                f"{schematron_name}:{el.get('id') or role or kind}",
                message,
                el.get("location"),
            )
        )
    return findings


# --- validator -----------------------------------------------------------------------------------------------------


# The schematron rules read the structure and the attributes of nonXMLBody/text (mediaType, representation), never
# the base64 payload itself, which the XSD has already typed. Handing Saxon a few hundred characters of it instead of
# megabytes keeps memory flat (a 50 MB PDF was copied ~13 times) and the rules ~30 % faster.
_BODY_KEEP = 256


def _serialise_for_rules(root: etree._Element) -> str:
    texts = [
        t
        for body in root.iterfind(f"{{{CDA_NS}}}component/{{{CDA_NS}}}nonXMLBody")
        for t in body.iterfind(f"{{{CDA_NS}}}text")
        if t.text and len(t.text) > _BODY_KEEP
    ]
    saved = [t.text for t in texts]
    try:
        for t in texts:
            t.text = t.text[:_BODY_KEEP] if t.text else t.text
        return str(etree.tostring(root, encoding="unicode"))
    finally:
        for t, original in zip(texts, saved, strict=True):
            t.text = original


class CdaValidator:
    """Reusable validator; cheap to create (compiled artefacts are shared per process), safe across threads."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        max_bytes: int | None = None,
        processes: int = 0,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    ) -> None:
        """``time_limit_s`` bounds the schematrons of one document in the validation processes (a Saxon transform
        in a thread cannot be interrupted: with ``processes=0`` there is no limit)."""
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_bytes = max_bytes
        self._pool = _SchematronPool(processes, self.cache_dir, time_limit_s) if processes > 0 else None

    def schematrons_for(self, template_roots: list[str]) -> list[Path]:
        return [STRUCTURATION_MINIMALE, *schematron_index().select(template_roots)]

    def warm_up(self, schematrons: list[Path] | None = None) -> None:
        """Compile ahead of the first document (e.g. in a background thread at service start)."""
        _schema()
        if self._pool is not None:
            # Generate the XSLT once here so the processes find it in the disk cache instead of racing for it.
            _schematron_to_cache(STRUCTURATION_MINIMALE, self.cache_dir)
            self._pool.warm_up()
            return
        for sch in schematrons or [STRUCTURATION_MINIMALE]:
            _compiled_schematron(sch, self.cache_dir)

    def validate(self, document: etree._Element | bytes, *, strict: bool = False) -> list[Finding]:
        if isinstance(document, bytes | bytearray):
            try:
                root = (
                    parse_untrusted(bytes(document), self.max_bytes)
                    if self.max_bytes
                    else parse_untrusted(bytes(document))
                )
            except CdaError as exc:
                return [Finding("blocking", "xml", exc.code, exc.message_fr, exc.xpath)]
        else:
            root = document
        if root.tag != f"{{{CDA_NS}}}ClinicalDocument":
            return [
                Finding(
                    "blocking",
                    "xml",
                    "CDA_ROOT",
                    f"L'élément racine doit être ClinicalDocument ({CDA_NS})",
                    "/",
                )
            ]
        findings = self._xsd(root)
        findings += self._identity(root)
        if any(f.severity == "blocking" for f in findings):
            # The document is refused whatever the rules say: running them only gives a hostile document a
            # second, slower, place to spend the validation process's time.
            return findings
        findings += self._schematrons(root, strict=strict)
        return findings

    def _xsd(self, root: etree._Element) -> list[Finding]:
        schema = _schema()
        with _xsd_lock:  # libxml2 schema validation context keeps its error log on the object
            valid = schema.validate(root)
            errors = list(schema.error_log) if not valid else []
        return [
            Finding(
                "blocking", "xsd", "XSD_INVALID", e.message, f"ligne {e.line}: {e.path}" if e.path else None
            )
            for e in errors
        ]

    def _identity(self, root: etree._Element) -> list[Finding]:
        findings = []
        for el in root.iterfind("{*}recordTarget/{*}patientRole/{*}id"):
            oid, matricule = el.get("root") or "", el.get("extension") or ""
            if is_ins_oid(oid):
                try:
                    Ins.parse(matricule, oid)
                except IdentityError as exc:
                    findings.append(
                        Finding(
                            "blocking",
                            "identity",
                            exc.code,
                            exc.message,
                            "/ClinicalDocument/recordTarget/patientRole/id",
                        )
                    )
        return findings

    def _schematrons(self, root: etree._Element, *, strict: bool) -> list[Finding]:
        templates = [t.get("root", "") for t in root.iterfind(f"{{{CDA_NS}}}templateId")]
        schematrons = self.schematrons_for(templates)
        text = _serialise_for_rules(root)
        if self._pool is None:
            return run_schematrons(text, schematrons, self.cache_dir, strict=strict)
        return self._pool.run(text, schematrons, strict=strict)

    def close(self) -> None:
        """Stop the validation processes, if any (the platform calls it on shutdown)."""
        if self._pool is not None:
            self._pool.close()


def run_schematrons(
    text: str, schematrons: list[Path], cache_dir: Path | None, *, strict: bool
) -> list[Finding]:
    """Run the given schematrons over a serialised CDA; the same code serves threads and validation processes."""
    findings: list[Finding] = []
    if not schematrons:
        return findings
    node = _processor().parse_xml(xml_text=text, encoding="utf-8")
    for sch in schematrons:
        compiled = _compiled_schematron(sch, cache_dir)
        try:
            svrl = compiled.executable().transform_to_string(xdm_node=node)
        except Exception as exc:
            # A dynamic error of the ANS rules (e.g. a missing JDV file) is a kit defect, not the document's.
            findings.append(
                Finding("warning", "schematron", f"{sch.stem}:RUNTIME", f"Exécution impossible : {exc}", None)
            )
            continue
        findings += _svrl_findings(svrl, sch.stem, strict=strict)
    return findings


# --- validation processes ------------------------------------------------------------------------------------------
# SaxonC keeps the GIL for the whole transform, so schematron runs in threads use one core however many there are,
# and they starve the rest of the platform (MLLP, HTTP, signatures). A small pool of processes, each with its own
# compiled schematrons, runs them beside the platform's Python.

_worker_cache_dir: Path | None = None


def _pool_init(cache_dir: Path | None) -> None:
    global _worker_cache_dir
    _worker_cache_dir = cache_dir
    _compiled_schematron(
        STRUCTURATION_MINIMALE, cache_dir
    )  # every document needs it: compile before the first


def _pool_run(text: str, schematrons: list[str], strict: bool) -> list[Finding]:
    return run_schematrons(text, [Path(p) for p in schematrons], _worker_cache_dir, strict=strict)


def _pool_ready() -> bool:
    return True


class _SchematronPool:
    def __init__(self, processes: int, cache_dir: Path | None, time_limit_s: float) -> None:
        self.processes = processes
        self.cache_dir = cache_dir
        self.time_limit_s = time_limit_s
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def _get(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                # spawn, not fork: the parent may already hold a Saxon (GraalVM) runtime and threads.
                self._executor = concurrent.futures.ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_pool_init,
                    initargs=(self.cache_dir,),
                )
            return self._executor

    def warm_up(self) -> None:
        # One task per process, submitted together, so every process starts and compiles before the first document.
        executor = self._get()
        for f in [executor.submit(_pool_ready) for _ in range(self.processes)]:
            f.result()

    def run(self, text: str, schematrons: list[Path], *, strict: bool) -> list[Finding]:
        paths = [str(p) for p in schematrons]
        for attempt in (1, 2):
            executor = self._get()
            try:
                return executor.submit(_pool_run, text, paths, strict).result(timeout=self.time_limit_s)
            except TimeoutError:
                # The process is still busy with this document and cannot be interrupted: it is stopped, and
                # the next document gets a fresh pool (its compiled schematrons come back from the disk cache).
                log.warning(
                    "schematron validation over %.0f s: validation processes restarted", self.time_limit_s
                )
                self._kill(executor)
                return [
                    Finding(
                        "blocking",
                        "schematron",
                        "VALIDATION_TIMEOUT",
                        f"Validation interrompue après {self.time_limit_s:.0f} s : document trop coûteux à "
                        "valider (structure anormale)",
                        None,
                    )
                ]
            except concurrent.futures.process.BrokenProcessPool:
                # A validation process died (killed, out of memory): start a fresh pool and try once more.
                log.warning("validation process pool broken (attempt %s): restarting it", attempt)
                with self._lock:
                    if self._executor is executor:
                        executor.shutdown(wait=False, cancel_futures=True)
                        self._executor = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _kill(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        # No public way to stop a busy worker before Python 3.14's kill_workers(). SIGKILL, not SIGTERM: a
        # process busy in the Saxon (GraalVM) native runtime was seen on a loaded CI host alive 10 s after SIGTERM.
        for process in list(getattr(executor, "_processes", {}).values()):
            process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
