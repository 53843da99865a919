"""The pipeline's archive of finished runs: ``<workdir>/history/run-NNN/``.

When training reruns because its inputs or config changed after it had finished, its previous outputs
(training, eval, the curation manifest it was trained on, the stage wall times) move here first, so the
new run starts clean and the report can show the old and the new run side by side.
"""

from __future__ import annotations

from pathlib import Path

from shared.cli_common import say
from shared.storage import Storage

HISTORY = "history"


def history_runs(workdir: Path) -> list[Path]:
    root = Path(workdir) / HISTORY
    return sorted(p for p in root.glob("run-*") if p.is_dir()) if root.is_dir() else []


def archive_previous_run(store: Storage, reasons: list[str], manifest: bytes | None = None,
                         pipeline: bytes | None = None) -> str | None:
    """Move the finished training/eval outputs aside so the new run starts clean and stays comparable;
    returns the archive's name, or None when there is no finished run.

    ``manifest``, ``pipeline``: the curation manifest the finished run was trained on and its pipeline.json
    (stage wall times), read before this run rewrote them (curation reruns and records its stage before
    training archives); None copies the file now on disk."""
    if not store.exists("training/final"):
        return None
    dest = f"{HISTORY}/run-{len(history_runs(store.local())) + 1:03d}"
    store.makedirs(dest)
    for src in ("training", "eval"):
        if store.exists(src):
            store.move(src, f"{dest}/{src}")
    if manifest is None:
        manifest = store.read_bytes("curation/manifest.json")
    if manifest is not None:
        store.write_bytes(f"{dest}/curation/manifest.json", manifest)
    if pipeline is None:
        pipeline = store.read_bytes("pipeline.json")
    if pipeline is not None:
        store.write_bytes(f"{dest}/pipeline.json", pipeline)
    store.write_json(f"{dest}/run.json", {"archived_because": reasons})
    say("previous run moved to", "cyan", f"{store.url(dest)} ({'; '.join(reasons)})")
    return dest
