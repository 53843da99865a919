"""Training's shard and checkpoint locations may be URLs: no `pathlib.Path(...)` is built from them outside
the I/O layer (shared/fsio.py). Read with ast: every `Path(...)` call in the training package is listed
with the function it sits in, and only the functions that handle local-only files may build one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Functions of the training package that may build a Path, and why their paths are local.
LOCAL_ONLY = {
    "eval_weights.py:local_weights": "the loaders read local files: a URL's are fetched to a temp folder",
    "loop.py:train_from_config": "the run's training folder (metrics.jsonl, loss.png, final/) is local",
    "loop.py:_list_data": "ImageNet image folders are local (an ImageNet shard list may be URLs)",
    "data.py:TrainBatches.__init__": "the same",
    "shards.py:imagenet_sources": "the same",
    "model/mlaim_compat.py:write_mlaim_backbone": "writes into a local folder (fsio.local_dir stages it)",
    "model/mlaim_compat.py:read_mlaim_state_dict": "released ml-aim weights, read from local disk",
    "model/mlaim_compat.py:load_mlaim_checkpoint": "the same",
    "metrics.py:read_metrics": "metrics.jsonl in the local training folder",
    "metrics.py:MetricsLog.__init__": "the same",
    "synthetic.py:write_synthetic_shards": "test and demo data written to a local folder",
    "synthetic.py:write_image_folder": "the same",
}


def path_calls(source: str, module: str) -> list[str]:
    """'module:Function.name' for every Path(...) / pathlib.Path(...) call in `source`, with line."""
    found: list[str] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call):
                func = child.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(
                    func, ast.Attribute) else None
                if name in ("Path", "PurePath", "PosixPath"):
                    found.append(f"{module}:{'.'.join(scope) or '<module>'}")
            visit(child, scope)

    visit(ast.parse(source), [])
    return found


def test_no_path_is_built_from_shard_or_checkpoint_locations():
    calls = {}
    for path in sorted((ROOT / "training").rglob("*.py")):
        for where in path_calls(path.read_text(), path.relative_to(ROOT / "training").as_posix()):
            calls.setdefault(where, 0)
            calls[where] += 1
    outside = sorted(set(calls) - set(LOCAL_ONLY))
    assert not outside, f"Path(...) built outside the I/O layer (use shared.fsio): {outside}"
    stale = sorted(set(LOCAL_ONLY) - set(calls))
    assert not stale, f"LOCAL_ONLY lists functions that build no Path any more: {stale}"


def test_the_check_sees_a_path_built_in_a_method_or_through_pathlib():
    source = (
        "import pathlib\nfrom pathlib import Path\n"
        "class Writer:\n    def save(self, root):\n        return Path(root) / 'checkpoints'\n"
        "def latest(root):\n    def inner():\n        return pathlib.Path(root)\n    return inner()\n"
    )
    assert path_calls(source, "checkpoint.py") == ["checkpoint.py:Writer.save", "checkpoint.py:latest.inner"]
