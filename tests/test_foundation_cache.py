"""The stage cache skips unchanged steps, reruns on config/input/version changes, and survives crashes."""

import os

import pytest

from openaim.pipeline import pipeline_plan
from openaim.steps import STEPS
from shared.atomic import atomic_dir, atomic_open, atomic_write_json
from shared.config.loading import load_config
from shared.stage_cache import StageCache, StepSpec, hash_path, plan


def _spec(tmp_path, fraction=0.15, upstream="abc", version=1):
    return StepSpec(name="select", config={"curation.select": {"fraction": fraction, "threshold": None}},
                    inputs={"scores": upstream}, version=version, outputs=[tmp_path / "out.txt"])


def test_skips_when_unchanged_and_reruns_on_config_change(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def step():
        calls.append(1)
        (tmp_path / "out.txt").write_text(f"run {len(calls)}")

    assert cache.run(_spec(tmp_path), step) is True
    assert cache.run(_spec(tmp_path), step) is False
    assert len(calls) == 1
    fresh = cache.check(_spec(tmp_path, fraction=0.2))
    assert not fresh.fresh
    assert fresh.reasons == ["config curation.select.fraction: 0.15 -> 0.2"]
    assert cache.run(_spec(tmp_path, fraction=0.2), step) is True
    assert len(calls) == 2


@pytest.mark.parametrize("change, reason", [
    ({"upstream": "def"}, "input scores changed"),
    ({"version": 2}, "version 1 -> 2"),
])
def test_reruns_on_input_or_version_change(tmp_path, change, reason):
    cache = StageCache(tmp_path)
    cache.run(_spec(tmp_path), lambda: (tmp_path / "out.txt").write_text("x"))
    assert cache.check(_spec(tmp_path, **change)).reasons == [reason]


def test_missing_output_makes_step_stale(tmp_path):
    cache = StageCache(tmp_path)
    cache.run(_spec(tmp_path), lambda: (tmp_path / "out.txt").write_text("x"))
    (tmp_path / "out.txt").unlink()
    assert not cache.check(_spec(tmp_path)).fresh


def test_crash_mid_step_leaves_no_record(tmp_path):
    cache = StageCache(tmp_path)
    cache.run(_spec(tmp_path), lambda: (tmp_path / "out.txt").write_text("x"))

    def crashing():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run(_spec(tmp_path, fraction=0.3), crashing)
    # The old record was invalidated before the new attempt: neither config counts as done now.
    assert not cache.check(_spec(tmp_path)).fresh
    assert not cache.check(_spec(tmp_path, fraction=0.3)).fresh


def test_outputs_hash_feeds_downstream(tmp_path):
    cache = StageCache(tmp_path)
    up = StepSpec(name="score", outputs=[tmp_path / "scores"])
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "a.parquet").write_bytes(b"1")
    cache.run(up, lambda: None)
    h1 = cache.outputs_hash("score")
    (tmp_path / "scores" / "a.parquet").write_bytes(b"2")
    cache.run(up, lambda: None, force=True)
    assert cache.outputs_hash("score") != h1
    assert hash_path(tmp_path / "scores") != hash_path(tmp_path / "nothing")


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(ZeroDivisionError), atomic_open(target, "w") as f:
        f.write("partial")
        raise ZeroDivisionError
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_atomic_dir_swaps_whole_directory(tmp_path):
    out = tmp_path / "shards"
    with atomic_dir(out) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "b").write_text("2")
        raise RuntimeError
    assert sorted(os.listdir(out)) == ["a"]
    with atomic_dir(out) as d:
        (d / "c").write_text("3")
    assert sorted(os.listdir(out)) == ["c"]
    assert sorted(os.listdir(tmp_path)) == ["shards"]


