"""``opensegur conformance report --out DIR``: run the tests that prove requirements, write the report."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from opensegur.conformance.catalogue import load_catalogue
from opensegur.conformance.report import PROVEN, render_html, verdicts
from opensegur.ops.pdf import print_to_pdf

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    conformance = sub.add_parser("conformance", help="conformance report for a référencement file")
    actions = conformance.add_subparsers(dest="conformance_command", required=True)
    report = actions.add_parser(
        "report", help="run the tests that prove each requirement and write an HTML (and PDF) report"
    )
    report.add_argument("--out", type=Path, required=True, metavar="DIR")
    report.add_argument(
        "--tests",
        type=Path,
        default=Path("tests"),
        help="the test tree of the OpenSégur checkout (default: ./tests)",
    )
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.tests.is_dir():
        print(f"Tests introuvables : {args.tests} (lancer depuis le dépôt OpenSégur)", file=sys.stderr)
        return 2
    results_file = out / "resultats.json"
    with tempfile.TemporaryDirectory() as tmp:
        # The tests run in their own interpreter: their fixtures (platforms, sandboxes, ports) never touch ours.
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(args.tests),
                "-m",
                "requirement",
                "-p",
                "opensegur.conformance.plugin",
                f"--conformance-json={results_file}",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--basetemp={tmp}/pytest",
            ],
            check=False,
        )
    if not results_file.exists():
        print(f"La campagne de tests n'a produit aucun résultat (code {run.returncode})", file=sys.stderr)
        return 1
    results = json.loads(results_file.read_text(encoding="utf-8"))
    items, unknown = verdicts(load_catalogue(), results)
    html = out / "index.html"
    html.write_text(render_html(items), encoding="utf-8")
    pdf = _pdf(html)
    proven = sum(v.status == PROVEN for v in items)
    print(f"Rapport : {html}" + (f" et {pdf}" if pdf else " (PDF non produit : Chromium absent)"))
    print(f"{proven} exigence(s) conforme(s) sur {len(items)}")
    for rid in unknown:
        print(f"Exigence inconnue du catalogue citée par un test : {rid}", file=sys.stderr)
    return 0 if proven == len(items) and not unknown else 1


def _pdf(html: Path) -> Path | None:
    """The same page printed to PDF by headless Chromium, when it is installed (it is in CI)."""
    pdf = html.with_suffix(".pdf")
    return pdf if print_to_pdf(html, pdf) else None
