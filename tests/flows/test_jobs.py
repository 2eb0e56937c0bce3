"""The table of job kinds says the truth: each kind names a factory that exists, and a platform with every
component configured (DMP, MSSanté, PACS) has a handler for every kind and for nothing else."""

from __future__ import annotations

import ast
import importlib
import runpy
from pathlib import Path

import opensegur
from opensegur.flows.jobs import GIVEN_UP, HANDLER_FACTORIES, PROMPT_KINDS, JobKind
from tests.dmp import helpers
from tests.dmp.drimbox_sites import drimbox_site

schematron_cache = helpers.schematron_cache


def test_every_kind_names_a_factory_that_exists() -> None:
    assert set(HANDLER_FACTORIES) == set(JobKind)
    for kind, path in HANDLER_FACTORIES.items():
        module, _, name = path.partition(":")
        assert callable(getattr(importlib.import_module(module), name, None)), (kind, path)


def test_kinds_keep_the_values_already_queued() -> None:
    """Released values: the queues of running installations hold jobs under these names."""
    assert {k.value for k in JobKind} == {
        "insi.search",
        "document.process",
        "dmp.deliver",
        "zam.send",
        "dmp.prefetch",
        "mss.send",
        "mss.appointment",
        "mss.zam",
        "mss.integrate",
        "mss.to_dpi",
        "mss.mdn",
        "mss.results_to_dpi",
        "drimbox.publish",
        "drimbox.withdraw",
        "drimbox.import",
    }


async def test_a_fully_configured_platform_handles_every_kind(tmp_path: Path, schematron_cache: Path) -> None:
    async with drimbox_site(tmp_path, schematron_cache) as (rt, _pacs):
        assert set(rt.workers.handlers) == set(JobKind)
        # and hears of the jobs given up with the functions the table names
        assert {kind: f"{f.__module__}:{f.__name__}" for kind, f in rt.workers.given_up.items()} == dict(
            GIVEN_UP
        )


def test_the_kinds_a_person_waits_on_are_queued_in_the_prompt_lane() -> None:
    """Read from every ``jobs.enqueue(session, JobKind.X, …)`` of the package: the lane follows PROMPT_KINDS."""
    queued: dict[str, set[bool]] = {}
    for path in Path(opensegur.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "jobs.enqueue"):
                continue
            kind = ast.unparse(node.args[1])
            lanes = [ast.unparse(k.value) for k in node.keywords if k.arg == "lane"]
            queued.setdefault(kind, set()).add(lanes == ["jobs.Lane.PROMPT"])
    assert {f"JobKind.{k.name}" for k in PROMPT_KINDS} <= set(queued)
    for kind, prompt in queued.items():
        assert prompt == {kind.removeprefix("JobKind.") in {k.name for k in PROMPT_KINDS}}, kind
    # The migration that added the lanes moved the prompt jobs already queued.
    migration = Path(opensegur.__file__).parent / "store/migrations/versions/0011_job_lanes.py"
    assert set(runpy.run_path(str(migration))["PROMPT_KINDS"]) == {k.value for k in PROMPT_KINDS}
