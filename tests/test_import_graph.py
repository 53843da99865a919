"""The package layering, read from the source with the standard library's ``ast`` (nothing is imported):
shared/ (the foundation) imports no stage, nothing imports openaim/ (the roof), and the five packages have
no import cycle. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("openaim", "curation", "training", "evaluation", "shared")
FOUNDATION, ROOF = "shared", "openaim"


def package_imports(root: Path) -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the places ("file:line module"), between our packages."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:  # relative imports stay inside their package
                    continue
                for module in modules:
                    target = module.split(".")[0]
                    if target in PACKAGES and target != package:
                        edges[(package, target)].append(f"{path.relative_to(root)}:{node.lineno} {module}")
    return edges


def cycles(edges) -> list[list[str]]:
    """Every elementary cycle's packages, found by a depth-first search from each package."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.append([*path, start])
            elif nxt not in path and nxt > start:  # each cycle once, from its smallest package
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def layering_problems(root: Path) -> list[str]:
    edges = package_imports(root)
    problems = [f"upward import {a} -> {b}: {place}" for (a, b), places in sorted(edges.items())
                for place in places if a == FOUNDATION or b == ROOF]
    problems += [f"package cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def test_no_upward_imports_and_no_package_cycles():
    edges = package_imports(ROOT)
    assert edges, "no imports between the packages found: the scan read nothing"
    assert ("openaim", "curation") in edges and ("curation", "shared") in edges
    assert layering_problems(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "shared/cli.py": "def main():\n    from curation.cli import build\n",  # lazy, still upward
        "training/loop.py": "import evaluation.run\n",
        "evaluation/run.py": "from training.loop import train\n",
        "curation/x.py": "from openaim.pipeline import run\nfrom . import y\n",
    })
    problems = layering_problems(root)
    assert "upward import shared -> curation: shared/cli.py:2 curation.cli" in problems
    assert "upward import curation -> openaim: curation/x.py:1 openaim.pipeline" in problems
    assert "package cycle: evaluation -> training -> evaluation" in problems
    assert len(problems) == 3  # shared -> curation -> openaim is no cycle; the relative import is ignored