def test_atomic_outputs_have_ordinary_permissions(tmp_path):
    atomic_write_json(tmp_path / "a.json", {})
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("1")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_version_bump_changes_the_outputs_hash_downstream_steps_take(tmp_path):
    """Bumping VERSION declares new results: even byte-identical outputs give a new outputs hash, so the
    steps downstream (which take it as input) rerun too."""
    cache = StageCache(tmp_path)
    (tmp_path / "scores").mkdir()
    cache.run(StepSpec(name="score", version=1, outputs=[tmp_path / "scores"]), lambda: None)
    h1 = cache.outputs_hash("score")
    cache.run(StepSpec(name="score", version=2, outputs=[tmp_path / "scores"]), lambda: None)
    assert cache.outputs_hash("score") != h1


def test_a_version_bump_reaches_past_a_step_whose_bytes_do_not_change(tmp_path):
    """score -> select -> train: bumping score's VERSION reruns select, whose shards come out the same
    bytes, and train must still see a new input."""
    cache = StageCache(tmp_path)
    for name in ("scores", "shards"):
        (tmp_path / name).mkdir()

    def select_input(score_version: int) -> str:
        cache.run(StepSpec("score", version=score_version, outputs=[tmp_path / "scores"]), lambda: None)
        select = StepSpec("select", inputs={"score": cache.outputs_hash("score")}, version=1,
                          outputs=[tmp_path / "shards"])
        cache.run(select, lambda: None)
        return cache.outputs_hash("select")

    assert select_input(1) != select_input(2)
    # A config change with the same bytes out stops there: the steps after it are reused.
    before = cache.outputs_hash("score")
    assert cache.run(StepSpec("score", config={"batch_size": 8}, version=2, outputs=[tmp_path / "scores"]),
                     lambda: None)
    assert cache.outputs_hash("score") == before


def test_plan_marks_the_steps_after_a_rerunning_step(tmp_path):
    cache = StageCache(tmp_path)
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    specs = [StepSpec("a", version=1, outputs=[tmp_path / "a"]),
             StepSpec("b", inputs={"a": "x"}, outputs=[tmp_path / "b"]),
             StepSpec("c", inputs={"other": "y"}, outputs=[tmp_path / "c"])]
    for spec in specs:
        cache.record(spec)
    assert [state.fresh for _, state in plan(cache, specs)] == [True, True, True]
    specs[0].version = 2
    rows = dict(plan(cache, specs))
    assert rows["a"].reasons == ["version 1 -> 2"]
    assert rows["b"].reasons == ["upstream a would run"]
    assert rows["c"].fresh


def test_status_on_a_fresh_workdir_lists_every_step_as_would_run(tmp_path):
    """`openaim status` (pipeline_plan) shows the curation steps too, not only train and eval."""
    cfg = load_config(None, [f"workdir={tmp_path / 'run'}", "curation.filter.model=own"])
    rows = pipeline_plan(cfg)
    assert [name for name, _ in rows] == [s.name for s in STEPS if s.cached]
    assert {"extract", "download", "train-filter", "score", "dedup", "safety", "select", "train",
            "eval"} <= {name for name, _ in rows}
    assert all(not state.fresh and state.reasons == ["never ran"] for _, state in rows)
    # With the user's own shards, curation is not part of the run.
    cfg = load_config(None, [f"workdir={tmp_path / 'run'}", f"training.data.shards=[{tmp_path}/x.tar]"])
    assert [name for name, _ in pipeline_plan(cfg)] == ["train", "eval"]


def test_file_signature_names_the_file_not_its_folder(tmp_path):
    """A large input (a crawl's WARC) is identified by name, size and time, never read: the same file seen
    through another folder (a copied run whose web/ links to the same crawl) is the same input; rewriting
    it is a new one."""
    import os

    from shared.stage_cache import file_signature

    (tmp_path / "crawl").mkdir()
    warc = tmp_path / "crawl" / "x.warc.gz"
    warc.write_bytes(b"one")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "web").symlink_to(tmp_path / "crawl", target_is_directory=True)
    assert file_signature(warc) == file_signature(tmp_path / "run" / "web" / "x.warc.gz")
    before = file_signature(warc)
    warc.write_bytes(b"two")
    os.utime(warc, ns=(before[2] + 10**9, before[2] + 10**9))
    assert file_signature(warc) != before
