"""No import cycle in the package, function-local imports included: a module that needs another's work imports it
at the top, and a back-reference is only for the type checker (under ``TYPE_CHECKING``)."""

from __future__ import annotations

import ast
from pathlib import Path

import opensegur

ROOT = Path(opensegur.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            found += [n for child in node.orelse for n in _runtime_imports(child)]
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        found += _runtime_imports(node)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_a_cycle_is_seen_even_through_a_function_local_import() -> None:
    graph = import_graph()
    assert "opensegur.flows.mss_outbound" in graph["opensegur.flows.dmp_feed"]
    assert cycles({**graph, "opensegur.flows.mss_outbound": {"opensegur.flows.dmp_feed"}}) != []
    local = ast.parse("def f():\n    from opensegur.flows import dmp_feed\n")
    assert [type(n).__name__ for n in _runtime_imports(local)] == ["ImportFrom"]
    guarded = ast.parse("if TYPE_CHECKING:\n    from opensegur.flows import dmp_feed\n")
    assert _runtime_imports(guarded) == []
