"""Curation speed: scoring throughput, FAISS near-duplicate search at scale, and cached reruns.

    .venv/bin/python benchmarks/curation_bench.py [--quick] [--threads 2] [--no-write]

(a) `score.score_pool` (tar reading, JPEG decoding, preprocessing, copy descriptors, part files) against
    the bare filter-network forward (image + text towers) on the very same, already decoded batches.
    Throughput ratio = bare time / score_pool time (target >= 0.8). Runs are interleaved, best kept.
(b) `near_duplicates(index="ivf")` (the single-node reference, tests/reference_dedup.py) on 1e4, 1e5, 1e6
    clustered 512-d unit vectors with planted near-duplicate pairs: wall time, and recall of the planted
    pairs (a planted pair counts when the IVF pair list holds it); on the sizes where it is affordable,
    recall of every pair an exact flat search finds (target: 1e6 in <= 60 s on 2 cores with recall >=
    0.95).
(c) `build_dataset` on a served mini web: a full run, then a rerun after changing select.fraction
    (target <= 5% of the full run's time).

Figures go to benchmarks/RESULTS.md under "## Curation" (other sections are left untouched).
`--quick` is a smoke run: tiny pool, 1e4 only, a tiny web.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_md import write_section  # after the path set-up

SECTION = "## Curation"
KEEP = "### Not measured by this script"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# -- (a) scoring throughput ---------------------------------------------------------------------------------
def _make_pool(pool: Path, n: int, per_shard: int, size: int) -> None:
    """An img2dataset-like pool: NNNNN.tar (jpg, txt, json with uid) + NNNNN_stats.json, mini-web scenes."""
    import numpy as np
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    words = ["red", "blue", "green", "circle", "square", "star", "on", "stripes", "dots", "two", "three", "a"]
    pool.mkdir(parents=True, exist_ok=True)
    for shard in range(0, n, per_shard):
        name = f"{shard // per_shard:05d}"
        with wds.TarWriter(str(pool / f"{name}.tar")) as sink:
            for i in range(shard, min(n, shard + per_shard)):
                arr = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
                img = Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                caption = " ".join(rng.choice(words, size=8))
                sink.write({"__key__": f"{name}{i:04d}", "jpg": buf.getvalue(), "txt": caption,
                            "json": json.dumps({"uid": f"{i:032x}", "url": f"http://x/{i}.jpg"})})
        (pool / f"{name}_stats.json").write_text(json.dumps({"successes": min(per_shard, n - shard)}))


def _untrained_own_filter(out: Path):
    """Our own filter architecture (demo settings), randomly initialised, loaded like a trained one."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from curation.filter_network import load_filter_network
    from curation.train_filter import model_config, preprocess_config
    from shared.config.curation import FilterNetworkConfig, TrainFilterConfig

    tcfg = TrainFilterConfig()
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_config(tcfg))
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_config(tcfg),
                                                           "preprocess_cfg": preprocess_config(tcfg)}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
    return load_filter_network(FilterNetworkConfig(model=f"local-dir:{out}"))


