"""Curation's locations may be URLs (workdir, sources): no `pathlib.Path(...)` is built from them outside the
I/O layer (shared/fsio.py, shared/storage.py). The check of tests/test_train_io_layer.py (ast: every
`Path(...)` call with the function it sits in) over the curation package and the pipeline's steps: only
the functions that handle local-only files may build one."""

from __future__ import annotations

from pathlib import Path

from tests.test_train_io_layer import path_calls

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "openaim/steps")

# Functions that may build a Path, and why their paths are local.
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
}


def test_no_path_is_built_from_a_curation_location():
    calls = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            calls |= set(path_calls(path.read_text(), path.relative_to(ROOT).as_posix()))
    outside = sorted(calls - set(LOCAL_ONLY))
    assert not outside, f"Path(...) built outside the I/O layer (use shared.fsio / shared.storage): {outside}"
    stale = sorted(set(LOCAL_ONLY) - calls)
    assert not stale, f"LOCAL_ONLY lists functions that build no Path any more: {stale}"


def test_no_curation_step_asks_storage_for_a_local_path():
    """The build-dataset steps name their files through Storage.url (a path or a URL); Storage.local (local
    roots only) is for what is local by design (training's folder), which no curation step has."""
    from openaim.steps import STEPS

    modules = {type(step).__module__ for step in STEPS if step.stage == "build-dataset"}
    assert "openaim.steps.download" in modules and "openaim.steps.resources" not in modules
    files = [ROOT / f"{m.replace('.', '/')}.py" for m in sorted(modules | {"openaim.steps.resources"})]
    used = [f.name for f in files if ".local(" in f.read_text()]
    assert not used, f"curation steps asking for a local path (use store.url and shared.fsio): {used}"
