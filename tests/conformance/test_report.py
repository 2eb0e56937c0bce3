"""The conformance report is generated from a test run, never written by hand: every requirement of the catalogue
is proven by a marked test, every mark names a listed requirement, and the report says so in its HTML."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

from opensegur.conformance.catalogue import Requirement, load_catalogue
from opensegur.conformance.report import render_html, verdicts

TESTS = Path(__file__).resolve().parents[1]
MARK = re.compile(r"pytest\.mark\.requirement\(([^)]*)\)")


def _marked_ids() -> set[str]:
    found: set[str] = set()
    for path in TESTS.rglob("test_*.py"):
        for args in MARK.findall(path.read_text(encoding="utf-8")):
            found |= set(re.findall(r'"([A-Z0-9-]+)"', args))
    return found


def test_every_requirement_is_claimed_by_a_test_and_every_claim_is_listed() -> None:
    listed = {r.id for r in load_catalogue()}
    assert listed == _marked_ids()


def test_verdicts_follow_the_worst_outcome_and_the_page_escapes_what_tests_attach() -> None:
    req = [Requirement("A", "Volet", "T", "titre", "réf"), Requirement("B", "Volet", "T", "t", "r")]
    results = [
        {"test": "t1", "requirements": ["A"], "outcome": "passed", "exchanges": []},
        {"test": "t2", "requirements": ["A", "Z"], "outcome": "failed", "exchanges": []},
        {
            "test": "t3",
            "requirements": ["B"],
            "outcome": "passed",
            "exchanges": [{"label": "échange", "text": "<script>alert(1)</script>"}],
        },
    ]
    items, unknown = verdicts(req, results)
    assert [v.status for v in items] == ["Non conforme", "Conforme"] and unknown == ["Z"]
    html = render_html(items, now=dt.datetime(2026, 12, 5, 8, 0))
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "1 conforme(s)" in html and "1 non conforme(s)" in html and "le 05/12/2026 à 08:00" in html


def test_the_report_command_runs_the_marked_tests_and_every_requirement_is_proven(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "opensegur.cli",
            "conformance",
            "report",
            "--out",
            str(tmp_path),
            "--tests",
            str(TESTS),
        ],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    catalogue = load_catalogue()
    for requirement in catalogue:
        row = re.search(rf'<tr id="{requirement.id}">(.*?)</tr>', html, re.S)
        assert row is not None, requirement.id
        assert ">Conforme<" in row.group(1), requirement.id
    assert f"{len(catalogue)} conforme(s)" in html
    # The messages exchanged are in the report (test identities only: PAT-TROIS, the ANS examples' patient).
    assert "échange ITI-41 — requête" in html and "279035121518989" in html
    assert f"{len(catalogue)} exigence(s) conforme(s) sur {len(catalogue)}" in run.stdout
