"""The arrows of the source tree point one way, and every module is in a room.

Read from the source, not from what happens to be imported at run time: every
`import` counts, at module level, inside functions and under `TYPE_CHECKING`
alike, since each is an arrow a reader has to follow.

    fuzz -> properties -> vsmmu
    inside vsmmu: guests -> hyp -> platform -> sw -> hw -> arch
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vsmmu", "properties", "fuzz")
# What each top-level package may import of the others.
ALLOWED = {"vsmmu": {"vsmmu"}, "properties": {"properties", "vsmmu"},
           "fuzz": {"fuzz", "properties", "vsmmu"}}
# The rooms of the model, lowest first: a room imports only itself and rooms below.
VSMMU_ROOMS = ("arch", "hw", "sw", "platform", "hyp", "guests")
MAX_LINES = 800  # a module longer than this has more than one job


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The project modules an `import from` names (a name may be a submodule)."""
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    sources = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in sources.items():
        graph[module]
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = _resolve(module, is_package, node)
            else:
                continue
            for name in names:
                # `import a.b.c` and `from a.b import c` reach the longest existing module
                while name and name not in sources:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    graph[module].add(name)
    return dict(graph)


GRAPH = import_graph()


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "vsmmu" and len(parts) > 1 else None


def test_the_graph_is_read():
    """Guards the test itself: a parser that saw nothing would pass everything."""
    assert "vsmmu.hyp.hypervisor" in GRAPH["vsmmu.guests.guest"]
    assert "vsmmu.arch.layouts" in GRAPH["vsmmu.hw.smmu"]
    assert "properties.monitor" in GRAPH["fuzz.runner"]
    assert len(GRAPH) > 60


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downwards(package):
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if m.split(".")[0] == package
                   for t in targets if t.split(".")[0] not in ALLOWED[package])
    assert not wrong, "arrows must run fuzz -> properties -> vsmmu:\n" + "\n".join(wrong)


def test_every_model_module_is_in_a_room():
    loose = sorted(m for m in GRAPH if m.startswith("vsmmu.") and _room(m) not in VSMMU_ROOMS)
    assert not loose, f"modules outside the rooms {VSMMU_ROOMS}: {loose}"


def test_model_rooms_import_only_downwards():
    rank = {room: i for i, room in enumerate(VSMMU_ROOMS)}
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _room(m) in rank
                   for t in targets if _room(t) in rank and rank[_room(t)] > rank[_room(m)])
    assert not wrong, ("inside vsmmu the arrows run " + " -> ".join(reversed(VSMMU_ROOMS))
                       + ":\n" + "\n".join(wrong))


def test_no_import_cycles():
    """Depth-first search for a back edge; reports one cycle, path included."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_module_file_names_are_unique_per_package():
    """No-crash signatures name a frame by package and file name, not by room
    (fuzz/triage.py, `project_frames`), so two files of one name would share frames."""
    for package in PACKAGES:
        seen: dict[str, list[str]] = defaultdict(list)
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "__init__.py" and "harnesses" not in path.parts:
                seen[path.stem].append(str(path.relative_to(ROOT)))
        clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
        assert not clashes, f"{package}: modules sharing a file name: {clashes}"


def test_no_module_has_more_than_one_jobs_worth_of_lines():
    files = (p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    long = sorted(f"{p.relative_to(ROOT)}: {n}" for p in files
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not long, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(long)
