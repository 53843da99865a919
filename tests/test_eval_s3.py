"""`openaim eval` of a run whose checkpoints are in object storage (training.checkpoint_root: s3://, on moto's
S3 server on loopback): the committed intermediate checkpoints in the bucket and the final model are
evaluated, an uncommitted one is not, and every feature file and probe result equals the evaluation of the
same checkpoints copied to local disk; evaluation.checkpoints may name one in the bucket."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from shared import fsio
from shared.config.loading import load_config
from shared.errors import InputError
from tests.s3_server import BUCKET
from tests.test_train_loop import TINY, _run, _train_cmd
from training import checkpoint as ck
from training.eval_weights import load_model_for_eval, resolve_weights
from training.synthetic import write_synthetic_shards

EVAL = ["name=tiny", "evaluation.benchmarks=[digits]", "evaluation.n_blocks=2", "evaluation.batch_size=128",
        "evaluation.max_train_per_benchmark=200", "evaluation.random_baseline=false",
        "evaluation.probe.kind=linear", "evaluation.probe.epochs=3", "evaluation.probe.lrs=[1e-2]",
        "evaluation.probe.weight_decays=[1e-4]", "evaluation.threads=1"]


def _evaluate(workdir: Path, sets: list[str]) -> dict[str, dict]:
    from evaluation.results import load_results
    from evaluation.run import evaluate_from_config

    cfg = load_config(None, [f"workdir={workdir}", *TINY, *EVAL, *sets])
    evaluate_from_config(cfg)
    return {r["checkpoint"]: r for r in load_results(cfg.eval_dir) if r["benchmark"] == "digits"}


def _results(record: dict) -> dict:
    """A record's probe results without their wall times."""
    return {kind: {k: v for k, v in res.items() if k != "seconds"} for kind, res in record["probes"].items()}


def _features(workdir: Path) -> dict[str, tuple[dict, dict]]:
    """Every cached feature file: (its metadata, its tensors), by its path (safetensors writes its header's
    metadata in no fixed order, so the files are compared by what they hold)."""
    from safetensors import safe_open

    root = workdir / "eval" / "features"
    found = {}
    for path in sorted(root.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no mapping
            found[path.relative_to(root).as_posix()] = (f.metadata(), tensors)
    return found


def test_eval_reads_the_committed_checkpoints_in_the_bucket_as_it_reads_them_on_disk(s3_server, tmp_path):
    shards = tmp_path / "shards"
    write_synthetic_shards(shards, n_shards=2, per_shard=16, size=40, seed=0)
    root = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/training"
    remote = tmp_path / "remote"
    run = [f"training.data.shards=['{shards}/*.tar']", "training.steps=8", "training.checkpoint_every=4",
           "training.keep_checkpoints=[4]", "training.global_batch_size=8", "training.data.num_workers=0"]
    trained = _run(_train_cmd(remote, [*run, f"training.checkpoint_root={root}"]))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert [s for s, _ in ck.complete_checkpoints(root)] == [4, 8]
    assert not (remote / "training" / "checkpoints").exists()  # the checkpoints are in the bucket only
    # A save killed before its COMPLETE: weights and config there, no record. Nobody may evaluate it.
    uncommitted = ck.step_dir(root, 6)
    for name in (ck.MODEL_FILE, ck.CONFIG_FILE):
        fsio.write_bytes(fsio.join(uncommitted, name),
                         fsio.read_bytes(fsio.join(ck.step_dir(root, 4), name)))
    assert resolve_weights(root) == fsio.join(ck.step_dir(root, 8), ck.MODEL_FILE)

    # The same run on local disk: final/ and the committed checkpoints, downloaded from the bucket.
    local = tmp_path / "local"
    shutil.copytree(remote / "training" / "final", local / "training" / "final")
    for step, folder in ck.complete_checkpoints(root):
        fsio.download(folder, Path(ck.step_dir(local / "training", step)))

    got = _evaluate(remote, [*run, f"training.checkpoint_root={root}"])
    want = _evaluate(local, run)
    # Step 8's checkpoint holds the final model (evaluated once, as "tiny"); step 6 is uncommitted.
    assert sorted(got) == sorted(want) == ["tiny", "tiny-step_4"]
    assert got["tiny-step_4"]["checkpoint_path"] == ck.step_dir(root, 4)
    assert want["tiny-step_4"]["checkpoint_path"] == ck.step_dir(local / "training", 4)
    assert got["tiny"]["checkpoint_hash"] != got["tiny-step_4"]["checkpoint_hash"]
    for name in got:
        assert got[name]["step"] == want[name]["step"]
        assert got[name]["checkpoint_hash"] == want[name]["checkpoint_hash"], name
        assert _results(got[name]) == _results(want[name]), name
        assert 0 <= got[name]["probes"]["linear"]["top1"] <= 1
    features = _features(remote)
    assert len(features) == 2 * 3  # checkpoints x splits, keyed by the weights' hash
    for name, (meta, tensors) in _features(local).items():
        assert features[name][0] == meta, name
        assert tensors.keys() == features[name][1].keys()
        assert all(t.equal(features[name][1][k]) for k, t in tensors.items()), name
    assert features.keys() == _features(local).keys()

    # evaluation.checkpoints may name a checkpoint in the bucket.
    listed = _evaluate(tmp_path / "listed", [f"evaluation.checkpoints=['{ck.step_dir(root, 4)}']"])
    run_name = root.split("/")[-2]
    assert list(listed) == [f"{run_name}-step_0000004"]
    assert listed[f"{run_name}-step_0000004"]["checkpoint_hash"] == got["tiny-step_4"]["checkpoint_hash"]
    assert _results(listed[f"{run_name}-step_0000004"]) == _results(got["tiny-step_4"])
    with pytest.raises(InputError, match=f"evaluation.checkpoints: {ck.step_dir(root, 5)} does not exist"):
        _evaluate(tmp_path / "listed", [f"evaluation.checkpoints=['{ck.step_dir(root, 5)}']"])

    # The loader takes a checkpoint folder in the bucket as it takes one on disk.
    a, _ = load_model_for_eval(ck.step_dir(root, 4))
    b, _ = load_model_for_eval(ck.step_dir(local / "training", 4))
    assert all(v.equal(b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(InputError, match=f"checkpoint not found: {ck.step_dir(root, 5)}"):
        load_model_for_eval(ck.step_dir(root, 5))
