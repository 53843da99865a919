"""`openaim build-dataset`: extract -> download -> (train-filter) -> score -> dedup -> safety -> select + write.

Every step is a stage-cache step (shared.stage_cache): it records the config keys, upstream outputs and
its module's ``VERSION`` it was computed from, and is reused when they match (``step_specs`` below, which
`openaim status` reads too). So changing ``select.fraction`` reruns only the select
step, changing ``dedup.*`` reruns dedup and select, and nothing downstream of a change ever refetches images
or rescores the pool. ``manifest.json`` lists which steps ran and which were reused.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from curation import dedup, download, extract, safety, score, select, train_filter
from shared.errors import InputError, OpenAIMError
from shared.progress import progress_bar
from shared.stage_cache import StageCache, StepSpec, hash_json, hash_path
from shared.torchrun import broadcast_from_rank0

log = logging.getLogger("openaim.curation")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, obj) -> None:
    from shared.atomic import atomic_write_json

    atomic_write_json(path, obj)


def _sources_hash(sources: list[str]) -> str:
    """Local files by content (a regenerated crawl reruns extraction), URLs by name."""
    return hash_json([s if s.startswith(("http://", "https://")) else hash_path(s) for s in sources])


def eval_image_paths(cfg) -> list[Path]:
    """Benchmark test images the curated set must not contain. The mini web's benchmark test sets for now;
    with ``dedup.eval_sets`` only the named ``<web>/bench/<name>`` sets."""
    bench = cfg.web_dir / "bench"
    names = cfg.curation.dedup.eval_sets or (sorted(p.name for p in bench.iterdir() if p.is_dir())
                                              if bench.is_dir() else [])
    paths: list[Path] = []
    for name in names:
        test_dir = bench / name / "test"
        if not test_dir.is_dir():
            log.warning("dedup: no test images for eval set %s under %s; not decontaminated against it", name, bench)
            continue
        paths += sorted(p for p in test_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths



# -- each step's identity: config keys, inputs, VERSION, outputs ---------------------------------------

def extract_spec(cfg, cache: StageCache) -> StepSpec:
    try:
        sources = _sources_hash(extract.resolve_sources(cfg.curation.extract.sources, cfg.web_dir / "warc"))
    except InputError:  # nothing to extract yet (e.g. no mini web): the step runs, and says why then
        sources = "missing"
    d = cfg.curation_dir
    return StepSpec("extract", config={"curation.extract": cfg.curation.extract.model_dump(mode="json")},
                    inputs={"sources": sources}, version=extract.VERSION,
                    outputs=[d / "pairs.parquet", d / "extract_stats.json"])


def download_spec(cfg, cache: StageCache) -> StepSpec:
    cur, d = cfg.curation, cfg.curation_dir
    return StepSpec("download", config={"curation.download": cur.download.model_dump(mode="json"),
                                        "curation.extract.allow_hosts": cur.extract.allow_hosts},
                    inputs={"extract": cache.outputs_hash("extract")}, version=download.VERSION,
                    outputs=[d / "pool", d / "download_stats.json"])


def train_filter_spec(cfg, cache: StageCache) -> StepSpec:
    conf = cfg.curation.train_filter.model_dump(mode="json", exclude={"threads"})
    return StepSpec("train-filter", config={"curation.train_filter": conf},
                    inputs={"hq": hash_path(cfg.web_dir / "hq")}, version=train_filter.VERSION,
                    outputs=[cfg.curation_dir / "filter"])


def score_spec(cfg, cache: StageCache) -> StepSpec:
    inputs = {"download": cache.outputs_hash("download")}
    if cfg.curation.filter.model == "own":
        inputs["train-filter"] = cache.outputs_hash("train-filter")
    conf = cfg.curation.filter.model_dump(mode="json", exclude={"num_workers", "device"})
    return StepSpec("score", config={"curation.filter": conf}, inputs=inputs, version=score.VERSION,
                    outputs=[cfg.curation_dir / "scores"])


def dedup_spec(cfg, cache: StageCache) -> StepSpec:
    out = cfg.curation_dir / "dedup"
    bench = eval_image_paths(cfg) if cfg.curation.dedup.decontaminate else []
    return StepSpec("dedup", config={"curation.dedup": cfg.curation.dedup.model_dump(mode="json")},
                    inputs={"score": cache.outputs_hash("score"),
                            "eval_images": hash_json([hash_path(p) for p in bench])},
                    version=dedup.VERSION, outputs=[out / "keep.parquet", out / "stats.json"])


def safety_spec(cfg, cache: StageCache) -> StepSpec:
    out, conf = cfg.curation_dir / "safety", cfg.curation.safety
    return StepSpec("safety", config={"curation.safety": {"concepts": conf.concepts,
                                                          "concept_threshold": conf.concept_threshold}},
                    inputs={"score": cache.outputs_hash("score")}, version=safety.VERSION,
                    outputs=[out / "keep.parquet", out / "stats.json"])


def select_spec(cfg, cache: StageCache) -> StepSpec:
    d = cfg.curation_dir
    conf = {"curation.select": cfg.curation.select.model_dump(mode="json"),
            "curation.safety.blur_faces": cfg.curation.safety.blur_faces}
    return StepSpec("select", config=conf,
                    inputs={k: cache.outputs_hash(k) for k in ("download", "score", "dedup", "safety")},
                    version=select.VERSION, outputs=[d / "shards", d / "subset.npy", d / "select_stats.json"])


def step_specs(cfg, cache: StageCache) -> list[StepSpec]:
    """Every curation step's identity as of now, in run order (what `openaim status` checks)."""
    fns = [extract_spec, download_spec, train_filter_spec, score_spec, dedup_spec, safety_spec, select_spec]
    if cfg.curation.filter.model != "own":
        fns.remove(train_filter_spec)
    return [fn(cfg, cache) for fn in fns]


