"""The validation process's own baseline: Saxon alone, the same document's schematrons run in a loop.

What the validation process receives for each document is the CDA serialised for the rules; what Saxon must do
with it is parse it and run each compiled schematron (structuration minimale and the volet of its templateIds).
Measured here in a process of its own, in CPU time, so that the validation process's CPU per document in the DMP
feed can be divided by it. What is left above 1 is the process's own work (the pool's hand-over, reading the SVRL
into findings: 0.2 ms per document in a loop) and what the same Saxon work costs run among the platform's and the
sandbox's processes rather than in a hot loop.
The compiled schematrons and the serialisation are the platform's own (private names of
``opensegur.content.validation``): the baseline runs the very stylesheets the validation process runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from bench.mdm_factory import _template
from opensegur.content.cda import CDA_NS, parse_untrusted
from opensegur.content.validation import (
    CdaValidator,
    _compiled_schematron,
    _processor,
    _serialise_for_rules,
)

# Saxon's first transforms are several times slower than its steady state (12.7 ms per document over 100 runs after
# 3 warm-up runs, 20 ms over 30): the DMP feed's validation process has long reached it by its measured burst.
WARM_UP = 50


def _run(n: int, cache_dir: Path) -> float:
    root = parse_untrusted(_template()[1])
    templates = [t.get("root", "") for t in root.iterfind(f"{{{CDA_NS}}}templateId")]
    text = _serialise_for_rules(root)
    executables = [
        _compiled_schematron(sch, cache_dir).executable()
        for sch in CdaValidator(cache_dir).schematrons_for(templates)
    ]

    def once() -> None:
        node = _processor().parse_xml(xml_text=text, encoding="utf-8")
        for exe in executables:
            exe.transform_to_string(xdm_node=node)

    for _ in range(WARM_UP):
        once()
    start = time.process_time()
    for _ in range(n):
        once()
    return (time.process_time() - start) * 1000 / n


def saxon_alone_ms(n: int, cache_dir: Path) -> float:
    """CPU milliseconds per document of Saxon alone on the DMP feed's document, in a fresh process."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_run, n, cache_dir).result()
