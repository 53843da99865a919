"""The stage cache: each pipeline step records what it was computed from, and is skipped when that matches.

A step's identity (its *fingerprint*) is the hash of
  - its config section (a JSON dict; only the keys the step actually depends on),
  - its inputs' hashes (files hashed by content, or upstream steps' outputs hashes),
  - its ``VERSION``: an integer constant of the step (openaim/steps/<step>.py) that its author bumps when
    the step's results change. Source files are never hashed: a comment or a docstring fix reruns nothing.
The record lives at ``<workdir>/.steps/<step>.json`` (committed through shared.storage) with the outputs
hash, so that a downstream step can take an upstream step's *outputs hash* as its input without
re-reading gigabytes, and so that `openaim status` can say exactly which config key, input or version
changed. The outputs hash includes
the step's version and inputs: a bumped VERSION declares new results, so every step downstream reruns.

The record is written last, atomically, after the outputs are complete: a killed step has no record and
reruns; a finished one is never redone.

This is the one staleness engine: `openaim run` asks ``StageCache.check`` before each step, and
`openaim status` asks ``plan`` (the same check over the whole graph, in run order).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import fsio
from shared.storage import Storage


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_json(obj: Any) -> str:
    return hash_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


def hash_file(path: str | Path) -> str:
    """A file's sha256 (a path or a URL, read through shared.fsio)."""
    with fsio.open_file(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest_file(path: str | Path) -> str:
    """A writer's record of a file it has just written: ``<bytes>:<sha256>``, taken by the task that wrote
    it (the bytes are still in the page cache), so no later run reads the file to identify it. A step's
    outputs hash combines its tasks' records (``combine_digests``) instead of hashing its output trees."""
    return f"{Path(path).stat().st_size}:{hash_file(path)}"


def combine_digests(digests: Iterable[str]) -> str:
    """One digest of many, in the order given (a task's files in order, a step's tasks in order)."""
    return hash_json(list(digests))


def file_signature(path: str | Path) -> list:
    """A file's name (not its folder: a copied run reading the same files through another path is the same
    input) and its version from metadata (shared.fsio.stat: size and modification time in ns on local
    disk, size and ETag for an object): what identifies a large input without reading it (a regenerated
    or replaced file gets a new time or ETag)."""
    return [fsio.name_of(path), *fsio.stat(path).values()]


def listing_digest(folder: str | Path) -> str:
    """A folder's files by name and size, one listing, no file read (for outputs written by a tool that
    records no digest, e.g. img2dataset's pool)."""
    return hash_json(sorted([fsio.name_of(path), size] for path, size in fsio.list_files(folder)))


def hash_path(path: str | Path) -> str:
    """Content hash of a file, or of a directory tree (relative names + contents, hidden files skipped)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        h.update(str(rel).encode() + b"\0" + hash_file(p).encode() + b"\n")
    return h.hexdigest()


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


@dataclass
class StepSpec:
    """What a step depends on. ``config`` is a dict (e.g. ``cfg.curation.select.model_dump(mode='json')``)
    keyed by its dotted name, e.g. ``{"curation.select": {...}}``."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    # input name -> hash; an input named after another step is that step's outputs hash
    inputs: dict[str, str] = field(default_factory=dict)
    version: int = 0  # the step module's VERSION
    outputs: list[str | Path] = field(default_factory=list)  # paths or URLs

    @property
    def fingerprint(self) -> str:
        return hash_json({"config": self.config, "inputs": self.inputs, "version": self.version})


@dataclass
class Freshness:
    fresh: bool
    reasons: list[str]


class StageCache:
    """The steps' records in a run's storage (``workdir`` or its ``Storage``), under ``.steps/``."""

    RECORDS = ".steps"

    def __init__(self, workdir: str | Path | Storage):
        self.store = workdir if isinstance(workdir, Storage) else Storage(workdir)
        self.root = self.store.url(self.RECORDS)

    def _name(self, step: str) -> str:
        return f"{self.RECORDS}/{step}.json"

    def record_path(self, name: str) -> str:
        return self.store.url(self._name(name))

    def load(self, name: str) -> dict[str, Any] | None:
        try:
            rec = self.store.read_json(self._name(name))
        except OSError:
            return None
        return rec if isinstance(rec, dict) else None  # a damaged record means "not done": the step reruns

    def check(self, spec: StepSpec) -> Freshness:
        """Is the recorded result still valid? If not, say why (which key, input or code changed)."""
        rec = self.load(spec.name)
        if rec is None:
            return Freshness(False, ["never ran"])
        reasons: list[str] = []
        old_cfg, new_cfg = _flatten(rec.get("config", {})), _flatten(spec.config)
        for key in sorted(set(old_cfg) | set(new_cfg)):
            if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
                old, new = old_cfg.get(key, "<unset>"), new_cfg.get(key, "<unset>")
                reasons.append(f"config {key}: {old!r} -> {new!r}")
        old_in = rec.get("inputs", {})
        for key in sorted(set(old_in) | set(spec.inputs)):
            if old_in.get(key) != spec.inputs.get(key):
                reasons.append(f"input {key} changed")
        if rec.get("version") != spec.version:
            reasons.append(f"version {rec.get('version')} -> {spec.version}")
        for out in spec.outputs:
            if not fsio.exists(out):
                reasons.append(f"output {out} is missing")
        return Freshness(not reasons, reasons)

    def outputs_hash(self, name: str) -> str:
        """The recorded outputs hash of an upstream step (what downstream steps take as input)."""
        rec = self.load(name)
        return rec["outputs_hash"] if rec else "missing"

    def record(self, spec: StepSpec, outputs_hash: str | None = None,
               extra: dict[str, Any] | None = None) -> str:
        """Mark the step done. ``outputs_hash`` (the content hash of its outputs by default) is recorded
        combined with the step's version and inputs: a VERSION bump upstream reaches every step after it,
        even through steps whose bytes come out the same; a config change whose outputs are the same
        bytes (e.g. a download timeout) stops where the bytes stop changing."""
        if outputs_hash is None:
            outputs_hash = hash_json([hash_path(p) for p in spec.outputs])
        outputs_hash = hash_json({"version": spec.version, "inputs": spec.inputs, "outputs": outputs_hash})
        self.store.commit(self._name(spec.name), {
            "step": spec.name,
            "fingerprint": spec.fingerprint,
            "config": spec.config,
            "inputs": spec.inputs,
            "version": spec.version,
            "outputs": [str(p) for p in spec.outputs],
            "outputs_hash": outputs_hash,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(extra or {}),
        })
        return outputs_hash

    def invalidate(self, name: str) -> None:
        self.store.remove(self._name(name))

    def run(self, spec: StepSpec, fn: Callable[[], Any], force: bool = False,
            outputs_hash: Callable[[], str] | None = None) -> bool:
        """Run ``fn`` unless the step is fresh. Returns True if it ran, False if it was reused."""
        if not force and self.check(spec).fresh:
            return False
        self.invalidate(spec.name)  # a stale record must not survive a crash mid-step
        fn()
        self.record(spec, outputs_hash() if outputs_hash else None)
        return True


def plan(cache: StageCache, specs: Iterable[StepSpec]) -> list[tuple[str, Freshness]]:
    """What the next run does with each step (given in run order): reuse it, or run it and why. A step
    runs when its own record no longer matches, or when a step it takes as input runs (whose new outputs
    it then takes). `openaim status` prints this; `openaim run` makes the same ``check`` step by step."""
    rows: list[tuple[str, Freshness]] = []
    runs: set[str] = set()
    for spec in specs:
        reasons = list(cache.check(spec).reasons)
        if reasons != ["never ran"]:
            reasons += [f"upstream {name} would run" for name in spec.inputs if name in runs]
        if reasons:
            runs.add(spec.name)
        rows.append((spec.name, Freshness(not reasons, reasons)))
    return rows