def _load_net(cfg, own_dir: Path | None):
    from curation.filter_network import load_filter_network

    try:
        from shared.torchrun import local_device

        device = cfg.curation.filter.device
        return load_filter_network(cfg.curation.filter, own_dir, device=local_device() if device == "auto" else device)
    except OpenAIMError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot load is a user-facing config problem
        first = (str(exc).strip().splitlines() or [""])[0]
        raise OpenAIMError(f"cannot load filter network {cfg.curation.filter.model!r}: {type(exc).__name__}: {first}") from None


class _Steps:
    """The curation steps over one config; each ``run_*`` runs or reuses one stage-cache step."""

    def __init__(self, cfg, force: bool, progress) -> None:
        self.cfg, self.force, self.progress = cfg, force, progress
        self.cur = cfg.curation
        self.dir = cfg.curation_dir
        self.cache = StageCache(cfg.workdir)
        self.ran: list[str] = []
        self.reused: list[str] = []
        self._net = None

    # -- helpers ---------------------------------------------------------------------------------------
    def _run(self, spec: StepSpec, fn, outputs_hash=None) -> None:
        did = self.cache.run(spec, fn, force=self.force, outputs_hash=outputs_hash)
        (self.ran if did else self.reused).append(spec.name)
        log.info("%-12s %s", spec.name, "done" if did else "reused (config, inputs and version unchanged)")

    def net(self):
        if self._net is None:
            own = self.dir / "filter" if self.cur.filter.model == "own" else None
            self._net = _load_net(self.cfg, own)
        return self._net

    # -- steps -----------------------------------------------------------------------------------------
    def extract(self) -> None:
        sources = extract.resolve_sources(self.cur.extract.sources, self.cfg.web_dir / "warc")
        pairs, stats = self.dir / "pairs.parquet", self.dir / "extract_stats.json"

        def fn() -> None:
            _write_json(stats, extract.extract_pairs(self.cur.extract, sources, pairs, self.progress))

        self._run(extract_spec(self.cfg, self.cache), fn)

    def download(self) -> None:
        pool, stats = self.dir / "pool", self.dir / "download_stats.json"
        spec = download_spec(self.cfg, self.cache)
        # A new pool is fetched into pool.partial/ (where a killed run of the same settings resumes, skipping
        # finished shards) before this step's record is touched, and swapped in place of pool/ only once it
        # succeeded: a failed, empty or interrupted download leaves pool/ and the record as they were.
        if self.force or not self.cache.check(spec).fresh:
            download.stage_pool(self.cur.download, self.dir / "pairs.parquet", pool, self.cur.extract.allow_hosts,
                                spec.fingerprint, restart=self.force)

        def fn() -> None:
            _write_json(stats, download.swap_in_pool(pool, spec.fingerprint))

        # The per-shard status files identify the pool; hashing them is cheap even for big pools.
        self._run(spec, fn, outputs_hash=lambda: hash_json(
            [hash_path(p) for p in sorted(pool.glob("[0-9]*.parquet"))]))

    def train_filter(self) -> None:
        hq, out = self.cfg.web_dir / "hq", self.dir / "filter"
        if not hq.is_dir():
            raise InputError(f"no high-quality set at {hq} to train the filter network (filter.model: own)")
        self._run(train_filter_spec(self.cfg, self.cache),
                  lambda: train_filter.train_filter_network(self.cur.train_filter, hq, out))

    def score(self) -> None:
        """The score step. Under torchrun every rank calls this: rank 0 (which ran the steps before) reads
        and writes the stage cache and tells the others whether the step reruns; if so, all score."""
        out = self.dir / "scores"

        def fn() -> None:
            score.score_pool(self.dir / "pool", self.net(), out, self.cur.filter.batch_size,
                             num_workers=self.cur.filter.num_workers)

        if score.dist_rank_world()[0] != 0:
            if broadcast_from_rank0(None):  # waits here until rank 0 reaches this step
                fn()
            return
        spec = score_spec(self.cfg, self.cache)
        rerun = self.force or not self.cache.check(spec).fresh
        # Finished parts from another model, pool or scoring code are not resumable work: start afresh.
        # (No record at all means a killed run, whose parts are resumed.)
        if rerun and (out / "parts").exists() and (self.force or self.cache.load("score")):
            shutil.rmtree(out / "parts")
        broadcast_from_rank0(rerun)  # the other ranks score with rank 0, or go home
        self._run(spec, fn)

    def dedup(self) -> None:
        out = self.dir / "dedup"
        bench = eval_image_paths(self.cfg) if self.cur.dedup.decontaminate else []
        self._run(dedup_spec(self.cfg, self.cache), lambda: _dedup_masks(self, bench, out))

    def safety(self) -> None:
        out = self.dir / "safety"
        self._run(safety_spec(self.cfg, self.cache), lambda: _safety_mask(self, out))

    def select(self) -> None:
        self._run(select_spec(self.cfg, self.cache), lambda: _select_and_write(self))


