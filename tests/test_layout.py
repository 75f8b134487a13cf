"""The layout of the house: who may import whom (read from the source, every import, top-level or not)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "aoi", "training")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, anywhere in the file (TYPE_CHECKING imports left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and name in MODULES}


MODULES = {module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
GRAPH = {module_name(p): set() for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
for _package in PACKAGES:
    for _path in (ROOT / _package).rglob("*.py"):
        GRAPH[module_name(_path)] = imports_of(_path) - {module_name(_path)}


def importers(target: str) -> set[str]:
    return {m for m, deps in GRAPH.items() if target in deps}


def test_no_import_circles() -> None:
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(GRAPH.get(module, ())):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_only_the_cli_knows_the_cli_and_reaches_training() -> None:
    assert importers("detector.cli") == {"detector.console"}  # the console script, which loads it under its handler
    assert GRAPH["detector.console"] == {"detector.cli"}
    reaching_training = {m for m in importers("training") | {i for t in MODULES if t.startswith("training.")
                                                               for i in importers(t)}
                         if m.startswith(("detector", "aoi"))}
    assert reaching_training <= {"detector.cli"}


# what the batch wing lends the timeline wing: catalogs, coverage, worker processes and Dask, durable names
BATCH_SERVICES = {"detector.batch", "detector.batch.catalog", "detector.batch.pairing", "detector.batch.executors",
                  "detector.batch.store", "detector.batch.tasks"}


def test_run_batch_and_timeline_are_peers_over_the_shared_results() -> None:
    assert importers("detector.pipeline") == {"detector.cli"}
    timeline_wing = {m for m in MODULES if m.startswith("detector.timeline")}
    for wing, name in (({m for m in MODULES if m.startswith("detector.batch")}, "batch"), (timeline_wing, "timeline")):
        for module in wing:
            outside = importers(module) - wing - {"detector.cli"}
            if name == "batch" and module in BATCH_SERVICES:
                outside -= timeline_wing
            assert not outside, f"the {name} wing's {module} is imported from {outside}"
    for orchestrator in ("detector.pipeline", "detector.batch.run"):
        assert "detector.results" in GRAPH[orchestrator]


def test_nothing_below_an_orchestrator_imports_it() -> None:
    """The batch's own modules never import its orchestrator; aoi never imports detector's orchestrators."""
    assert importers("detector.batch.run") <= {"detector.cli"}
    assert not {d for m in MODULES if m.startswith("aoi") for d in GRAPH[m]} & {"detector.pipeline",
                                                                               "detector.results"}
