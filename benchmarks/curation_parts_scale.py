"""Curation bookkeeping against the number of parts: does the driver's and the file system's work per part
stay flat as parts grow (at the paper's 5e9 images, ~600 per pool shard, P ~ 8e6 parts)?

    .venv/bin/python benchmarks/curation_parts_scale.py [--parts 1000 3000 10000 30000] [--workers 2]
    .venv/bin/python benchmarks/curation_parts_scale.py --quick      # 1,000 and 10,000 parts
    .venv/bin/python benchmarks/curation_parts_scale.py --group-only   # the near-copy group alone

A synthetic pool of P small parts (``make_pool``: ``ROWS_PER_PART`` rows each, 32-d copy descriptors,
8-d filter embeddings, one tiny JPEG per sample in each pool tar, a url/caption parquet source per part;
every tenth row an exact copy of a row one part earlier, every tenth another a near copy of a row two parts
earlier) runs through extract -> dedup (exact, near with k-means clusters, decontamination against a small
eval index) -> safety (two concepts) -> select + write (fraction 0.5), each step in a fresh process as the
pipeline's driver runs it, on the local engine with ``--workers`` worker processes. Per step and P:
- driver CPU seconds per part and all CPU seconds (driver + workers) per part, the step's work alone (the
  workers have imported the step's modules before the clock starts: a fixed start-up cost would make small
  P look dear per part);
- the driver's peak RSS (VmHWM);
- files created per part (every process's file creations and renames under the pool's folder, counted by
  an audit hook that ``sitecustomize`` installs in the driver and in each worker, temporary files
  included) and the most files created in one folder, per part;
- the largest task: the largest worker's peak RSS, and for dedup the largest near-copy cluster task in
  vectors over its configured target.
``--group G`` plants one group of G near copies in a pool of ``GROUP_POOL_PARTS`` parts and reports
the dedup step's largest cluster task over its target, pairs and driver RSS.

The last line is ``growth: seconds_per_part=X files_per_part=Y driver_rss=Z largest_task=W`` (X, Y, Z:
the worst step's ratio largest P / smallest P, X over both CPU measures; W: the largest near-copy task
over the target with the planted group). Figures go to benchmarks/RESULTS.md under "## Curation:
bookkeeping against parts".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.results_md import run_line, write_section
from benchmarks.synthetic_parts import EMB_DIM, ROWS_PER_PART, make_pool

SECTION = "## Curation: bookkeeping against parts"
STEPS = ("extract", "dedup", "safety", "select")
TASK_PARTS = 100  # curation.task_bytes set to this many parts' bytes: at the paper's scale a 1 GiB task holds
# ~500 parts of ~2 MB; this pool's parts are ~2 KB, so the default 1 GiB would put every part in one task
GROUP_POOL_PARTS = 1000  # the planted near-copy group's pool: this many parts besides the group's own
GROUP_ROWS_PER_PART = 100

# Installed by PYTHONPATH in the driver and every (spawned) worker: counts the files created under
# $OPENAIM_COUNT_ROOT (open for writing/creating, rename targets, mkdir; dot-named temporary files are
# counted when renamed to their final name) and writes the count per process at exit.
_SITECUSTOMIZE = '''
import atexit, os, sys
_root = os.environ.get("OPENAIM_COUNT_ROOT")
if _root:
    _counts = {}
    def _note(path):
        try:
            path = os.fsdecode(path)
        except TypeError:
            return
        if not path.startswith(_root):
            return
        head, name = os.path.split(path)
        if name.startswith("."):
            return
        _counts[head] = _counts.get(head, 0) + 1
    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            if (isinstance(mode, str) and any(c in mode for c in "wxa")) or \\
                    (mode is None and isinstance(flags, int) and flags & os.O_CREAT):
                _note(path)
        elif event == "os.rename":
            _note(args[1])
        elif event == "os.mkdir":
            _note(args[0])
    sys.addaudithook(_hook)
    def _dump():
        out = os.path.join(os.environ["OPENAIM_COUNT_DIR"], f"{os.getpid()}.json")
        with open(out + ".part", "w") as f:
            import json
            json.dump(_counts, f)
        os.replace(out + ".part", out)
    atexit.register(_dump)
'''


def _configs(flat_max: int, driver_sample: int):
    from shared.config.curation import DedupConfig, ExtractConfig, SelectConfig

    return (ExtractConfig(), DedupConfig(index="auto", flat_max=flat_max, eval_threshold=0.95,
                                         driver_sample=driver_sample), SelectConfig(fraction=0.5))


_STEP_MODULES = {"extract": ("curation.extract", "curation.extract_parts"),
                 "dedup": ("curation.dedup_parts", "faiss"), "safety": ("curation.safety",),
                 "select": ("curation.select_parts",)}


def _warm(modules: tuple[str, ...], _: int) -> int:
    """Import a step's modules in a worker (their import cost is not the step's work per part); the sleep
    lets each worker take one."""
    import importlib

    for m in modules:
        importlib.import_module(m)
    time.sleep(0.5)
    return os.getpid()


def _proc_cpu(pid: int) -> float:
    """A live process's CPU seconds (user + system) from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_step(root: Path, step: str, workers: int, flat_max: int, driver_sample: int) -> dict:
    """One step in this (fresh) process, as the pipeline's driver runs it: its stats, and the CPU seconds
    of the step alone in this process and in the engine's workers (after their imports)."""
    from functools import partial

    from curation.engine import LocalEngine, peak_rss_bytes
    from curation.parts import list_parts
    from shared.atomic import atomic_dir

    extract_cfg, dedup_cfg, select_cfg = _configs(flat_max, driver_sample)
    engine = LocalEngine(workers, scratch_root=root)
    parts = list_parts(root / "scores" / "parts")
    task_bytes = TASK_PARTS * int(np.median([p.bytes for p in parts]))
    stats: dict = {}
    try:
        pids = set(engine.map(partial(_warm, _STEP_MODULES[step]), range(max(1, workers))))
        for m in _STEP_MODULES[step]:
            __import__(m)
        imported_rss = peak_rss_bytes()
        before = [time.process_time(), sum(_proc_cpu(p) for p in pids if p != os.getpid())]
        if step == "extract":
            from curation.extract import resolve_sources
            from curation.extract_parts import run_extract

            sources = resolve_sources([str(root / "sources")], root)
            stats = run_extract(engine, extract_cfg, sources, root / "pairs", root / "extract_stats.json")
        elif step == "dedup":
            from curation.dedup_parts import run_dedup

            with atomic_dir(root / "dedup" / "keep") as keep:
                stats = run_dedup(engine, list_parts(root / "scores" / "parts"), dedup_cfg,
                                  root / "dedup" / "work", keep, root / "eval_index.npy", task_bytes)
            shutil.rmtree(root / "dedup" / "work", ignore_errors=True)
        elif step == "safety":
            from curation.safety import run_safety

            text = np.random.default_rng(3).standard_normal((2, EMB_DIM)).astype(np.float32)
            text /= np.linalg.norm(text, axis=1, keepdims=True)
            with atomic_dir(root / "safety" / "keep") as keep:
                stats = run_safety(engine, list_parts(root / "scores" / "parts"), text, 0.8, keep, task_bytes)
        elif step == "select":
            from curation.select_parts import run_select

            with atomic_dir(root / "shards") as shards, atomic_dir(root / "subset") as subset:
                stats = run_select(engine, list_parts(root / "scores" / "parts"),
                                   [root / "dedup" / "keep", root / "safety" / "keep"], root / "pool", shards,
                                   subset, root / "subset.npy", select_cfg, False, task_bytes)
        driver_cpu = time.process_time() - before[0]
        worker_cpu = sum(_proc_cpu(p) for p in pids if p != os.getpid()) - before[1]
    finally:
        worker_rss = engine.worker_peak_rss
        engine.close()
    return {"stats": stats, "worker_rss": worker_rss, "driver_cpu": driver_cpu,
            "all_cpu": driver_cpu + worker_cpu, "imported_rss": imported_rss}