def scoring_bench(tmp: Path, n: int, batch: int, repeats: int, models: list[str],
                  workers: int = 0) -> list[list]:
    import shutil

    import torch
    from PIL import Image

    from curation import score
    from curation.filter_network import load_filter_network
    from curation.pool import shard_samples
    from shared.config.curation import FilterNetworkConfig

    pool = tmp / "pool"
    _make_pool(pool, n, per_shard=max(batch, n // 4), size=64)
    rows = []
    for model_name in models:
        net = (_untrained_own_filter(tmp / "own-filter") if model_name == "own"
               else load_filter_network(FilterNetworkConfig(model=model_name)))  # random init, offline
        # The same batches, decoded once: what the bare forward is timed on.
        batches = []
        for shard in sorted(pool.glob("*.tar")):
            items = list(shard_samples(shard))
            for s in range(0, len(items), batch):
                chunk = items[s:s + batch]
                images = torch.stack([net.preprocess(Image.open(io.BytesIO(jpg)).convert("RGB"))
                                      for _, jpg, _, _ in chunk])
                batches.append((images, net.tokenizer([cap for _, _, cap, _ in chunk])))

        def bare(batches=batches, net=net) -> None:
            for images, tokens in batches:
                img = net.encode_image_tensor(images)
                txt = net.encode_token_tensor(tokens)
                (img * txt).sum(axis=1)

        def full(net=net) -> None:
            out = tmp / "scores"
            shutil.rmtree(out, ignore_errors=True)
            score.score_pool(pool, net, out, batch_size=batch, num_workers=workers)

        times = {"bare": [], "full": []}
        bare()
        full()  # warm-up both
        for _ in range(repeats):
            for name, fn in (("bare", bare), ("full", full)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        tb, tf = min(times["bare"]), min(times["full"])
        label = "own (demo filter, 64 px)" if model_name == "own" else f"{model_name} (random init, 224 px)"
        label += f", {workers} decode workers" if workers > 1 else ", decoding in-process"
        rows.append([label, n, f"{n / tb:.0f}", f"{n / tf:.0f}", f"{tb / tf:.2f}"])
        print(f"scoring {label}: bare {n / tb:.0f} img/s, score_pool {n / tf:.0f} img/s, ratio {tb / tf:.2f}",
              flush=True)
    return rows


# -- (b) FAISS near duplicates ------------------------------------------------------------------------------
def planted_embeddings(n: int, d: int, n_pairs: int, seed: int = 0):
    """Clustered unit vectors (1000 topics, like web images) with n_pairs planted copies (cosine
    0.92-0.99)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_topics = 1000
    topics = rng.standard_normal((n_topics, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):  # chunks bound the temporary float64 arrays
        m = min(n, s + 100_000) - s
        noise = rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d) * 1.2
        x[s:s + m] = topics[rng.integers(0, n_topics, m)] * 1.0 + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.choice(n, size=2 * n_pairs, replace=False)
    a, b = src[:n_pairs], src[n_pairs:]
    noise = rng.standard_normal((n_pairs, d)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = rng.uniform(np.arccos(0.99), np.arccos(0.92), size=(n_pairs, 1)).astype(np.float32)
    noise -= (noise * x[a]).sum(1, keepdims=True) * x[a]  # orthogonal to the original
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x[b] = np.cos(angle) * x[a] + np.sin(angle) * noise  # exact cosine cos(angle) to x[a]
    return x, np.minimum(a, b), np.maximum(a, b)


def previous_ivf_pairs(x, threshold: float, seed: int = 0):
    """The baseline: `ivf_pairs` (tests/reference_dedup.py) as it was before the 2026-11-27 tuning (self
    pairs only). PCA to 128 dims, faiss IndexIVFFlat with 2 sqrt(n) lists, nprobe 4, range search at
    threshold - 0.08, exact check."""
    import faiss
    import numpy as np

    from curation import dedup
    from tests import reference_dedup

    dedup.set_faiss_threads()
    n, d = x.shape
    rng = np.random.default_rng(seed)
    pca = faiss.PCAMatrix(d, 128)
    pca.train(x[np.sort(rng.choice(n, min(n, 50_000), replace=False))])
    reduced = dedup.normalised(pca.apply(x))
    nlist = int(max(1, min(2 * np.sqrt(n), n // 32)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(128), 128, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter = seed, 10
    index.train(reduced[np.sort(rng.choice(n, min(n, nlist * 32), replace=False))])
    index.add(reduced)
    index.nprobe = min(4, nlist)
    ci, cj = reference_dedup.range_pairs(index, reduced, threshold - 0.08, upper_only=True)
    ok = np.einsum("ij,ij->i", x[ci], x[cj]) >= threshold
    return ci[ok], cj[ok]


def dedup_bench(sizes: list[int], exact_max: int, baseline_sizes: set[int],
                threshold: float = 0.9) -> list[list]:
    import numpy as np

    from curation import dedup
    from tests import reference_dedup

    rows = []
    for n in sizes:
        x, pa, pb = planted_embeddings(n, 512, n_pairs=max(100, n // 100))
        scores = np.random.default_rng(1).random(n).astype(np.float32)
        planted = set(zip(pa.tolist(), pb.tolist(), strict=True))
        found = {}
        real_ivf = reference_dedup.ivf_pairs

        # keep the IVF pair list that near_duplicates computes
        def recording(*args, found=found, real_ivf=real_ivf, **kw):
            found["pairs"] = real_ivf(*args, **kw)
            return found["pairs"]

        reference_dedup.ivf_pairs = recording
        try:
            t0 = time.perf_counter()
            keep = reference_dedup.near_duplicates(x, scores, threshold, index="ivf")
            t_ivf = time.perf_counter() - t0
        finally:
            reference_dedup.ivf_pairs = real_ivf
        i, j = found["pairs"]
        got = set(zip(i.tolist(), j.tolist(), strict=True))
        recall_planted = len(planted & got) / len(planted)
        old_cell, ratio_cell, old_recall = "-", "-", "-"
        if n in baseline_sizes:  # the same data, right after: both see about the same machine load
            t0 = time.perf_counter()
            oi, oj = previous_ivf_pairs(dedup.normalised(x), threshold)
            t_old = time.perf_counter() - t0
            old_cell, ratio_cell = f"{t_old:.1f}", f"{t_ivf / t_old:.2f}"
            old_pairs = set(zip(oi.tolist(), oj.tolist(), strict=True))
            old_recall = f"{len(planted & old_pairs) / len(planted):.4f}"
        exact_cell, t_flat_cell = "n/a (exact search too slow here)", "-"
        if n <= exact_max:
            t0 = time.perf_counter()
            fi, fj = reference_dedup.flat_pairs(dedup.normalised(x), threshold)
            t_flat = time.perf_counter() - t0
            exact = set(zip(fi.tolist(), fj.tolist(), strict=True))
            exact_cell = f"{len(exact & got) / max(1, len(exact)):.4f} of {len(exact)}"
            t_flat_cell = f"{t_flat:.1f}"
        load = f"{os.getloadavg()[0]:.1f}"
        rows.append([f"{n:.0e}".replace("+0", ""), len(planted), f"{t_ivf:.1f}", old_cell, ratio_cell,
                     t_flat_cell, f"{recall_planted:.4f}", old_recall, exact_cell, int((~keep).sum()), load])
        print(f"dedup n={n}: ivf {t_ivf:.1f}s (previous {old_cell}s), flat {t_flat_cell}s, planted recall "
              f"{recall_planted:.4f} (previous {old_recall}), exact recall {exact_cell}, load {load}",
              flush=True)
        del x
    return rows


# -- (c) cached rerun ---------------------------------------------------------------------------------
# The tests' web: a full run in about a minute on 2 quiet cores. --demo uses the demo web (2000 images,
# 12 filter epochs: several minutes).
SMALL_WEB = ["web.n_images=1000", "web.hq_size=1200", "web.bench_train_per_class=4",
             "web.bench_test_per_class=10", "web.slow_seconds=6", "curation.download.samples_per_shard=250",
             "curation.train_filter.epochs=6"]


def rerun_bench(tmp: Path, quick: bool, demo: bool = False, profile: bool = False) -> list[list]:
    from openaim.pipeline import build_dataset
    from shared.config import load_config
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    port = _free_port()
    base = [f"workdir={tmp / 'run'}", f"web.port={port}"]
    if quick:
        base += ["web.n_images=200", "web.hq_size=200", "web.bench_train_per_class=2",
                 "web.bench_test_per_class=2", "web.slow_seconds=4", "curation.train_filter.epochs=1"]
    elif not demo:
        base += SMALL_WEB
    cfg = load_config(None, base)
    generate_web(cfg.web, cfg.web_dir)
    with serve_in_background(cfg.web_dir, host="127.0.0.1", port=port):
        t0 = time.perf_counter()
        first = build_dataset(cfg)
        t_full = time.perf_counter() - t0
        rerun_cfg = load_config(None, [*base, "curation.select.fraction=0.3"])
        profiler = None
        if profile:  # where a rerun's time goes (fixed costs: hashing inputs, loading scores, writing shards)
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        second = build_dataset(rerun_cfg)
        t_rerun = time.perf_counter() - t0
        if profiler:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    assert second["ran"] == ["select"], second["ran"]
    web = (f"{'demo' if demo else 'test-sized'} web ({cfg.web.n_images} images, "
           f"{cfg.curation.train_filter.epochs} filter epochs)")
    print(f"rerun: full {t_full:.1f}s ({first['kept']} kept), fraction rerun {t_rerun:.2f}s "
          f"({second['kept']} kept), ratio {t_rerun / t_full:.3f}", flush=True)
    return [[f"full build_dataset, {web}, fraction 0.15 (baseline)", f"{t_full:.1f}", "1.000"],
            [f"rerun with fraction 0.3 (ran: {', '.join(second['ran'])})", f"{t_rerun:.2f}",
             f"{t_rerun / t_full:.3f}"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small pool, 1e4 vectors, tiny web")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["score", "dedup", "rerun"], action="append",
                        help="run only these parts (repeatable); the section is then not written")
    parser.add_argument("--demo", action="store_true",
                        help="(c) on the demo web instead of the tests' smaller web")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--dedup-sizes", type=int, nargs="+", help="(b) at these sizes (default 1e4 1e5 1e6)")
    parser.add_argument("--profile-rerun", action="store_true", help="(c) print a cProfile of the rerun")
    parser.add_argument("--score-workers", type=int, default=0,
                        help="(a) score_pool's num_workers (0/1: in-process)")
    parser.add_argument("--score-models", nargs="+",
                        help="(a) filter networks to time (default: own ViT-B-32)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="(b) without the previous ivf_pairs for comparison")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    parts = set(args.only or ["score", "dedup", "rerun"])
    machine = f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}, CPU"
    score_rows = dedup_rows = rerun_rows = None
    with tempfile.TemporaryDirectory(prefix="curation-bench-") as tmp:
        tmp = Path(tmp)
        if "score" in parts:
            models = args.score_models or (["own"] if args.quick else ["own", "ViT-B-32"])
            score_rows = []
            for model in models:  # ViT-B-32: a real-size tower, against which decoding weighs less
                own = model == "own"
                full = own and not args.quick
                score_rows += scoring_bench(tmp / f"score-{model}", n=1024 if full else 256, batch=128,
                                            repeats=3 if full else 2, models=[model],
                                            workers=args.score_workers)
        if "dedup" in parts:
            sizes = args.dedup_sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
            dedup_rows = dedup_bench(sizes, exact_max=10_000 if args.quick else 100_000,
                                     baseline_sizes=set() if args.no_baseline else set(sizes))
        if "rerun" in parts:
            rerun_rows = rerun_bench(tmp / "rerun", args.quick, args.demo, args.profile_rerun)
    if args.no_write or args.only or args.quick:
        return
    text = "\n".join([
        SECTION, "",
        f"`benchmarks/curation_bench.py` on {time.strftime('%Y-%m-%d')}, {machine}, 2 cores shared with",
        f"other jobs (load average {os.getloadavg()[0]:.1f} at the end; per-row load in (b)). Every ratio is",
        "against a baseline measured in the same run, named in its table.", "",
        "(a) Scoring throughput: `score_pool` (tar read, JPEG decode, preprocess, copy descriptors, sha256,",
        "part files) vs the baseline, the bare filter-network forward (image + text towers) on the same",
        "pre-decoded, pre-tokenised batches of 128; best of interleaved runs. Target ratio >= 0.8:", "",
        _table(["filter network", "images", "bare img/s", "score_pool img/s", "ratio"], score_rows), "",
        "(b) Near duplicates, `near_duplicates(index=\"ivf\")` (PCA-64, faiss k-means into sqrt(4n)",
        "lists, nprobe 4, one BLAS product per list, exact verification) on clustered 512-d unit vectors",
        "(1000 topics) with planted copies at cosine 0.92-0.99, threshold 0.9; baseline: the previous",
        "`ivf_pairs` (PCA-128 + faiss IndexIVFFlat range search, nprobe 4) on the same vectors right after.",
        "Recall of the planted pairs, and of every pair an exact flat range search finds where affordable.",
        "Target: 1e6 in <= 60 s, recall >= 0.95:", "",
        _table(["n", "planted pairs", "ivf s", "previous ivf s", "ratio", "exact flat s", "recall planted",
                "previous recall", "recall vs exact", "dropped", "load"], dedup_rows), "",
        "(c) Cached rerun, in-process `build_dataset` on the served mini web (own filter network), rerun",
        "after changing `select.fraction`; baseline: the full run. Target <= 0.05:", "",
        _table(["run", "s", "ratio"], rerun_rows),
    ])
    write_section(SECTION, text, keep=KEEP)
    print(text)


if __name__ == "__main__":
    main()
