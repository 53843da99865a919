"""The golden curation build: the demo's curation steps on a small mini web from a pinned pool.

Everything a build-dataset run writes is deterministic once its pool is fixed, except the download itself
(img2dataset fetches with 16 threads and writes samples in the order they arrive; the mini web's slow links
time out or not with the machine's load). So the golden build takes the download step's outputs from
``tests/golden/pool/`` (a real download of this mini web, committed) and runs every other step of
`openaim build-dataset` in-process through the one step list (openaim.pipeline.run_steps):
extract (from the mini web's WARC files, no network) -> train-filter -> score -> dedup -> safety -> select
-> manifest. tests/test_curation_golden.py compares its outputs with ``tests/golden/curation_build.json``.

The pinned pool's image URLs carry ``GOLDEN_PORT``; the mini web is generated with that port baked in and is
never served by the test. To fetch the pool again (when the mini web, the download step or img2dataset
changes what a pool holds), with ``GOLDEN_PORT`` free:

    python -m tests.golden_build

which serves the mini web, runs the real extract and download steps and replaces ``tests/golden/pool/`` and
``tests/golden/download_stats.json``; then rewrite the digests (OPENAIM_UPDATE_GOLDEN=1, see the test).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file

from openaim.pipeline import CURATION, run_steps, stage_steps, step_named
from openaim.steps.base import RunContext, plan
from openaim.steps.download import Download
from shared.config import load_config
from shared.miniweb.generate import generate_web
from shared.miniweb.server import serve_in_background
from shared.stage_cache import Freshness, StepSpec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
POOL = GOLDEN / "pool"
DOWNLOAD_STATS = GOLDEN / "download_stats.json"
DIGESTS = GOLDEN / "curation_build.json"
GOLDEN_PORT = 18765
# The demo config (configs/demo.yaml) on a web small enough for a test: ~1 MB of pool, seconds per step.
OVERRIDES = [f"web.port={GOLDEN_PORT}", "web.n_images=160", "web.hq_size=200", "web.bench_train_per_class=2",
             "web.bench_test_per_class=4", "web.slow_seconds=1", "curation.download.samples_per_shard=60",
             "curation.train_filter.epochs=2", "curation.select.shard_size=20"]
# What pins the pool: img2dataset's per-shard files (the download step's own state file is not an output).
POOL_FILES = ("*.tar", "*.parquet", "*_stats.json")


def golden_config(workdir: Path):
    return load_config(None, [f"workdir={workdir}", *OVERRIDES])


def pinned_download_step() -> Download:
    """The download step with the pinned pool as what it fetched: its identity, record and outputs hash
    are the real step's; only the fetching is replaced by a copy of tests/golden/pool/."""
    class PinnedDownload(Download):
        def prepare(self, ctx: RunContext, spec: StepSpec, rerun: bool) -> None:
            pass

        def run(self, ctx: RunContext) -> None:
            pool = ctx.store.local(self.writes[0])
            if pool.exists():
                shutil.rmtree(pool)
            pool.mkdir(parents=True)
            for pattern in POOL_FILES:
                for path in sorted(POOL.glob(pattern)):
                    shutil.copyfile(path, pool / path.name)
            ctx.store.write_json(self.writes[1], json.loads(DOWNLOAD_STATS.read_text()))

    return PinnedDownload()


def build(workdir: Path) -> tuple[Path, list[tuple[str, Freshness]]]:
    """Generate the mini web under ``workdir`` and run the golden build; returns the curation folder and
    what `openaim status` would say of each cached step afterwards."""
    if not any(POOL.glob("*.tar")):
        raise FileNotFoundError(f"no pinned pool at {POOL}: run `python -m tests.golden_build` to fetch it")
    cfg = golden_config(workdir)
    generate_web(cfg.web, cfg.web_dir)
    ctx = RunContext(cfg)
    steps = [pinned_download_step() if s.name == "download" else s for s in stage_steps(cfg, CURATION)]
    ctx.store.makedirs("curation")
    threads = torch.get_num_threads()
    # Training the filter network and scoring sum floats in an order that follows torch's CPU thread count
    # (1 and 2 threads give different weights and scores): one thread on every machine.
    torch.set_num_threads(1)
    try:
        run_steps(ctx, steps)
    finally:
        torch.set_num_threads(threads)
    return cfg.curation_dir, plan(RunContext(cfg), steps)