def _child(args: list[str], count_dir: Path | None = None, count_root: Path | None = None) -> dict:
    """This script in a fresh process (with the file-counting hook when ``count_dir`` is given); its
    JSON answer and wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if count_dir is not None:
        hook = count_dir / "site"
        hook.mkdir(parents=True, exist_ok=True)
        (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env |= {"OPENAIM_COUNT_DIR": str(count_dir), "OPENAIM_COUNT_ROOT": str(count_root)}
        env["PYTHONPATH"] = os.pathsep.join([str(hook), str(ROOT)])
    else:
        env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        wall = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=out, stderr=err, env=env)
        status = proc.wait()
        wall = time.perf_counter() - wall
        out.seek(0), err.seek(0)
        if status != 0:
            raise SystemExit(f"{args}: {err.read()[-3000:]}")
        answer = json.loads(out.read().strip().splitlines()[-1])
    answer["wall"] = wall
    return answer


def _counted(count_dir: Path) -> tuple[int, int]:
    """(files created in all, most in one folder) from every process's counts."""
    by_folder: dict[str, int] = {}
    for path in count_dir.glob("*.json"):
        for folder, n in json.loads(path.read_text()).items():
            by_folder[folder] = by_folder.get(folder, 0) + n
    return sum(by_folder.values()), max(by_folder.values(), default=0)


