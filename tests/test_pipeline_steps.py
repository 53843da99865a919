"""The pipeline's one list of steps (openaim.steps.STEPS) and the step protocol: every step names what it
reads and writes consistently with the list's order; a new step added to the list (docs/architecture.md's
worked example) is planned, run, recorded, reused and rerun by the same code as the shipped ones; the
storage layer joins names, hides half-written files and commits records last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import openaim.pipeline
from openaim.pipeline import pipeline_plan, pipeline_steps, run_steps, stage_steps
from openaim.steps import STEPS
from openaim.steps.base import RunContext, Step, plan
from shared.config import load_config
from shared.config.root import OpenAIMConfig
from shared.stage_cache import StepSpec
from shared.storage import Storage


def test_the_list_is_consistent():
    names = [s.name for s in STEPS]
    assert len(set(names)) == len(names)
    shipped = ["extract", "download", "train-filter", "score", "dedup", "safety", "select", "manifest",
               "train", "eval", "report"]
    # the shipped steps, in this order (a step added to the list may sit anywhere between them)
    assert [n for n in names if n in shipped] == shipped
    seen: set[str] = set()
    written: set[str] = set()
    for step in STEPS:
        assert isinstance(step.VERSION, int) and step.VERSION >= 1, step.name
        assert set(step.reads) <= seen, f"{step.name} reads a step that runs after it"
        for name in step.writes:
            assert not name.startswith("/") and ".." not in name.split("/"), name
            assert name not in written, f"{name} written by two steps"
            written.add(name)
        seen.add(step.name)
    # the stages run in one block each, in the pipeline's order
    stages = [s.stage for s in STEPS]
    assert list(dict.fromkeys(stages)) == ["build-dataset", "train", "eval", "report"]
    assert stages == sorted(stages, key=["build-dataset", "train", "eval", "report"].index)


def test_the_config_picks_the_steps(tmp_path):
    own = load_config(None, [f"workdir={tmp_path}"])
    assert [s.name for s in stage_steps(own, "build-dataset")][:3] == ["extract", "download", "train-filter"]
    named = load_config(None, [f"workdir={tmp_path}", "curation.filter.model=local-dir:/nowhere"])
    assert "train-filter" not in [s.name for s in pipeline_steps(named)]
    # a config with its own training shards has nothing to curate: run and status start at train
    shards = load_config(None, [f"workdir={tmp_path}", "training.data.shards=[/data/x-000.tar]"])
    assert [s.name for s in pipeline_steps(shards)] == ["train", "eval", "report"]
    assert [name for name, _ in pipeline_plan(shards)] == ["train", "eval"]  # the cached ones


class CaptionStats(Step):
    """docs/architecture.md's worked example: caption lengths of the selected pairs, from select's stats."""

    name, stage = "caption-stats", "build-dataset"
    VERSION = 1
    reads = ("select",)
    writes = ("curation/caption_stats.json",)
    runs = 0

    def config(self, cfg: OpenAIMConfig) -> dict:
        return {"curation.select.fraction": cfg.curation.select.fraction}

    def run(self, ctx: RunContext) -> None:
        CaptionStats.runs += 1
        kept = ctx.store.read_json("curation/select_stats.json")["out"]
        ctx.store.write_json(self.writes[0], {"kept": kept, "fraction": ctx.cfg.curation.select.fraction})


def plan_of(cfg: OpenAIMConfig, step: Step):
    [(_, state)] = plan(RunContext(cfg), [step])
    return state


def test_a_new_step_needs_only_its_module_and_the_list(tmp_path, monkeypatch):
    step = CaptionStats()
    # the list: the new step after select (its module would be openaim/steps/caption_stats.py)
    steps = list(STEPS)
    steps.insert(steps.index(next(s for s in STEPS if s.name == "select")) + 1, step)
    monkeypatch.setattr(openaim.pipeline, "STEPS", tuple(steps))

    cfg = load_config(None, [f"workdir={tmp_path}"])
    ctx = RunContext(cfg)
    # select's outputs as a finished select step would leave them
    ctx.store.write_json("curation/select_stats.json", {"out": 42})
    ctx.cache.record(StepSpec("select", config={"fixture": True}), outputs_hash="select-fixture")

    assert step in stage_steps(cfg, "build-dataset")
    assert dict(pipeline_plan(cfg))["caption-stats"].reasons == ["never ran"]

    run_steps(ctx, [step])
    assert ctx.ran == ["caption-stats"] and CaptionStats.runs == 1
    assert json.loads((tmp_path / "curation" / "caption_stats.json").read_text()) == {"kept": 42,
                                                                                       "fraction": 0.15}
    record = json.loads((tmp_path / ".steps" / "caption-stats.json").read_text())
    assert record["version"] == 1 and record["inputs"] == {"select": ctx.cache.outputs_hash("select")}
    assert plan_of(cfg, step).fresh  # (in the whole graph it would run: select's record is a fixture)

    again = RunContext(cfg)
    run_steps(again, [step])
    assert again.reused == ["caption-stats"] and CaptionStats.runs == 1

    changed = load_config(None, [f"workdir={tmp_path}", "curation.select.fraction=0.3"])
    why = plan_of(changed, step).reasons
    assert "config curation.select.fraction: 0.15 -> 0.3" in why
    ctx.cache.record(StepSpec("select", config={"fixture": 2}), outputs_hash="new-select")
    assert plan_of(cfg, step).reasons == ["input select changed"]
    rerun = RunContext(changed)
    run_steps(rerun, [step])
    assert rerun.ran == ["caption-stats"] and CaptionStats.runs == 2


def test_storage_names_listing_and_commit(tmp_path):
    store = Storage(tmp_path / "run")
    assert store.url("curation", "pairs") == f"{tmp_path}/run/curation/pairs"
    assert store.url("curation/pairs") == store.url("curation", "pairs")
    for bad in ("/etc/passwd", "../outside", "a/../../b"):
        with pytest.raises(ValueError, match="relative"):
            store.url(bad)
    store.write_json("curation/stats.json", {"a": 1})
    store.write_bytes("curation/parts/00001.parquet", b"x")
    store.write_bytes("curation/parts/00000.parquet", b"y")
    (tmp_path / "run" / "curation" / "parts" / ".00002.parquet.abc.tmp.parquet").write_bytes(b"half")
    assert store.list("curation/parts", "*.parquet") == ["curation/parts/00000.parquet",
                                                         "curation/parts/00001.parquet"]
    assert store.read_json("curation/stats.json") == {"a": 1}
    assert store.read_json("curation/none.json") is None and store.read_bytes("none") is None
    (tmp_path / "run" / "damaged.json").write_text("{not json")
    assert store.read_json("damaged.json") is None

    # a folder built aside replaces the old one only when complete
    with store.build_dir("curation/keep") as tmp:
        (Path(tmp) / "k").write_text("1")
    with pytest.raises(RuntimeError), store.build_dir("curation/keep") as tmp:
        (Path(tmp) / "k").write_text("2")
        raise RuntimeError("killed mid-way")
    assert (tmp_path / "run" / "curation" / "keep" / "k").read_text() == "1"
    assert store.list("curation", "keep*") == ["curation/keep"]

    store.commit(".steps/x.json", {"step": "x"})
    assert json.loads((tmp_path / "run" / ".steps" / "x.json").read_text()) == {"step": "x"}
    store.move("curation/keep", "history/run-001/keep")
    assert store.exists("history/run-001/keep/k") and not store.exists("curation/keep")
    store.remove("history")
    assert not store.exists("history")
