"""Refresh the vendored subset of the ANS CI-SIS conformance kit (``opensegur/content/cisis/``).

Run: ``python -m opensegur.content.vendor_cisis /path/to/TestContenuCDA-3-0`` (a checkout of the ANS repository
``ansforge/TestContenuCDA-3-0``, or the read-only copy in ``/work/shared/cisis``). The product must not read the
kit from outside its own package at run time, and the full kit (~50 MB with examples and RDF terminologies) is
too large to ship, so only what the validator loads is copied: the CDA XSDs, every JDV, the structuration
minimale profile and the include closure of the volets listed in :data:`VOLETS`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from lxml import etree

SCH_NS = "http://purl.oclc.org/dsdl/schematron"

# Volets a hospital DPI produces for the DMP in Ségur Vague 2, plus the ones of the ANS examples used in tests.
# BIO-CR-BIO_2023.01 is not listed: its include folders are empty in the ANS repository (see README.md).
VOLETS = (
    "CI-SIS_LDL-SES_2022.01.sch",
    "CI-SIS_LDL-EES_2022.01.sch",
    "CI-SIS_IMG-CR-IMG_2024.01.sch",
    "CI-SIS_BIO-CR-BIO_2024.01.sch",
    "CI-SIS_VAC-NOTE_2023.01.sch",
    "CI-SIS_VAC_2023.01.sch",
)

_DEST = Path(__file__).resolve().parent / "cisis"
# Literal paths to XML resources inside schematron text (let values passed to doc()/document()).
_XML_REF_RE = re.compile(r"""['"]([^'"\s]+\.xml)['"]""")


def _include_closure(sch: Path, seen: set[Path]) -> None:
    sch = sch.resolve()
    if sch in seen or not sch.is_file():
        return
    seen.add(sch)
    tree = etree.parse(str(sch), etree.XMLParser(resolve_entities=False, no_network=True))
    for inc in tree.iter(f"{{{SCH_NS}}}include"):
        _include_closure(sch.parent / inc.get("href", ""), seen)


def vendor(kit: Path, dest: Path = _DEST) -> list[Path]:
    kit = kit.resolve()
    files: set[Path] = set()
    files.update(p for p in (kit / "infrastructure" / "cda").rglob("*") if p.is_file())
    files.update((kit / "jeuxDeValeurs").glob("*.xml"))
    files.update(p for p in (kit / "schematrons" / "abstract").rglob("*.sch"))
    files.update(
        p for p in (kit / "schematrons" / "profils" / "structurationMinimale").rglob("*") if p.is_file()
    )
    closure: set[Path] = set()
    for volet in VOLETS:
        _include_closure(kit / "schematrons" / volet, closure)
    files.update(closure)
    # Resources the included rules load by a path relative to the including volet (schematrons/).
    for sch in closure:
        for ref in _XML_REF_RE.findall(sch.read_text(encoding="utf-8")):
            candidate = (kit / "schematrons" / ref).resolve()
            if candidate.is_file() and candidate.is_relative_to(kit):
                files.add(candidate)
    for extra in ("SOURCE.txt", "LICENSE", "LICENSE.md", "LICENCE"):
        if (kit / extra).is_file():
            files.add((kit / extra).resolve())
    copied = []
    for src in sorted(files):
        if src.stat().st_size == 0:
            continue  # empty placeholders of the ANS repository (see README.md)
        target = dest / src.relative_to(kit)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kit", type=Path, help="checkout of ansforge/TestContenuCDA-3-0")
    args = parser.parse_args(argv)
    copied = vendor(args.kit)
    size = sum(p.stat().st_size for p in copied)
    print(f"{len(copied)} files, {size / 1e6:.1f} MB copied into {_DEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