def measure(base: Path, parts: int, workers: int, flat_max: int, driver_sample: int) -> dict:
    root = base / f"p{parts}"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    _child(["--make", str(root), str(parts)])
    print(f"  P={parts}: pool made in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = {}
    for step in STEPS:
        count_dir = base / f"count-{parts}-{step}"
        shutil.rmtree(count_dir, ignore_errors=True)
        count_dir.mkdir(parents=True)
        r = _child(["--step", str(root), step, str(workers), str(flat_max), str(driver_sample)], count_dir,
                   root)
        r["files"], r["files_one_folder"] = _counted(count_dir)
        shutil.rmtree(count_dir, ignore_errors=True)
        rows[step] = r
        print(f"  P={parts} {step}: {r['wall']:.1f} s wall, driver {r['driver_cpu']:.1f} CPU-s, "
              f"all {r['all_cpu']:.1f} CPU-s, {r['driver_rss'] / 2**20:.0f} MiB, {r['files']} files",
              flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return {"parts": parts, "rows": parts * ROWS_PER_PART, "steps": rows}


def measure_group(base: Path, group: int, workers: int, flat_max: int, driver_sample: int) -> dict:
    """The dedup step on a pool with one planted group of ``group`` near copies."""
    root = base / f"group{group}"
    shutil.rmtree(root, ignore_errors=True)
    parts = GROUP_POOL_PARTS + -(-group // GROUP_ROWS_PER_PART)
    _child(["--make", str(root), str(parts), str(GROUP_ROWS_PER_PART), str(group)])
    r = _child(["--step", str(root), "dedup", str(workers), str(flat_max), str(driver_sample)])
    shutil.rmtree(root, ignore_errors=True)
    near = r["stats"].get("near_tasks", {})
    return {"group": group, "rows": parts * GROUP_ROWS_PER_PART, "wall": r["wall"],
            "driver_rss": r["driver_rss"],
            "worker_rss": r["worker_rss"], "largest": near.get("largest"), "target": near.get("target"),
            "pairs": near.get("pairs"), "dropped": r["stats"]["dropped"]["near_dup"],
            **{k: near.get(k) for k in ("sample", "driver_rows", "coarse")}}


def _ratio(a: float, b: float) -> float:
    return b / a if a else float("inf") if b else 1.0


def report(results: list[dict], group: dict | None, workers: int) -> tuple[str, str]:
    small, big = results[0], results[-1]
    head = ["step", "P", "driver CPU ms/part", "all CPU ms/part", "wall s", "driver MiB", "files/part",
            "most files in one folder / P", "largest worker MiB", "largest near task / target"]
    lines, growth = [], {"seconds_per_part": 0.0, "files_per_part": 0.0, "driver_rss": 0.0}
    for step in STEPS:
        for res in results:
            r, p = res["steps"][step], res["parts"]
            near = r["stats"].get("near_tasks") if step == "dedup" else None
            lines.append([step, f"{p:,}", f"{1e3 * r['driver_cpu'] / p:.2f}", f"{1e3 * r['all_cpu'] / p:.2f}",
                          f"{r['wall']:.1f}", f"{r['driver_rss'] / 2**20:.0f}", f"{r['files'] / p:.2f}",
                          f"{r['files_one_folder'] / p:.2f}", f"{r['worker_rss'] / 2**20:.0f}",
                          f"{near['largest'] / near['target']:.2f}" if near else "-"])
        a, b = small["steps"][step], big["steps"][step]
        pa_, pb = small["parts"], big["parts"]
        growth["seconds_per_part"] = max(growth["seconds_per_part"],
                                         _ratio(a["driver_cpu"] / pa_, b["driver_cpu"] / pb),
                                         _ratio(a["all_cpu"] / pa_, b["all_cpu"] / pb))
        growth["files_per_part"] = max(growth["files_per_part"], _ratio(a["files"] / pa_, b["files"] / pb))
        growth["driver_rss"] = max(growth["driver_rss"], _ratio(a["driver_rss"], b["driver_rss"]))
    largest = (group["largest"] / group["target"]) if group and group.get("largest") else float("nan")
    line = (f"growth: seconds_per_part={growth['seconds_per_part']:.2f} "
            f"files_per_part={growth['files_per_part']:.2f} driver_rss={growth['driver_rss']:.2f} "
            f"largest_task={largest:.2f}")
    group_text = []
    if group:
        group_text = ["", (f"Planted near-copy group: {group['group']:,} near copies of one image in a pool "
                           f"of {group['rows']:,} rows ({GROUP_ROWS_PER_PART} per part): dedup step "
                           f"{group['wall']:.0f} s wall, driver {group['driver_rss'] / 2**20:.0f} MiB, "
                           f"largest worker {group['worker_rss'] / 2**20:.0f} MiB, largest near-copy task "
                           f"{group['largest']} vectors (target {group['target']}), pairs {group['pairs']}, "
                           f"{group['dropped']:,} dropped as near copies; the clusters' sample "
                           f"{group['sample']:,} rows, of which the driver read {group['driver_rows']:,} "
                           f"({group['coarse']} coarse clusters: 1 = one level).")]
    text = "\n".join([
        SECTION, "",
        (f"{run_line(__file__, f'local engine with {workers} worker processes')}. A synthetic "
         "pool of P parts of "
         f"{ROWS_PER_PART} rows (benchmarks/synthetic_parts.make_pool), each step in a fresh process, "
         f"curation.task_bytes = {TASK_PARTS} parts' bytes (P / {TASK_PARTS} tasks). CPU per "
         "part: the step's work after imports (driver alone, and driver + workers); driver MiB = its peak "
         "RSS; files = every file the step's processes created under the pool's folder, temporary ones "
         "included (audit hook)."), "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *["| " + " | ".join(str(c) for c in r) + " |" for r in lines], *group_text, "",
        f"Growth, largest P / smallest P (worst step): `{line}`", ""])
    return text, line


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--make":
        root, parts = Path(sys.argv[2]), int(sys.argv[3])
        rows = int(sys.argv[4]) if len(sys.argv) > 4 else ROWS_PER_PART
        group = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        make_pool(root, parts, rows, group=group, tars=len(sys.argv) <= 4)
        print(json.dumps({}))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        from curation.engine import peak_rss_bytes

        out = run_step(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        print(json.dumps({**out, "driver_rss": peak_rss_bytes()}, default=float))
        return
    from shared.config.curation import DRIVER_SAMPLE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[1000, 3000, 10000, 30000])
    parser.add_argument("--quick", action="store_true", help="two sizes: 1,000 and 10,000 parts")
    parser.add_argument("--group", type=int, default=10_000, help="planted near-copy group size (0: none)")
    parser.add_argument("--group-only", action="store_true", help="the planted group's dedup run alone")
    parser.add_argument("--flat-max", type=int, default=1000, help="dedup.flat_max: clusters above it")
    parser.add_argument("--driver-sample", type=int, default=DRIVER_SAMPLE,
                        help="dedup.driver_sample: most sample rows the driver reads (fewer than the "
                             "sample's: two-level clusters)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    sizes = [1000, 10000] if args.quick else sorted(args.parts)
    base = args.keep or Path(tempfile.mkdtemp(prefix="curation-parts-"))
    try:
        results = []
        for parts in [] if args.group_only else sizes:
            results.append(measure(base, parts, args.workers, args.flat_max, args.driver_sample))
            print(json.dumps(results[-1], default=float), flush=True)
        group = measure_group(base, args.group, args.workers, args.flat_max,
                              args.driver_sample) if args.group else None
        if group:
            print(json.dumps(group), flush=True)
        if not results:
            return
        text, line = report(results, group, args.workers)
        print(text)
        if not args.no_write:
            write_section(SECTION, text, keep="### ")
        print(line)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
