"""The table of job kinds says the truth: each kind names a factory that exists, and a platform with every
component configured (DMP, MSSanté, PACS) has a handler for every kind and for nothing else."""

from __future__ import annotations

import importlib
from pathlib import Path

from opensegur.flows.jobs import HANDLER_FACTORIES, JobKind
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
