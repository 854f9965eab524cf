"""The shape of the source tree: packages point one way, and no module is too long to read.

Read from the source with ``ast`` (nothing is imported): every ``import`` counts, at module
level, inside functions and under ``TYPE_CHECKING`` alike, since each is a dependency a reader
has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "pneumonode"
MAX_LINES = 800

#: Imports that close a cycle between top-level units, known and owned elsewhere, with the way
#: out. Left out of the graph; an entry that no longer closes a cycle fails the test, so that it
#: is removed here. (config checks settings with parsers that import nothing of pneumonode's,
#: ``addresses`` and ``selection_rules``, below both config and the packages that use them.)
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}
#: Modules over MAX_LINES, known and owned elsewhere; an entry that is no longer over fails.
KNOWN_LONG: dict[str, str] = {}


def _unit(module: str) -> str | None:
    """The top-level package or module of ``pneumonode.x.y`` (``x``); None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pneumonode" else None


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    """Whether ``pneumonode.a.b`` is a module or package in the source tree."""
    path = SOURCE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> Iterator[str]:
    """The pneumonode modules ``path`` imports, as dotted names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            # `from pneumonode import cli` names a module, `from pneumonode import __version__`
            # an attribute of the package
            for alias in node.names:
                if _is_module(f"{target}.{alias.name}"):
                    yield f"{target}.{alias.name}"


def _sources() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    """Top-level unit -> the other top-level units it imports."""
    graph: dict[str, set[str]] = {}
    for path in _sources():
        source = _unit(_module_name(path))
        if source is None:
            continue
        edges = graph.setdefault(source, set())
        for imported in _imports(path):
            target = _unit(imported)
            if target is not None and target != source:
                edges.add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_packages_and_their_imports() -> None:
    graph = import_graph()
    for unit in ("api", "cli", "conversion", "db", "dicom_node", "model", "results", "worker"):
        assert unit in graph, unit
    assert {"model", "results", "worker", "node"} <= graph["cli"]
    assert "findings" in graph["model"] and "findings" in graph["results"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for other in graph.get(todo.pop(), ()):
            if other == goal:
                return True
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return False


def test_no_import_cycle_between_top_level_packages() -> None:
    graph = import_graph()
    pruned = {unit: targets.copy() for unit, targets in graph.items()}
    for source, target in KNOWN_CYCLE_EDGES:
        pruned.get(source, set()).discard(target)
    unexpected = [
        " <-> ".join(sorted(c))
        + ": "
        + "; ".join(f"{a} imports {', '.join(sorted(pruned[a] & c))}" for a in sorted(c))
        for c in cycles(pruned)
    ]
    assert not unexpected, "import cycles between top-level packages: " + " | ".join(unexpected)
    stale = [
        f"{source} -> {target}"
        for source, target in KNOWN_CYCLE_EDGES
        if target not in graph.get(source, set()) or not _reaches(graph, target, source)
    ]
    assert not stale, f"no longer closes a cycle, remove it from KNOWN_CYCLE_EDGES: {stale}"


def test_results_take_plain_values_not_the_model() -> None:
    assert "model" not in import_graph()["results"], "results import pneumonode.findings only"


def test_no_source_module_is_over_800_lines() -> None:
    lengths = {
        path.relative_to(SOURCE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in _sources()
    }
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    unexpected = {name: n for name, n in long.items() if name not in KNOWN_LONG}
    assert not unexpected, f"modules over {MAX_LINES} lines, split them: {unexpected}"
    fixed = [name for name in KNOWN_LONG if name not in long]
    assert not fixed, f"no longer over {MAX_LINES} lines, remove from KNOWN_LONG: {fixed}"