def _load_scores(steps: _Steps):
    import numpy as np
    import pyarrow.parquet as pq

    scores = pq.read_table(steps.dir / "scores" / "scores.parquet").to_pydict()
    emb = np.load(steps.dir / "scores" / "embeddings.npy").astype(np.float32)
    if emb.shape[0] != len(scores["uid"]):
        raise OpenAIMError("scores/embeddings.npy is not row-aligned with scores.parquet: rerun with --force")
    return scores, emb


def _load_copy_descriptors(steps: _Steps, n: int):
    import numpy as np

    copies = np.load(steps.dir / "scores" / "copy.npy").astype(np.float32)
    if copies.shape[0] != n or copies.ndim != 3:
        raise OpenAIMError("scores/copy.npy is not row-aligned [n, views, 768] with scores.parquet: rerun with --force")
    return copies


def _write_keep(out: Path, uids: list[str], keep, reasons: list[str], stats: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shared.atomic import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "keep.parquet") as tmp:
        pq.write_table(pa.table({"uid": uids, "keep": [bool(k) for k in keep], "reason": reasons}), tmp)
    _write_json(out / "stats.json", stats)


def _dedup_masks(steps: _Steps, bench: list[Path], out: Path) -> None:
    """Exact copies (same sha256), then near copies among the survivors, then benchmark test-image leaks."""
    import numpy as np
    from PIL import Image

    from curation import dedup
    from curation.copy_detection import copy_descriptors, dedup_vectors

    cfg = steps.cur.dedup
    scores, clip_emb = _load_scores(steps)
    copies = _load_copy_descriptors(steps, len(clip_emb))  # [n, views, 768]
    # Copies are searched on the copy descriptor (optionally mixed with the filter embedding), with the
    # zoomed views as extra queries so cropped copies match (see curation.copy_detection).
    w = cfg.filter_weight
    emb = dedup_vectors(clip_emb, copies[:, 0], w)
    s = np.asarray(scores["score"], dtype=np.float32)
    n = len(s)
    reason = np.array([""] * n, dtype=object)
    keep = np.ones(n, dtype=bool)
    if cfg.exact:
        m = np.asarray(dedup.exact_duplicates(np.asarray(scores["sha256"], dtype=object), s), dtype=bool)
        reason[keep & ~m] = "exact_dup"
        keep &= m
    if cfg.near and keep.sum() > 1:
        idx = np.flatnonzero(keep)
        views = [dedup_vectors(clip_emb[idx], copies[idx, v], w) for v in range(1, copies.shape[1])]
        m = np.asarray(dedup.near_duplicates(emb[idx], s[idx], cfg.near_threshold, index=cfg.index,
                                             flat_max=cfg.flat_max, views=views), dtype=bool)
        reason[idx[~m]] = "near_dup"
        keep[idx[~m]] = False
    if cfg.decontaminate and bench:
        images = []
        for p in bench:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        eval_clip = np.concatenate([steps.net().encode_images(images[i:i + 256]) for i in range(0, len(images), 256)]) \
            if w > 0 else np.zeros((len(images), 1), np.float32)  # the filter network is not needed at weight 0
        eval_copies = copy_descriptors(images)  # [m, views, 768]: a cropped copy in the pool matches a zoomed view
        eval_emb = np.concatenate([dedup_vectors(eval_clip, eval_copies[:, v], w) for v in range(eval_copies.shape[1])])
        m = np.asarray(dedup.decontaminate(emb, eval_emb, cfg.eval_threshold), dtype=bool)
        reason[keep & ~m] = "eval_leak"
        keep &= m
    counts = {r: int((reason == r).sum()) for r in ("exact_dup", "near_dup", "eval_leak")}
    _write_keep(out, scores["uid"], keep, [str(r) for r in reason],
                {"in": n, "out": int(keep.sum()), "dropped": counts, "eval_images": len(bench)})


