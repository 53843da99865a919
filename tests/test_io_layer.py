"""Locations that may be URLs are never turned into a `pathlib.Path` outside the I/O layer (shared/fsio.py,
shared/storage.py): curation's workdir and sources, training's shards and checkpoints, the checkpoints
evaluation reads. Read with ast: every `Path(...)` call in those packages is listed with the function it
sits in, and only the functions that handle local-only files (listed below, with why) may build one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "openaim/steps", "training", "evaluation")

# Functions that may build a Path, by file under the repository, and why their paths are local; a key
# ending in "/" covers a folder's modules.
LOCAL_ONLY = {
    "curation/engine.py:_emit_to_files": "the local engine's shuffle files: one machine's scratch by design",
    "curation/engine.py:_bucket_rows": "the same",
    "curation/extract.py:resolve_sources": "local source files and folders (URLs are kept as they are)",
    "curation/extract_parts.py:source_pairs": "the task's temporary folder for a fetched source",
    "curation/filter_network.py:_resolve": "filter weights on local disk (our own: a local copy, "
                                           "openaim/steps/resources.py)",
    "curation/filter_network.py:load_filter_network": "the same",
    "curation/img2dataset_run.py:download_in_own_session": "this checkout's own folder (PYTHONPATH)",
    "curation/train_filter.py:read_pairs": "the mini web's high-quality set, on local disk (web.dir)",
    "curation/train_filter.py:train_filter_network": "writes a local folder (fsio.local_dir stages it)",
    "curation/write.py:write_part_shards": "a tar in the task's local folder (fsio.local_dir stages it)",
    "openaim/steps/resources.py:_load_net": "the local copy of our filter network (fsio.process_copy)",
    "training/eval_weights.py:local_weights": "local loaders: a URL's files are fetched to a temp folder",
    "training/eval_weights.py:_host_copy": "the same, into the host's temp folder (one copy per host)",
    "training/loop.py:train_from_config": "the run's training folder (metrics.jsonl, final/) is local",
    "training/loop.py:_list_data": "ImageNet image folders are local (an ImageNet shard list may be URLs)",
    "training/data.py:TrainBatches.__init__": "the same",
    "training/shards.py:imagenet_sources": "the same",
    "training/model/mlaim_compat.py:write_mlaim_backbone": "a local folder (fsio.local_dir stages it)",
    "training/model/mlaim_compat.py:read_mlaim_state_dict": "released ml-aim weights, read from local disk",
    "training/model/mlaim_compat.py:load_mlaim_checkpoint": "the same",
    "training/metrics.py:read_metrics": "metrics.jsonl in the local training folder",
    "training/metrics.py:MetricsLog.__init__": "the same",
    "training/synthetic.py:write_synthetic_shards": "test and demo data written to a local folder",
    "training/synthetic.py:write_image_folder": "the same",
    "evaluation/benchmarks/": "benchmark data under evaluation.data_root is local",
    "evaluation/checkpoints.py:_name_for": "a local checkpoint's name from its path (a URL's from its keys)",
    "evaluation/checkpoints.py:checkpoint_entries": "final/ in the local training folder",
    "evaluation/features.py:feature_path": "the feature cache in the local eval folder",
    "evaluation/features.py:load_features": "the same",
    "evaluation/mlaim_head.py:load_mlaim_head": "released probe heads are local files",
    "evaluation/mlaim_head.py:save_mlaim_head": "the same",
    "evaluation/mlaim_head.py:head_for": "a head's checkpoint vs an entry's, normalised alike",
    "evaluation/results.py:result_path": "result files in the local eval folder",
    "evaluation/results.py:read_result": "the same",
    "evaluation/results.py:load_results": "the same",
    "evaluation/results.py:write_results_csv": "the same",
    "evaluation/results.py:write_missing": "the same",
    "evaluation/results.py:write_failed": "the same",
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


def test_no_path_is_built_from_a_location_that_may_be_a_url():
    calls = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            calls.update(path_calls(path.read_text(), path.relative_to(ROOT).as_posix()))

    def covered(where: str, key: str) -> bool:
        return where.startswith(key) if key.endswith("/") else where == key

    outside = sorted(w for w in calls if not any(covered(w, key) for key in LOCAL_ONLY))
    assert not outside, f"Path(...) built outside the I/O layer (use shared.fsio / shared.storage): {outside}"
    stale = sorted(key for key in LOCAL_ONLY if not any(covered(w, key) for w in calls))
    assert not stale, f"LOCAL_ONLY names functions that build no Path any more: {stale}"


def test_no_curation_step_asks_storage_for_a_local_path():
    """The build-dataset steps name their files through Storage.url (a path or a URL); Storage.local (local
    roots only) is for what is local by design (training's folder), which no curation step has."""
    from openaim.steps import STEPS

    modules = {type(step).__module__ for step in STEPS if step.stage == "build-dataset"}
    assert "openaim.steps.download" in modules and "openaim.steps.resources" not in modules
    files = [ROOT / f"{m.replace('.', '/')}.py" for m in sorted(modules | {"openaim.steps.resources"})]
    used = [f.name for f in files if ".local(" in f.read_text()]
    assert not used, f"curation steps asking for a local path (use store.url and shared.fsio): {used}"


def test_the_check_sees_a_path_built_in_a_method_or_through_pathlib():
    source = (
        "import pathlib\nfrom pathlib import Path\n"
        "class Writer:\n    def save(self, root):\n        return Path(root) / 'checkpoints'\n"
        "def latest(root):\n    def inner():\n        return pathlib.Path(root)\n    return inner()\n"
    )
    assert path_calls(source, "checkpoint.py") == ["checkpoint.py:Writer.save", "checkpoint.py:latest.inner"]
