"""pytest plugin of the conformance report: records, for every test marked ``requirement``, the requirements it
proves, its outcome and the exchanges it attached with ``record_property("échange …", text)``.

Loaded with ``-p opensegur.conformance.plugin --conformance-json FILE`` by ``opensegur conformance report``.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

EXCHANGE_PREFIX = "échange"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--conformance-json", default=None, help="where the conformance results are written")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requirement(*ids): the conformance requirements this test proves")
    config._conformance_results = []  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    ids = [str(i) for mark in item.iter_markers("requirement") for i in mark.args]
    if not ids:
        return
    # One line per test: its call, or the setup when the test never ran (skipped or broken fixture).
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item.config._conformance_results.append(  # type: ignore[attr-defined]
            {
                "test": item.nodeid,
                "requirements": ids,
                "outcome": report.outcome,
                "duration_s": round(report.duration, 3),
                "exchanges": [
                    {"label": str(name), "text": str(value)}
                    for name, value in report.user_properties
                    if str(name).startswith(EXCHANGE_PREFIX)
                ],
            }
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = session.config.getoption("--conformance-json")
    if target:
        Path(target).write_text(
            json.dumps(session.config._conformance_results, ensure_ascii=False, indent=1),  # type: ignore[attr-defined]
            encoding="utf-8",
        )
