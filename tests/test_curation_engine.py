"""The curation steps on an engine (curation.engine) against the single-process functions they replace.

Score parts are written here from planted vectors (exact copies, near copies at cosine 0.92-0.99,
crop-like views); the partitioned dedup must keep exactly the rows the single-process functions keep, on
the local engine in-process, in a process pool, and as Spark tasks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import dedup, dedup_clusters, dedup_parts
from curation.copy_detection import DIM, VIEWS
from curation.dedup import decontaminate
from curation.engine import LocalEngine, SparkEngine
from curation.extract import ExtractStats, file_links, pair_uid, screen_link
from curation.parts import list_parts, quantize, read_part, write_part
from shared.config.curation import DedupConfig, ExtractConfig
from tests import reference_dedup


def planted(n: int, seed: int = 0):
    """Unit copy descriptors [n, views, 768] with exact copies, near copies and view-only copies."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, VIEWS, DIM)).astype(np.float32)
    for k in range(n // 10):  # near copies: row b is row a plus noise (cosine ~0.95)
        a, b = 10 * k, 10 * k + 1
        noise = rng.standard_normal(DIM).astype(np.float32)
        x[b, 0] = x[a, 0] / np.linalg.norm(x[a, 0]) + 0.33 * noise / np.linalg.norm(noise)
    for k in range(n // 20):  # a crop: row b's zoomed view is row a
        a, b = 20 * k + 3, 20 * k + 4
        x[b, 1] = x[a, 0]
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    sha = [f"{i:064x}" for i in range(n)]
    for k in range(n // 25):  # exact copies: same bytes, same descriptors
        a, b = 25 * k + 5, 25 * k + 6
        sha[b], x[b] = sha[a], x[a]
    scores = rng.random(n).astype(np.float32)
    scores[7] = scores[8]  # a tie
    return x, sha, scores


def write_parts(folder, x, sha, scores, per_part: int) -> None:
    n = len(x)
    for s in range(0, n, per_part):
        e = min(n, s + per_part)
        write_part(folder / f"{s // per_part:05d}.parquet", [f"{i:032x}" for i in range(s, e)],
                   [str(i) for i in range(s, e)], sha[s:e], scores[s:e], np.ones((e - s, 4), np.float32),
                   x[s:e])


def reference_keep(x, sha, scores, cfg: DedupConfig, eval_emb=None):
    """The single-process rule on the stored (int8) descriptors."""
    q = quantize(x).astype(np.float32)
    q /= np.linalg.norm(q, axis=2, keepdims=True)
    keep = reference_dedup.exact_duplicates(sha, scores)
    idx = np.flatnonzero(keep)
    m = reference_dedup.near_duplicates(q[idx, 0], scores[idx], cfg.near_threshold, index="flat",
                                        views=[q[idx, v] for v in range(1, VIEWS)])
    keep[idx[~m]] = False
    if eval_emb is not None:
        keep &= decontaminate(q[:, 0], eval_emb, cfg.eval_threshold)
    return keep


def kept(out) -> np.ndarray:
    import pyarrow.parquet as pq

    return np.concatenate([pq.read_table(p).column("keep").to_numpy() for p in sorted(out.glob("*.parquet"))])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    x, sha, scores = planted(600)
    write_parts(root / "parts", x, sha, scores, per_part=130)
    ev = x[[40, 41]].reshape(-1, DIM)  # two eval images (all their views) leaked into the pool
    np.save(root / "eval.npy", ev)
    return root, x, sha, scores, ev


def test_parts_roundtrip_keeps_cosines(pool):
    root, x, *_ = pool
    parts = list_parts(root / "parts")
    assert [p.index for p in parts] == [0, 1, 2, 3, 4]
    assert [p.bytes for p in parts] == [Path(p.path).stat().st_size for p in parts]
    got = read_part(parts[1].path)["copy"]
    got /= np.linalg.norm(got, axis=2, keepdims=True)
    assert np.abs((got * x[130:260]).sum(-1) - 1).max() < 1e-3


@pytest.mark.parametrize("workers", [1, 2])
def test_partitioned_dedup_equals_single_process(pool, tmp_path, workers):
    root, x, sha, scores, ev = pool
    cfg = DedupConfig()
    engine = LocalEngine(workers)
    try:
        stats = dedup_parts.run_dedup(engine, list_parts(root / "parts"), cfg, tmp_path / "work",
                                      tmp_path / "keep", root / "eval.npy")
    finally:
        engine.close()
    want = reference_keep(x, sha, scores, cfg, ev)
    got = kept(tmp_path / "keep")
    assert np.array_equal(got, want)
    assert stats["dropped"]["exact_dup"] == 24 and stats["dropped"]["near_dup"] >= 60
    assert stats["dropped"]["eval_leak"] >= 1
    if workers > 1:
        assert engine.worker_peak_rss > 0


@pytest.mark.parametrize("task_bytes", [1, 60_000])
def test_losers_routed_to_their_parts(pool, tmp_path, task_bytes):
    """Parts grouped into tasks by bytes (one part a task, or a few): the same rows as the single-process
    rule, and the exact losers reach their parts through the shuffle as one file per part that has any,
    named by the part (no file per (bucket, part), nothing listed per part)."""
    root, x, sha, scores, ev = pool
    parts = list_parts(root / "parts")
    engine = LocalEngine(2)
    try:
        dedup_parts.run_dedup(engine, parts, DedupConfig(), tmp_path / "w", tmp_path / "k", root / "eval.npy",
                              task_bytes=task_bytes)
    finally:
        engine.close()
    assert np.array_equal(kept(tmp_path / "k"), reference_keep(x, sha, scores, DedupConfig(), ev))
    losers = np.flatnonzero(~reference_dedup.exact_duplicates(sha, scores)).tolist()
    owners = sorted({i // 130 for i in losers})
    assert sorted(p.name for p in (tmp_path / "w" / "exact").iterdir()) == [f"{o:08d}.npy" for o in owners]
    routed = np.concatenate([np.load(tmp_path / "w" / "exact" / f"{o:08d}.npy") for o in owners])
    assert sorted((routed >> 32) * 130 + (routed & 0xFFFFFFFF)) == losers


def test_many_clusters_keep_recall(pool, tmp_path, monkeypatch):
    """With ~40 clusters (not one) every planted copy is still found: the boundary rows go to each side."""
    root, x, sha, scores, _ = pool
    monkeypatch.setattr(dedup, "TRAIN_PER_CENTROID", 10)
    cfg = DedupConfig(decontaminate=False, flat_max=50)
    dedup_parts.run_dedup(LocalEngine(1), list_parts(root / "parts"), cfg, tmp_path / "w", tmp_path / "k",
                          None)
    assert np.array_equal(kept(tmp_path / "k"), reference_keep(x, sha, scores, cfg))


@pytest.mark.parametrize(("driver_sample", "lookup"), [(None, False), (200, False), (200, True)])
def test_pca_space_search_keeps_every_copy(pool, tmp_path, monkeypatch, driver_sample, lookup):
    """Index "ivf" (what pools past REDUCE_ABOVE survivors get): ~40 clusters, candidates found in the
    PCA-64 space at a looser radius, then checked on the stored descriptors: the same rows as the exact
    single-process rule, on 2 worker processes. With the clusters trained in two levels too (the PCA and
    the coarse k-means on the driver's 200 rows, the fine centroids in the PCA space by engine tasks), and
    with the coarse-then-fine lookup in the PCA space (dedup_clusters.LOOKUP_FROM lowered)."""
    root, x, sha, scores, _ = pool
    monkeypatch.setattr(dedup, "TRAIN_PER_CENTROID", 10)
    if lookup:  # 4 coarse clusters probed of 7
        monkeypatch.setattr(dedup_clusters, "LOOKUP_FROM", 0)
        monkeypatch.setattr(dedup_clusters, "COARSE_PROBES", 4)
    cfg = DedupConfig(decontaminate=False, index="ivf", **({"driver_sample": driver_sample} if driver_sample
                                                           else {}))
    engine = LocalEngine(2)
    try:
        stats = dedup_parts.run_dedup(engine, list_parts(root / "parts"), cfg, tmp_path / "w", tmp_path / "k",
                                      None)
    finally:
        engine.close()
    assert np.array_equal(kept(tmp_path / "k"), reference_keep(x, sha, scores, cfg))
    assert (stats["near_tasks"]["coarse"] > 1) == bool(driver_sample), stats["near_tasks"]
    if lookup:  # each vector looked up in fewer coarse clusters than there are
        near = stats["near_tasks"]
        assert near["coarse"] > near["coarse_probes"] == 4, near


def test_pack_clusters_balances_tasks():
    """Clusters packed largest first onto the least loaded task: no task far over the capacity when the
    clusters allow it (cluster % buckets would put 0, 2 and 4 together here: 17 of 20)."""
    load = np.array([9.0, 1, 4, 1, 4, 1])
    bucket_of, buckets = dedup_clusters.pack_clusters(load, 10)
    assert buckets == 2
    per_task = np.bincount(bucket_of, weights=load, minlength=buckets)
    assert sorted(per_task.tolist()) == [10.0, 10.0]
    one, buckets = dedup_clusters.pack_clusters(np.array([3.0]), 10)
    assert buckets == 1 and one.tolist() == [0]


def test_spark_engine_dedup_equals_local(pool, tmp_path):
    pytest.importorskip("pyspark")
    root, x, sha, scores, ev = pool
    cfg = DedupConfig()
    engine = SparkEngine(2)
    try:
        dedup_parts.run_dedup(engine, list_parts(root / "parts"), cfg, tmp_path / "w", tmp_path / "k",
                              root / "eval.npy")
    finally:
        engine.close()
    assert np.array_equal(kept(tmp_path / "k"), reference_keep(x, sha, scores, cfg, ev))


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    from shared.config import load_config
    from shared.miniweb.generate import generate_web

    root = tmp_path_factory.mktemp("engine_web")
    cfg = load_config(None, [f"workdir={root}", "web.n_images=300", "web.hq_size=10",
                             "web.bench_train_per_class=2", "web.bench_test_per_class=2"])
    generate_web(cfg.web, cfg.web_dir)
    return cfg


def sequential_pairs(cfg: ExtractConfig, sources: list[str]) -> tuple[list[dict], dict]:
    """The rule the extract step implements, written the obvious way over local sources: sources in order,
    links in order, the first occurrence of each (url, caption) kept; returns the rows and the counts."""
    seen, rows, stats = set(), [], ExtractStats()
    for src in sources:
        for url, alt, page_url, uid in file_links(src, src, stats):
            caption = screen_link(url, alt, cfg, stats)
            if caption is not None and (url, caption) in seen:
                stats.dropped["duplicate pair"] += 1
            elif caption is not None:
                seen.add((url, caption))
                rows.append({"uid": uid or pair_uid(url, caption), "url": url, "caption": caption,
                             "page_url": page_url, "source": Path(src).name})
    stats.kept = len(rows)
    return rows, stats.as_dict()


@pytest.mark.parametrize("workers", [1, 2])
def test_partitioned_extract_equals_the_sequential_rule(web, tmp_path, workers, monkeypatch):
    """WARCs and WATs of the mini web (the same pages twice: every pair is a duplicate across files): the
    hash shuffle keeps what one pass over the sources in order keeps; with 2 workers over buckets of
    about one source's bytes (several buckets, as a crawl of many files gets), with 1 in one bucket."""
    from curation import extract_parts
    from curation.extract_parts import run_extract

    sources = sorted(str(p) for p in (web.web_dir / "warc").glob("*.gz")) + \
        sorted(str(p) for p in (web.web_dir / "wat").glob("*.gz"))
    want, want_stats = sequential_pairs(web.curation.extract, sources)
    if workers > 1:
        monkeypatch.setattr(extract_parts, "SOURCE_BYTES_PER_BUCKET", Path(sources[0]).stat().st_size)
    engine = LocalEngine(workers)
    try:
        got = run_extract(engine, web.curation.extract, sources, tmp_path / "pairs", tmp_path / "stats.json")
    finally:
        engine.close()
    digest = got.pop("outputs_digest")
    assert got == want_stats and got["dropped"]["duplicate pair"] >= got["kept"] > 0
    assert digest == run_extract(LocalEngine(1), web.curation.extract, sources, tmp_path / "again",
                                 tmp_path / "again.json")["outputs_digest"], "the same pairs, the same digest"
    parts = pq.read_table(tmp_path / "pairs").to_pylist()
    assert sorted(map(str, want)) == sorted(map(str, parts))
    files = len(list((tmp_path / "pairs").glob("part-*.parquet")))
    assert files == 1 if workers == 1 else files > 1


def _square_unless_seven(x: int) -> int:
    if x == 7:
        raise ValueError("task 7 failed")
    return x * x


def test_local_map_keeps_item_order_through_its_window(monkeypatch):
    """The process pool gets at most a window of tasks at a time (one per worker here): results still come
    back in item order, and a task's error still reaches the caller."""
    from curation import engine as engine_module

    monkeypatch.setattr(engine_module, "IN_FLIGHT_PER_WORKER", 1)
    engine = LocalEngine(2)
    try:
        assert engine.map(_square_unless_seven, range(8, 48)) == [x * x for x in range(8, 48)]
        with pytest.raises(ValueError, match="task 7 failed"):
            engine.map(_square_unless_seven, range(20))
    finally:
        engine.close()