def _safety_mask(steps: _Steps, out: Path) -> None:
    import numpy as np

    scores, emb = _load_scores(steps)
    n = len(scores["uid"])
    keep = np.ones(n, dtype=bool)
    if steps.cur.safety.concepts:
        from curation.safety import concept_filter

        keep = np.asarray(concept_filter(emb, steps.net(), steps.cur.safety.concepts,
                                         steps.cur.safety.concept_threshold), dtype=bool)
    _write_keep(out, scores["uid"], keep, ["" if k else "concept" for k in keep],
                {"in": n, "out": int(keep.sum()), "dropped": {"concept": int((~keep).sum())}})


def _select_and_write(steps: _Steps) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from curation.select import select_mask
    from curation.write import write_shards, write_subset

    scores = pq.read_table(steps.dir / "scores" / "scores.parquet", columns=["uid", "score"]).to_pydict()
    uids, s = scores["uid"], np.asarray(scores["score"], dtype=np.float64)
    survivors = np.ones(len(uids), dtype=bool)
    for name in ("dedup", "safety"):
        k = pq.read_table(steps.dir / name / "keep.parquet", columns=["uid", "keep"]).to_pydict()
        if k["uid"] != uids:
            raise OpenAIMError(f"{name}/keep.parquet does not match scores.parquet: rerun with --force")
        survivors &= np.asarray(k["keep"], dtype=bool)
    mask, threshold = select_mask(s, survivors, steps.cur.select)
    kept = {u: float(v) for u, v, m in zip(uids, s, mask) if m}
    if not kept:
        raise OpenAIMError(f"no sample scores >= the threshold {threshold:.4f}: nothing to write")
    stats = write_shards(steps.dir / "pool", kept, steps.dir / "shards", steps.cur.select.shard_size,
                         steps.cur.safety.blur_faces, steps.progress)
    write_subset(sorted(kept), steps.dir / "subset.npy")
    _write_json(steps.dir / "select_stats.json", {
        "in": int(survivors.sum()), "out": len(kept), "threshold": threshold,
        "fraction": steps.cur.select.fraction if steps.cur.select.threshold is None else None, **stats})