# The libraries whose versions can change output bytes with our code unchanged (parquet's writer names
# itself in every file, tar headers, JPEG encoding, float kernels), and the machine's architecture.
ENV_PACKAGES = ("torch", "numpy", "pyarrow", "pillow", "open_clip_torch", "timm", "faiss-cpu", "webdataset",
                "opencv-python-headless", "safetensors", "img2dataset")


def environment() -> dict[str, str]:
    env = {"machine": platform.machine()}
    for name in ENV_PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "absent"
    return env


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_default(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON: {type(value).__name__}")


def content_digest(path: Path, rel: str) -> str:
    """What a file holds, apart from what its writing library adds: a parquet file's schema (with our
    metadata keys) and rows, a tar's member names and bytes, an array's dtype, shape and values, the
    tensors of a safetensors file; any other file's bytes."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
        return _sha(json.dumps({"schema": [[f.name, str(f.type)] for f in table.schema], "metadata": meta,
                                "rows": table.to_pydict()}, sort_keys=True, default=_json_default).encode())
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            return _sha(json.dumps([[m.name, _sha(tar.extractfile(m).read())] for m in tar.getmembers()
                                    if m.isfile()]).encode())
    if path.suffix == ".npy":
        arr = np.load(path)
        return _sha(json.dumps([arr.dtype.str, arr.shape]).encode() + arr.tobytes())
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        return _sha(b"".join(json.dumps([k, tensors[k].dtype.str, tensors[k].shape]).encode()
                             + tensors[k].tobytes() for k in sorted(tensors)))
    if rel == "manifest.json":  # without the names of the steps that ran: a step added to the list joins them
        manifest = {k: v for k, v in json.loads(path.read_bytes()).items() if k not in ("ran", "reused")}
        return _sha(json.dumps(manifest, sort_keys=True).encode())
    return _sha(path.read_bytes())


def digests(curation_dir: Path) -> dict[str, dict[str, str]]:
    """Per file the build wrote under curation/ (by path relative to it): the sha256 of its bytes and of its
    content (``content_digest``). Not the pinned pool (an input) nor dot-named bookkeeping (the scoring
    queue's claims, which hold times and process ids). The manifest's bytes digest is its content's: its
    "ran" and "reused" lists are left out of both."""
    out = {}
    for path in sorted(p for p in curation_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(curation_dir).as_posix()
        if rel.startswith("pool/") or any(part.startswith(".") for part in rel.split("/")):
            continue
        content = content_digest(path, rel)
        raw = content if rel == "manifest.json" else _sha(path.read_bytes())
        out[rel] = {"bytes": raw, "content": content}
    return out


def fetch_pool() -> None:
    """Serve the golden mini web on GOLDEN_PORT, run the real extract and download steps, pin the pool."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = golden_config(Path(tmp))
        generate_web(cfg.web, cfg.web_dir)
        ctx = RunContext(cfg)
        ctx.store.makedirs("curation")
        with serve_in_background(cfg.web_dir, host=cfg.web.host, port=GOLDEN_PORT):
            run_steps(ctx, [step_named("extract"), step_named("download")])
        if POOL.exists():
            shutil.rmtree(POOL)
        POOL.mkdir(parents=True)
        pool = cfg.curation_dir / "pool"
        for pattern in POOL_FILES:
            for path in sorted(pool.glob(pattern)):
                shutil.copyfile(path, POOL / path.name)
        shutil.copyfile(cfg.curation_dir / "download_stats.json", DOWNLOAD_STATS)
    print(f"pinned {len(list(POOL.iterdir()))} pool files in {POOL}", file=sys.stderr)


if __name__ == "__main__":
    fetch_pool()
