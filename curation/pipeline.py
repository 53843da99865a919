"""`openaim build-dataset`: extract -> download -> (train-filter) -> score -> dedup -> safety -> select.

Every step is a stage-cache step (shared.stage_cache): it records the config keys, upstream outputs and
its module's ``VERSION`` it was computed from (curation.step_specs, which `openaim status` reads too), and
is reused when they match. So changing ``select.fraction`` reruns only the select step, changing
``dedup.*`` reruns dedup and select, and nothing downstream of a change ever refetches images or rescores
the pool. ``manifest.json`` lists which steps ran and which were reused.

Extract, dedup, safety and select run their partition functions on the engine of ``curation.engine``
(curation.engine: local or Spark); download has img2dataset's distributor; scoring runs per pool shard,
under torchrun across ranks.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from curation import download, extract, score, train_filter
from curation.dedup_parts import run_dedup
from curation.engine import make_engine
from curation.eval_index import build_eval_index, eval_benchmarks
from curation.extract_parts import run_extract
from curation.filter_network import load_filter_network
from curation.manifest import curation_manifest
from curation.parts import list_parts
from curation.safety import run_safety
from curation.select_parts import run_select
from curation.step_specs import (
    chosen_steps,
    dedup_spec,
    download_spec,
    extract_spec,
    safety_spec,
    score_spec,
    select_spec,
    step_names,
    train_filter_spec,
)
from shared.atomic import atomic_dir, atomic_write_json
from shared.errors import InputError, OpenAIMError
from shared.progress import progress_bar
from shared.stage_cache import StageCache, StepSpec, combine_digests, hash_file, hash_json, listing_digest
from shared.torchrun import broadcast_from_rank0, leave_process_group, local_device, rank_world

log = logging.getLogger("openaim.curation")


def _load_net(cfg, own_dir: Path | None):
    try:
        device = cfg.curation.filter.device
        return load_filter_network(cfg.curation.filter, own_dir,
                                   device=local_device() if device == "auto" else device)
    except OpenAIMError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot load is a user-facing config problem
        first = (str(exc).strip().splitlines() or [""])[0]
        raise OpenAIMError(f"cannot load filter network {cfg.curation.filter.model!r}: "
                           f"{type(exc).__name__}: {first}") from None


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
        self._engine = None
        self._step = ""  # the step running now: the engine labels its jobs with it
        self._parts = None

    # -- helpers ---------------------------------------------------------------------------------------
    def _begin(self, step: str) -> None:
        self._step = step
        if self._engine is not None:
            self._engine.set_step(step)

    def _run(self, spec: StepSpec, fn, outputs_hash=None) -> None:
        self._begin(spec.name)
        did = self.cache.run(spec, fn, force=self.force, outputs_hash=outputs_hash)
        (self.ran if did else self.reused).append(spec.name)
        log.info("%-12s %s", spec.name, "done" if did else "reused (config, inputs and version unchanged)")

    @property
    def engine(self):
        """The curation engine (curation.engine), started at the first step that needs it."""
        if self._engine is None:
            for stale in self.dir.glob(".shuffle-*"):  # a killed run's shuffle files: never read again
                shutil.rmtree(stale, ignore_errors=True)
            self._engine = make_engine(self.cur.engine, self.cur.workers, scratch_root=self.dir)
            self._engine.set_step(self._step)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def parts(self) -> list:
        """The score parts, listed once per run (after the score step, which is the only one writing them)."""
        if self._parts is None:
            self._parts = list_parts(self.dir / "scores" / "parts")
        return self._parts

    def net(self):
        if self._net is None:
            own = self.dir / "filter" if self.cur.filter.model == "own" else None
            self._net = _load_net(self.cfg, own)
        return self._net

    # -- steps -----------------------------------------------------------------------------------------
    def extract(self) -> None:
        sources = extract.resolve_sources(self.cur.extract.sources, self.cfg.web_dir / "warc")
        pairs, stats = self.dir / "pairs", self.dir / "extract_stats.json"

        done: dict = {}

        def fn() -> None:
            done.update(run_extract(self.engine, self.cur.extract, sources, pairs, stats))

        self._run(extract_spec(self.cfg, self.cache), fn, outputs_hash=lambda: done["outputs_digest"])

    def download(self) -> None:
        pool, stats = self.dir / "pool", self.dir / "download_stats.json"
        spec = download_spec(self.cfg, self.cache)
        # A new pool is fetched into pool.partial/ (where a killed run of the same settings resumes, skipping
        # finished shards) before this step's record is touched, and swapped in place of pool/ only once it
        # succeeded: a failed, empty or interrupted download leaves pool/ and the record as they were.
        if self.force or not self.cache.check(spec).fresh:
            self._begin(spec.name)
            download.stage_pool(self.cur.download, self.dir / "pairs", pool, self.cur.extract.allow_hosts,
                                spec.fingerprint, restart=self.force, engine=self.engine)

        def fn() -> None:
            atomic_write_json(stats, download.swap_in_pool(pool, spec.fingerprint))

        # img2dataset records no digest: the pool is identified by its files' names and sizes (one listing,
        # nothing read) and the download summary
        self._run(spec, fn, outputs_hash=lambda: combine_digests([listing_digest(pool), hash_file(stats)]))

    def train_filter(self) -> None:
        hq, out = self.cfg.web_dir / "hq", self.dir / "filter"
        if not hq.is_dir():
            raise InputError(f"no high-quality set at {hq} to train the filter network (filter.model: own)")
        self._run(train_filter_spec(self.cfg, self.cache),
                  lambda: train_filter.train_filter_network(self.cur.train_filter, hq, out))

    def score(self) -> None:
        """The score step. Under torchrun every rank calls this: rank 0 (which ran the steps before) reads
        and writes the stage cache and tells the others whether the step reruns; then every rank leaves
        the process group (no collective follows: the ranks share the pool through the scoring queue)
        and, if the step reruns, scores until every part exists, so a rank that dies mid-shard stops no
        other rank and each rank exits when the queue is empty."""
        out = self.dir / "scores"
        self._parts = None  # listed again after this step

        def fn() -> None:
            score.score_pool(self.dir / "pool", self.net(), out, self.cur.filter.batch_size,
                             num_workers=self.cur.filter.num_workers, lease_s=self.cur.filter.lease_s)

        if rank_world(score.BACKEND, score.WAIT_FOR_RANK0)[0] != 0:
            rerun = broadcast_from_rank0(None)  # waits here until rank 0 reaches this step
            leave_process_group(succeeded=True)
            if rerun:
                fn()
            return
        spec = score_spec(self.cfg, self.cache)
        rerun = self.force or not self.cache.check(spec).fresh
        # Finished parts from another model, pool or scoring code are not resumable work: start afresh.
        # (No record at all means a killed run, whose parts are resumed.)
        if rerun and (out / "parts").exists() and (self.force or self.cache.load("score")):
            shutil.rmtree(out / "parts")
            shutil.rmtree(out / score.CLAIMS, ignore_errors=True)
            shutil.rmtree(out / "digests", ignore_errors=True)
        broadcast_from_rank0(rerun)  # the other ranks score with rank 0, or go home
        leave_process_group(succeeded=True)  # a barrier while every rank is alive, then no group
        self._run(spec, fn, outputs_hash=lambda: score.outputs_digest(out))

    # Each step below returns its outputs' digest, combined from the records its tasks took as they wrote
    # (shared.stage_cache.digest_file): recording a step reads none of its outputs.
    def _run_digested(self, spec: StepSpec, fn) -> None:
        done: list[str] = []
        self._run(spec, lambda: done.append(fn()), outputs_hash=lambda: done[0])

    def dedup(self) -> None:
        self._run_digested(dedup_spec(self.cfg, self.cache), lambda: _dedup(self, self.dir / "dedup"))

    def safety(self) -> None:
        self._run_digested(safety_spec(self.cfg, self.cache), lambda: _safety(self, self.dir / "safety"))

    def select(self) -> None:
        self._run_digested(select_spec(self.cfg, self.cache), lambda: _select_and_write(self))


def _dedup(steps: _Steps, out: Path) -> str:
    """Exact copies, near copies, eval leaks over the score parts (curation.dedup_parts)."""
    cfg = steps.cur.dedup
    ev = steps.cfg.evaluation
    found = (eval_benchmarks(cfg.eval_sets, ev.benchmarks, ev.data_root, steps.cfg.web_dir)
             if cfg.decontaminate else [])
    eval_index, n_eval = None, 0
    if found:
        eval_index = out / "eval_index.npy"
        encode = steps.net().encode_images if cfg.filter_weight > 0 else None
        n_eval = build_eval_index(found, eval_index, cfg.filter_weight, encode)
    with atomic_dir(out / "keep") as keep:
        stats = run_dedup(steps.engine, steps.parts(), cfg, out / "work", keep, eval_index,
                          steps.cur.task_bytes)
    shutil.rmtree(out / "work", ignore_errors=True)
    keep_digest = stats.pop("keep_digest")
    stats |= {"eval_images": n_eval, "eval_sets": [spec.name for spec, _ in found]}
    atomic_write_json(out / "stats.json", stats)
    return combine_digests([keep_digest, hash_json(stats)])


def _safety(steps: _Steps, out: Path) -> str:
    cfg = steps.cur.safety
    text = np.asarray(steps.net().encode_texts(list(cfg.concepts)), np.float32) if cfg.concepts else None
    with atomic_dir(out / "keep") as keep:
        counts = run_safety(steps.engine, steps.parts(), text, cfg.concept_threshold, keep,
                            steps.cur.task_bytes)
    n, kept = counts["in"], counts["out"]
    stats = {"in": n, "out": kept, "dropped": {"concept": n - kept}}
    atomic_write_json(out / "stats.json", stats)
    return combine_digests([counts["keep_digest"], hash_json(stats)])


def _select_and_write(steps: _Steps) -> str:
    d, cur = steps.dir, steps.cur
    with atomic_dir(d / "shards") as shards, atomic_dir(d / "subset") as subset:
        stats = run_select(steps.engine, steps.parts(), [d / "dedup" / "keep", d / "safety" / "keep"],
                           d / "pool", shards, subset, d / "subset.npy", cur.select, cur.safety.blur_faces,
                           cur.task_bytes)
    digest = stats.pop("outputs_digest")
    atomic_write_json(d / "select_stats.json", stats)
    return combine_digests([digest, hash_json(stats)])


def build_dataset(cfg, force: bool = False, only: list[str] | None = None) -> dict | None:
    """Run (or reuse) every curation step, or the steps in ``only`` (``--steps``: refused when an input step
    outside them is not fresh), and write ``manifest.json`` once the last step (select) is done; returns the
    manifest, or None when ``only`` stops before select."""
    cfg.curation_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar() as progress:
        steps = _Steps(cfg, force, progress)
        names = step_names(cfg) if only is None else chosen_steps(cfg, steps.cache, only)
        try:
            for name in names:
                getattr(steps, name.replace("-", "_"))()
        finally:
            steps.close()
    if names[-1] != "select":
        log.info("ran %s, reused %s", ", ".join(steps.ran) or "nothing", ", ".join(steps.reused) or "nothing")
        return None
    manifest = curation_manifest(cfg, steps.ran, steps.reused)
    atomic_write_json(cfg.curation_dir / "manifest.json", manifest)
    q = manifest.get("quality") or {}
    log.info("curated %s pairs (threshold %.4f) into %s%s", manifest["kept"], manifest["threshold"],
             cfg.curation_dir / "shards",
             f"; precision {q['precision']}" if q.get("precision") is not None else "")
    return manifest


def join_scoring(cfg, force: bool = False) -> None:
    """A torchrun rank other than 0 in build-dataset: wait for rank 0 at the score step and, if the step
    reruns, take shards from the scoring queue until every part exists (rank 0 runs every other step)."""
    _Steps(cfg, force, None).score()


def train_filter_step(cfg, force: bool = False) -> Path:
    """`openaim train-filter`: the train-filter step alone (cached like inside build-dataset)."""
    cfg.curation_dir.mkdir(parents=True, exist_ok=True)
    _Steps(cfg, force, None).train_filter()
    return cfg.curation_dir / "filter"