def _manifest(steps: _Steps) -> dict:
    import pyarrow.parquet as pq

    from curation.manifest import build_manifest, quality_block

    d = steps.dir
    ex, dl, sel = _read_json(d / "extract_stats.json"), _read_json(d / "download_stats.json"), _read_json(d / "select_stats.json")
    dd, sf = _read_json(d / "dedup" / "stats.json"), _read_json(d / "safety" / "stats.json")
    step_counts = {
        "extract": {"in": ex.get("links"), "out": ex.get("kept"), "records": ex.get("records"),
                    "corrupt_records": ex.get("corrupt_records"), "dropped": ex.get("dropped")},
        "download": {"in": dl.get("requested"), "out": dl.get("downloaded"),
                     "refused_before_download": dl.get("refused_before_download")},
        "score": {"in": dl.get("downloaded"), "out": dd.get("in")},
        "dedup": dd, "safety": sf,
        "select": {"in": sel.get("in"), "out": sel.get("out"), "shards": sel.get("shards"),
                   "faces_blurred": sel.get("faces_blurred")},
    }
    pairs = pq.read_table(d / "pairs.parquet", columns=["uid", "url", "caption"]).to_pydict()
    import numpy as np

    from curation.select import subset_to_uids

    kept_uids = set(subset_to_uids(np.load(d / "subset.npy")))
    kept = [(u, c) for uid, u, c in zip(pairs["uid"], pairs["url"], pairs["caption"]) if uid in kept_uids]
    return build_manifest(config_hash=hash_json(steps.cfg.curation.model_dump(mode="json")), steps=step_counts,
                          ran=steps.ran, reused=steps.reused, select=sel | {"kept": sel.get("out")},
                          failures=dl.get("failures", {}), quality=quality_block(steps.cfg.web_dir, kept))


def build_dataset(cfg, force: bool = False) -> dict:
    """Run (or reuse) every curation step and write ``manifest.json``; returns the manifest."""
    from shared.atomic import atomic_write_json

    cfg.curation_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar() as progress:
        steps = _Steps(cfg, force, progress)
        steps.extract()
        steps.download()
        if cfg.curation.filter.model == "own":
            steps.train_filter()
        steps.score()
        steps.dedup()
        steps.safety()
        steps.select()
    manifest = _manifest(steps)
    atomic_write_json(cfg.curation_dir / "manifest.json", manifest)
    q = manifest.get("quality") or {}
    log.info("curated %s pairs (threshold %.4f) into %s%s", manifest["kept"], manifest["threshold"],
             cfg.curation_dir / "shards", f"; precision {q['precision']}" if q.get("precision") is not None else "")
    return manifest


def join_scoring(cfg, force: bool = False) -> None:
    """A torchrun rank other than 0 in build-dataset: wait for rank 0 at the score step and score this
    rank's share of the pool's shards if the step reruns (rank 0 runs every other step)."""
    _Steps(cfg, force, None).score()


def train_filter_step(cfg, force: bool = False) -> Path:
    """`openaim train-filter`: the train-filter step alone (cached like inside build-dataset)."""
    cfg.curation_dir.mkdir(parents=True, exist_ok=True)
    _Steps(cfg, force, None).train_filter()
    return cfg.curation_dir / "filter"
