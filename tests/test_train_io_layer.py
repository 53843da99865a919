"""Training's shard and checkpoint locations, and the checkpoints evaluation reads, may be URLs: no
`pathlib.Path(...)` is built from them outside the I/O layer (shared/fsio.py). Read with ast: every
`Path(...)` call in the training and evaluation packages is listed with the function it sits in, and only
the functions that handle local-only files may build one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


# The same for the evaluation package; a key ending in "/" covers a folder's modules.
EVAL_LOCAL_ONLY = {
    "benchmarks/": "benchmark data under evaluation.data_root is local",
    "checkpoints.py:_name_for": "a local checkpoint's name from its resolved path (a URL's from its keys)",
    "checkpoints.py:checkpoint_entries": "final/ is in the local training folder; a local checkpoints entry",
    "features.py:feature_path": "the feature cache in the local eval folder",
    "features.py:load_features": "the same",
    "mlaim_head.py:load_mlaim_head": "released probe heads are local files",
    "mlaim_head.py:save_mlaim_head": "the same",
    "mlaim_head.py:head_for": "compares a head's checkpoint with an entry's, both normalised alike",
    "results.py:result_path": "result files in the local eval folder",
    "results.py:read_result": "the same",
    "results.py:load_results": "the same",
    "results.py:write_results_csv": "the same",
    "results.py:write_missing": "the same",
    "results.py:write_failed": "the same",
}


@pytest.mark.parametrize("package,allowed", [("training", LOCAL_ONLY), ("evaluation", EVAL_LOCAL_ONLY)])
def test_no_path_is_built_from_shard_or_checkpoint_locations(package, allowed):
    calls = set()
    for path in sorted((ROOT / package).rglob("*.py")):
        calls.update(path_calls(path.read_text(), path.relative_to(ROOT / package).as_posix()))

    def covered(where: str, key: str) -> bool:
        return where.startswith(key) if key.endswith("/") else where == key

    outside = sorted(w for w in calls if not any(covered(w, key) for key in allowed))
    assert not outside, f"Path(...) built outside the I/O layer (use shared.fsio): {outside}"
    stale = sorted(key for key in allowed if not any(covered(w, key) for w in calls))
    assert not stale, f"the list names functions that build no Path any more: {stale}"


def test_the_check_sees_a_path_built_in_a_method_or_through_pathlib():
    source = (
        "import pathlib\nfrom pathlib import Path\n"
        "class Writer:\n    def save(self, root):\n        return Path(root) / 'checkpoints'\n"
        "def latest(root):\n    def inner():\n        return pathlib.Path(root)\n    return inner()\n"
    )
    assert path_calls(source, "checkpoint.py") == ["checkpoint.py:Writer.save", "checkpoint.py:latest.inner"]
