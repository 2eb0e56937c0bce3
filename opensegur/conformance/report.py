"""From the recorded test results to the report: one verdict per requirement, rendered as French HTML."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment

from opensegur import __version__
from opensegur.conformance.catalogue import Requirement

__all__ = ["Verdict", "render_html", "verdicts"]

PROVEN, FAILED, UNPROVEN = "Conforme", "Non conforme", "Non prouvé"


@dataclass
class Verdict:
    requirement: Requirement
    tests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        outcomes = {t["outcome"] for t in self.tests}
        if "failed" in outcomes:
            return FAILED
        return PROVEN if "passed" in outcomes else UNPROVEN


def verdicts(
    catalogue: Sequence[Requirement], results: Sequence[dict[str, Any]]
) -> tuple[list[Verdict], list[str]]:
    """(one verdict per requirement of the catalogue, requirement ids tests name that the catalogue lacks)."""
    by_id = {r.id: Verdict(r) for r in catalogue}
    unknown: set[str] = set()
    for result in results:
        for rid in result["requirements"]:
            if rid in by_id:
                by_id[rid].tests.append(result)
            else:
                unknown.add(rid)
    return list(by_id.values()), sorted(unknown)


_TEMPLATE = """<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>Rapport de conformité — OpenSégur {{ version }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #111827; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
th, td { border: 1px solid #d1d5db; padding: .3rem .5rem; text-align: left; vertical-align: top; font-size: .9rem; }
th { background: #f3f4f6; }
.Conforme { color: #166534; font-weight: 600; } .Non { color: #b91c1c; font-weight: 600; }
.resume span { display: inline-block; margin-right: 1.5rem; font-size: 1.1rem; }
pre { white-space: pre-wrap; word-break: break-all; background: #f9fafb; padding: .5rem; font-size: .75rem; }
code { font-size: .75rem; word-break: break-all; }
table { table-layout: fixed; } th:nth-child(1) { width: 28%; } th:nth-child(2), th:nth-child(3) { width: 12%; }
th:nth-child(4) { width: 9%; }
</style></head><body>
<h1>Rapport de conformité — OpenSégur {{ version }}</h1>
<p>Produit le {{ when }} par <code>opensegur conformance report</code> : chaque exigence ci-dessous est prouvée par les
tests nommés, exécutés contre le bac à sable (DMP, MSSanté, INSi) avec les seules identités de test.</p>
<p class="resume"><span class="Conforme">{{ counts["Conforme"] }} conforme(s)</span>
<span class="Non">{{ counts["Non conforme"] }} non conforme(s)</span>
<span class="Non">{{ counts["Non prouvé"] }} non prouvée(s)</span></p>
{% for volet, items in groups %}
<h2>{{ volet }}</h2>
<table><thead><tr><th>Exigence</th><th>Transaction</th><th>Référence</th><th>Résultat</th><th>Tests</th></tr></thead><tbody>
{% for v in items %}
<tr id="{{ v.requirement.id }}"><td><strong>{{ v.requirement.id }}</strong><br>{{ v.requirement.title }}</td>
<td>{{ v.requirement.transaction }}</td><td>{{ v.requirement.reference }}</td>
<td class="{{ v.status.split()[0] }}">{{ v.status }}</td>
<td>{% for t in v.tests %}<div><code>{{ t.test }}</code> — {{ outcome_fr[t.outcome] }}
{% for e in t.exchanges %}<details><summary>{{ e.label }}</summary><pre>{{ e.text }}</pre></details>{% endfor %}
</div>{% else %}aucun test{% endfor %}</td></tr>
{% endfor %}
</tbody></table>
{% endfor %}
</body></html>
"""
_OUTCOME_FR = {"passed": "réussi", "failed": "échoué", "skipped": "non exécuté"}


def render_html(items: Sequence[Verdict], *, now: dt.datetime | None = None) -> str:
    groups: dict[str, list[Verdict]] = {}
    for v in items:
        groups.setdefault(v.requirement.volet, []).append(v)
    counts = {PROVEN: 0, FAILED: 0, UNPROVEN: 0}
    for v in items:
        counts[v.status] += 1
    template = Environment(autoescape=True).from_string(_TEMPLATE)
    return template.render(
        version=__version__,
        when=(now or dt.datetime.now().astimezone()).strftime("%d/%m/%Y à %H:%M"),
        groups=list(groups.items()),
        counts=counts,
        outcome_fr=_OUTCOME_FR,
    )
