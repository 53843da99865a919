"""The eval step's identity holds the version of every checkpoint it evaluates (shared.fsio.stat: size +
mtime on disk, size + ETag in a bucket, from metadata only): a checkpoint rewritten at the same path or URL
makes the step stale in `openaim status` and `openaim run`, an unchanged one leaves it fresh, and the
probe records of a rewritten checkpoint are not reused (its results are those of the new weights). A
checkpoint committed to training.checkpoint_root after the step ran (evaluate_intermediate) makes it
stale too. Real files and moto's S3 server on loopback (the s3_server fixture)."""

from __future__ import annotations

import uuid
from pathlib import Path

from evaluation.results import load_results, result_path
from openaim.steps.base import RunContext, plan, run_step
from openaim.steps.evaluate import Evaluate
from shared import fsio
from shared.config.loading import load_config
from shared.stage_cache import hash_file
from tests.s3_server import BUCKET
from tests.test_eval_run_features import tiny_aim
from tests.test_eval_s3 import EVAL, _results
from training import checkpoint as ck


def _cfg(workdir: Path, sets: list[str]):
    return load_config(None, [f"workdir={workdir}", *EVAL, *sets])


def _status(cfg) -> list[str]:
    """The eval step's row of `openaim status`: [] when fresh, else why it would run."""
    [(name, state)] = plan(RunContext(cfg), [Evaluate()])
    assert name == "eval"
    return state.reasons


def _run(cfg) -> tuple[bool, dict[str, dict]]:
    """The eval step as `openaim run` runs it: whether it ran, and the digits results by checkpoint."""
    ran = run_step(Evaluate(), RunContext(cfg))
    return ran, {r["checkpoint"]: r for r in load_results(cfg.eval_dir) if r["benchmark"] == "digits"}


def test_a_checkpoint_rewritten_in_place_makes_eval_stale_and_its_probes_rerun(s3_server, tmp_path):
    (_, arch), first, second = tiny_aim(0), tiny_aim(1)[0].state_dict(), tiny_aim(2)[0].state_dict()
    on_disk = tmp_path / "ckpts" / "disk_ckpt"
    ck.write_checkpoint(on_disk, tiny_aim(0)[0].state_dict(), arch)
    in_bucket = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/bucket_ckpt"
    ck.write_weights(in_bucket, first, arch)
    cfg = _cfg(tmp_path / "work", [f"evaluation.checkpoints=['{on_disk}', '{in_bucket}']"])

    ran, before = _run(cfg)
    assert ran and sorted(before) == ["bucket_ckpt", "disk_ckpt"]
    assert _status(cfg) == []
    assert not _run(cfg)[0]  # nothing changed: reused

    def stamps() -> dict[str, int]:
        return {name: result_path(cfg.eval_dir, name, "digits").stat().st_mtime_ns for name in before}

    # The local checkpoint written again with other weights of the same shapes (the same size): only its
    # modification time and bytes differ.
    size = (on_disk / ck.MODEL_FILE).stat().st_size
    ck.write_checkpoint(on_disk, second, arch)
    assert (on_disk / ck.MODEL_FILE).stat().st_size == size
    assert _status(cfg) == ["input checkpoints changed"]
    old = stamps()
    ran, after = _run(cfg)
    assert ran and _status(cfg) == []
    new_hash = hash_file(on_disk / ck.MODEL_FILE)
    assert after["disk_ckpt"]["checkpoint_hash"] == new_hash != before["disk_ckpt"]["checkpoint_hash"]
    assert _results(after["disk_ckpt"]) != _results(before["disk_ckpt"])
    now = stamps()
    assert now["disk_ckpt"] != old["disk_ckpt"]  # its probes were trained again
    assert now["bucket_ckpt"] == old["bucket_ckpt"] and after["bucket_ckpt"] == before["bucket_ckpt"]

    # The object in the bucket overwritten at the same key (a new ETag).
    weights = fsio.join(in_bucket, ck.MODEL_FILE)
    etag = fsio.stat(weights)
    ck.write_weights(in_bucket, tiny_aim(0)[0].state_dict(), arch)
    assert fsio.stat(weights) != etag and fsio.stat(weights)["size"] == etag["size"]
    assert _status(cfg) == ["input checkpoints changed"]
    old = stamps()
    ran, last = _run(cfg)
    assert ran and _status(cfg) == []
    now = stamps()
    assert now["bucket_ckpt"] != old["bucket_ckpt"] and now["disk_ckpt"] == old["disk_ckpt"]
    assert last["bucket_ckpt"]["checkpoint_hash"] != after["bucket_ckpt"]["checkpoint_hash"]

    # The results are those of the new weights: a fresh workdir evaluating the same files agrees.
    ran, fresh = _run(_cfg(tmp_path / "fresh", [f"evaluation.checkpoints=['{on_disk}', '{in_bucket}']"]))
    assert ran
    for name in fresh:
        assert last[name]["checkpoint_hash"] == fresh[name]["checkpoint_hash"], name
        assert _results(last[name]) == _results(fresh[name]), name
    # The bucket now holds what the disk first held: the same weights, the same results.
    assert last["bucket_ckpt"]["checkpoint_hash"] == before["disk_ckpt"]["checkpoint_hash"]
    assert _results(last["bucket_ckpt"]) == _results(before["disk_ckpt"])


def test_a_checkpoint_committed_to_the_root_after_the_step_makes_eval_stale(s3_server, tmp_path):
    """evaluate_intermediate with training.checkpoint_root in a bucket: a checkpoint committed there after
    the eval step's record (a run continued outside the step runner) is one more checkpoint to evaluate."""
    model, arch = tiny_aim(0)
    root = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/training"
    work = tmp_path / "work"
    ck.write_checkpoint(work / "training" / "final", model.state_dict(), arch)

    def commit(step: int) -> None:
        ck.write_weights(ck.step_dir(root, step), model.state_dict(), arch)
        fsio.write_text(fsio.join(ck.step_dir(root, step), ck.COMPLETE), "ok\n")

    commit(2)
    cfg = _cfg(work, [f"training.checkpoint_root={root}", "training.steps=8",
                      "evaluation.evaluate_intermediate=true"])
    ctx = RunContext(cfg)
    # The step's record and output as a finished run leaves them (what the run evaluates is the test above).
    cfg.eval_dir.mkdir(parents=True)
    (cfg.eval_dir / "results.csv").write_text("checkpoint\n")
    ctx.cache.record(Evaluate().identity(ctx))
    assert _status(cfg) == []
    ck.write_weights(ck.step_dir(root, 4), model.state_dict(), arch)  # not committed: not evaluated
    assert _status(cfg) == []
    fsio.write_text(fsio.join(ck.step_dir(root, 4), ck.COMPLETE), "ok\n")
    assert _status(cfg) == ["input checkpoints changed"]
