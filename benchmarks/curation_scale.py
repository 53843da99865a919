"""Curation memory and throughput at N and 10N pool images: does every step stay bounded as the pool grows?

    .venv/bin/python benchmarks/curation_scale.py [--sizes 2000 20000] [--workers 2] [--no-write]

For each size the mini web is generated with that many image records (its WARC files grow with it),
the extract step runs on its WARCs, and the pool is then written directly (img2dataset's layout, 1000
samples per shard, the web's own image files: nothing is downloaded). Each following step (score with
a randomly initialised own filter network, dedup, safety, select + write) runs alone in a fresh
process, as `openaim build-dataset` runs it (openaim.steps), on the local engine with ``--workers``
worker processes. Per step it reports
- peak RSS of the driver (the step's process) and of the largest worker (curation.engine's tasks report
  their own peak; scoring has no workers: it runs in the driver, one torchrun rank);
- the ratio of each at 10N to N (target: <= 1.25 for every step);
- per-core throughput: items / CPU seconds (driver + workers, so a loaded machine does not flatter or
  penalise it); items = pairs kept for extract, pool images for the rest;
and bytes stored per pool image (score parts, keep files, pool tars).

With ``--dedup N [N ...]`` it instead times the dedup step's cluster-partitioned near-duplicate search
(curation.dedup_parts.run_dedup on the local engine, score parts written from curation_bench's planted
512-d vectors) against the single-node reference search (tests/reference_dedup.near_duplicates, index
"ivf") on the same vectors in the same run: wall time, their ratio (target <= 1.5), recall of the planted
pairs (target >= 0.99) and whether the dropped rows equal the single-node search's and, up to
``EXACT_MAX`` rows, the exact flat search's on the stored int8 descriptors. Rows of earlier code kept by
hand under "### Earlier runs" in that section survive a rewrite.

Figures go to benchmarks/RESULTS.md under "## Curation at scale" and "## Curation: partitioned
near-duplicate search" (WARC parsing: benchmarks/warc_parse.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_md import write_section

SECTION = "## Curation at scale"
DEDUP_SECTION = "## Curation: partitioned near-duplicate search"
DEDUP_EARLIER = "### Earlier runs"
STEPS = ("extract", "score", "dedup", "safety", "select")
PORT = 18999  # baked into the web's URLs only; nothing is served
EXACT_MAX = 50_000  # --dedup also runs the exact flat search up to this many rows (O(n^2))


def _overrides(workdir: Path, n: int, workers: int) -> list[str]:
    return [f"workdir={workdir}", f"web.n_images={n}", "web.hq_size=10", "web.bench_train_per_class=2",
            "web.bench_test_per_class=5", f"web.port={PORT}", f"curation.workers={workers}",
            f"curation.filter.model=local-dir:{workdir / 'net'}", "curation.filter.num_workers=0"]


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_step(workdir: Path, n: int, workers: int, step: str) -> dict:
    """One step in this (fresh) process, as build-dataset runs it; its wall, CPU and memory figures."""
    from curation.engine import peak_rss_bytes
    from openaim.pipeline import step_named
    from openaim.steps.base import RunContext, run_step
    from shared.config import load_config

    ctx = RunContext(load_config(None, _overrides(workdir, n, workers)), force=True)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    run_step(step_named(step), ctx)
    engine = ctx.opened("curation.engine")
    worker = engine.worker_peak_rss if engine is not None else 0
    ctx.release()  # the pool's workers exit: their CPU time counts as this process's children
    return {"step": step, "seconds": time.perf_counter() - wall, "cpu": _cpu_seconds() - cpu,
            "driver_rss": peak_rss_bytes(), "worker_rss": worker if workers > 1 else 0}


def _write_pool(cfg) -> int:
    """The pool img2dataset would fetch from the extracted pairs, written from the web's own files."""
    import pyarrow.parquet as pq
    import webdataset as wds

    pairs = pq.read_table(cfg.curation_dir / "pairs", columns=["uid", "url", "caption"]).to_pylist()
    prefix = f"http://{cfg.web.host}:{PORT}/"
    pool = cfg.curation_dir / "pool"
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir(parents=True)
    per_shard, written, shard, sink = 1000, 0, 0, None
    for row in pairs:
        path = cfg.web_dir / "site" / row["url"][len(prefix):] if row["url"].startswith(prefix) else None
        if path is None or not path.is_file() or path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        if sink is None or written % per_shard == 0:
            if sink is not None:
                sink.close()
                (pool / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": per_shard}))
                shard += 1
            sink = wds.TarWriter(str(pool / f"{shard:05d}.tar"))
        data = path.read_bytes()
        key = f"{shard:05d}{written % per_shard:04d}"
        sink.write({"__key__": key, "jpg": data, "txt": row["caption"],
                    "json": json.dumps({"uid": row["uid"], "url": row["url"], "key": key, "status": "success",
                                        "sha256": hashlib.sha256(data).hexdigest()})})
        written += 1
    if sink is not None:
        sink.close()
        last = written % per_shard or per_shard
        (pool / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": last}))
    return written


def prepare(workdir: Path, n: int, workers: int) -> None:
    """The web of n images, the untrained filter network, and (after extract) the pool."""
    from benchmarks.curation_bench import _untrained_own_filter
    from shared.config import load_config
    from shared.miniweb.generate import generate_web

    cfg = load_config(None, _overrides(workdir, n, workers))
    generate_web(cfg.web, cfg.web_dir, skip_if_done=True)
    _untrained_own_filter(workdir / "net")


def after_extract(workdir: Path, n: int, workers: int) -> int:
    from shared.config import load_config
    from shared.stage_cache import StageCache, StepSpec

    cfg = load_config(None, _overrides(workdir, n, workers))
    images = _write_pool(cfg)
    StageCache(cfg.workdir).record(StepSpec("download", config={"written directly": True}),
                                   outputs_hash=f"pool-{n}")
    return images


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"{args}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_size(base: Path, n: int, workers: int) -> dict:
    workdir = base / f"n{n}"
    _child(["--prepare", str(workdir), str(n), str(workers)])
    rows = {"extract": _child(["--step", str(workdir), str(n), str(workers), "extract"])}
    images = _child(["--after-extract", str(workdir), str(n), str(workers)])["images"]
    for step in STEPS[1:]:
        rows[step] = _child(["--step", str(workdir), str(n), str(workers), step])
        print(f"  n={n} {step}: {rows[step]['seconds']:.1f} s", flush=True)
    d = workdir / "curation"
    stats = json.loads((d / "extract_stats.json").read_text())
    return {"n": n, "images": images, "pairs": stats["kept"], "steps": rows,
            "bytes": {"score parts": _size(d / "scores"), "dedup keep": _size(d / "dedup" / "keep"),
                      "safety keep": _size(d / "safety" / "keep"), "pairs": _size(d / "pairs"),
                      "pool tars": _size(d / "pool")},
            "kept": json.loads((d / "select_stats.json").read_text())["out"]}


# -- cluster-partitioned vs single-node near-duplicate search -------------------------------------------
def _kept(folder: Path):
    import numpy as np
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    return np.concatenate([pq.read_table(p).column("keep").to_numpy() for p in files])


def dedup_compare(base: Path, n: int, workers: int, threshold: float = 0.9) -> list:
    import numpy as np

    from benchmarks.curation_bench import planted_embeddings
    from curation import dedup, dedup_parts
    from curation.engine import LocalEngine
    from curation.parts import list_parts, quantize, write_part
    from shared.config.curation import DedupConfig
    from tests import reference_dedup

    x, pa_, pb = planted_embeddings(n, 512, n_pairs=max(100, n // 100))
    scores = np.random.default_rng(1).random(n).astype(np.float32)
    planted = set(zip(pa_.tolist(), pb.tolist(), strict=True))
    folder = base / f"dedup-{n}"
    per_part = 10_000
    for s in range(0, n, per_part):
        e = min(n, s + per_part)
        write_part(folder / "parts" / f"{s // per_part:05d}.parquet", [f"{i:032x}" for i in range(s, e)],
                   [str(i) for i in range(s, e)], [""] * (e - s), scores[s:e],
                   np.ones((e - s, 1), np.float32), x[s:e, None, :])
    parts = list_parts(folder / "parts")
    cfg = DedupConfig(exact=False, decontaminate=False, index="ivf", near_threshold=threshold)
    load_start = os.getloadavg()[0]
    engine = LocalEngine(workers)
    t0 = time.perf_counter()
    try:
        stats = dedup_parts.run_dedup(engine, parts, cfg, folder / "work", folder / "keep", None)
    finally:
        engine.close()
    t_parts = time.perf_counter() - t0
    found = set()
    for path in (folder / "work" / "near").glob("pairs-*.npz"):
        with np.load(path) as z:
            lo, hi = np.minimum(z["a"], z["b"]), np.maximum(z["a"], z["b"])
            found |= set(zip(lo.tolist(), hi.tolist(), strict=True))
    kept_parts = _kept(folder / "keep")
    t0 = time.perf_counter()
    keep = reference_dedup.near_duplicates(x, scores, threshold, index="ivf")
    t_single = time.perf_counter() - t0
    load_end = os.getloadavg()[0]
    # the dropped rows against the single-node search, and against the exact flat search where affordable
    # (the search the int8 descriptors allow: the partitioned search checks pairs on them)
    same = [f"single-node: {'equal' if np.array_equal(kept_parts, keep) else 'differ'}"]
    if n <= EXACT_MAX:
        q = dedup.normalised(quantize(x).astype(np.float32))
        exact = reference_dedup.near_duplicates(q, scores, threshold, index="flat")
        same.append(f"exact: {'equal' if np.array_equal(kept_parts, exact) else 'differ'} "
                    f"({int((kept_parts != exact).sum())} rows)")
    shutil.rmtree(folder, ignore_errors=True)
    return [f"{n:.0e}".replace("+0", ""), len(planted), f"{t_parts:.1f}", f"{t_single:.1f}",
            f"{t_parts / t_single:.2f}",
            f"{len(planted & found) / len(planted):.4f}", stats["dropped"]["near_dup"], int((~keep).sum()),
            "; ".join(same), f"{load_start:.1f}-{load_end:.1f}"]


def dedup_report(rows: list, workers: int) -> str:
    from curation import dedup_clusters

    head = ["n", "planted pairs", "partitioned s", "single-node s", "ratio", "recall planted",
            "dropped (partitioned)", "dropped (single-node)", "dropped rows vs", "load (start-end)"]
    return "\n".join([
        DEDUP_SECTION, "",
        (f"`benchmarks/curation_scale.py --dedup` ({time.strftime('%Y-%m-%d')}, "
         f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs). "
         f"The dedup step's near-duplicate search as build-dataset runs it (`dedup_parts.run_dedup`, local "
         f"engine, {workers} worker processes: score parts of 10k rows, PCA-64 and ~sqrt(3n) k-means "
         "centroids from a sample, each row sent to its nearest centroid and to every other within "
         f"{dedup_clusters.BOUNDARY_MARGIN} cosine of it (at most {dedup_clusters.MAX_PROBES}), one task per "
         "group of clusters finding candidates in the PCA space and checking them on the stored int8 "
         "descriptors) against the single-node reference search "
         "(`tests/reference_dedup.near_duplicates(index=\"ivf\")`) on the same clustered "
         "512-d vectors with planted copies at cosine 0.92-0.99, threshold 0.9, right after. Targets: ratio "
         "<= 1.5, recall >= 0.99. Dropped rows compared with the single-node search, and up to "
         f"n = {EXACT_MAX:,} with the exact flat search on the stored int8 descriptors. Load: the 1-minute "
         "load average at the start and the end of the row."), "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *["| " + " | ".join(str(c) for c in r) + " |" for r in rows], "",
    ])


def _mib(b: int) -> str:
    return f"{b / 2**20:.0f}"


def report(results: list[dict], workers: int) -> str:
    small, big = results[0], results[-1]
    head = ["step", f"driver MiB n={small['images']}", f"n={big['images']}", "ratio",
            f"largest worker MiB n={small['images']}", f"n={big['images']}", "ratio",
            f"items/CPU-s n={small['images']}", f"n={big['images']}"]
    rows = []
    for step in STEPS:
        a, b = small["steps"][step], big["steps"][step]
        items_a = small["pairs"] if step == "extract" else small["images"]
        items_b = big["pairs"] if step == "extract" else big["images"]
        w = (_mib(a["worker_rss"]), _mib(b["worker_rss"]), f"{b['worker_rss'] / a['worker_rss']:.2f}") \
            if a["worker_rss"] else ("-", "-", "-")
        rows.append([step, _mib(a["driver_rss"]), _mib(b["driver_rss"]),
                     f"{b['driver_rss'] / a['driver_rss']:.2f}",
                     *w, f"{items_a / a['cpu']:.0f}", f"{items_b / b['cpu']:.0f}"])
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                      + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])
    byte_rows = "\n".join(f"| {k} | {v / big['images']:,.0f} |" for k, v in big["bytes"].items())
    loads = ", ".join(f"n={r['images']}: {r['load'][0]:.1f}-{r['load'][1]:.1f}"
                      for r in results if "load" in r)
    return "\n".join([
        SECTION, "",
        (f"`benchmarks/curation_scale.py` ({time.strftime('%Y-%m-%d')}, "
         f"{platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} cores shared with other jobs, local engine with {workers} worker processes). "
         f"Pools of {small['images']} and {big['images']} images (mini web, written directly), each step in "
         "a fresh process as build-dataset runs it. Peak RSS in MiB; ratio = 10N / N (target <= 1.25); "
         "throughput = items per CPU second (driver + workers), items = pairs for extract, pool images else. "
         "Scoring (randomly initialised own filter network, CPU) runs in the driver: it has no workers. "
         f"Command: `{' '.join(['benchmarks/curation_scale.py', *sys.argv[1:]])}`; 1-minute load average at "
         f"the start and end of each size: {loads}."), "",
        table, "",
        f"Bytes stored per pool image at n={big['images']}:", "",
        "| output | bytes / image |", "|---|---|", byte_rows, "",
    ])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--prepare", "--step", "--after-extract"):
        mode, workdir, n, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        if mode == "--prepare":
            prepare(workdir, n, workers)
            print(json.dumps({}))
        elif mode == "--after-extract":
            print(json.dumps({"images": after_extract(workdir, n, workers)}))
        else:
            print(json.dumps(run_step(workdir, n, workers, sys.argv[5])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument("--dedup", type=int, nargs="+",
                        help="only the near-duplicate search comparison at these sizes")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="curation-scale-"))
    try:
        if args.dedup:
            rows = []
            for n in args.dedup:
                rows.append(dedup_compare(base, n, args.workers))
                print(rows[-1], flush=True)
            text = dedup_report(rows, args.workers)
            print(text)
            if not args.no_write:  # rows of earlier code, kept by hand under this heading, stay
                write_section(DEDUP_SECTION, text, keep=DEDUP_EARLIER)
            return
        results = []
        for n in args.sizes:
            print(f"n={n} ...", flush=True)
            load = os.getloadavg()[0]
            results.append(measure_size(base, n, args.workers))
            results[-1]["load"] = [load, os.getloadavg()[0]]  # 1-minute load average, start and end
            print(json.dumps(results[-1]), flush=True)  # each size's figures as soon as they exist
        text = report(results, args.workers)
        print(text)
        print(json.dumps(results, indent=1))
        if not args.no_write:
            write_section(SECTION, text)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
