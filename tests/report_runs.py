"""A finished run's outputs, written with the stages' own writers, for the report tests
(test_report.py, test_report_render.py)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from evaluation.benchmarks.registry import BENCHMARKS, PAPER_BENCHMARKS
from shared.config.root import OpenAIMConfig

EVALUATED = ["cifar-10", "pets", "miniweb-shape", "digits"]


def make_run(workdir: Path, seed: int, name: str = "demo", kept: int = 180) -> dict:
    """A finished run's outputs in the stages' formats; returns {(ckpt, bench, probe): top1 fraction}."""
    from evaluation.results import write_missing, write_result, write_results_csv

    rng = random.Random(seed)
    eval_dir = workdir / "eval"
    ckpts = [
        (f"{name}-step_0000100", 100),
        (f"{name}-step_0000200", 200),
        (f"{name}-final", 300),
        ("random-init", 0),
    ]
    truth, records = {}, []
    for ckpt, step in ckpts:
        for bench in EVALUATED:
            record = {
                "checkpoint": ckpt,
                "checkpoint_path": f"/runs/{ckpt}",
                "checkpoint_hash": f"{seed}{step:04d}ab" * 3,
                "step": step,
                "benchmark": bench,
                "blocks": [3, 4, 5],
                "img_size": 64,
                "n_train": 90,
                "n_val": 10,
                "n_test": 40,
                "skipped_corrupt": 0,
                "probes": {},
                "seconds": 1.5,
            }
            for probe in ("attentive", "linear"):
                if ckpt == "random-init":  # the same trunk in every run (same architecture and seed)
                    top1 = round(0.1 + 0.24 * random.Random(f"{bench} {probe}").random(), 4)
                else:
                    top1 = round(0.1 + 0.8 * rng.random(), 4)
                truth[(ckpt, bench, probe)] = top1
                record["probes"][probe] = {
                    "top1": top1,
                    "top5": min(1.0, top1 + 0.1),
                    "mean_per_class_recall": top1,
                    "lr": 1e-3,
                    "weight_decay": 1e-4,
                    "val_top1": top1,
                }
            write_result(eval_dir, record)
            records.append(record)
    write_results_csv(eval_dir, records)
    write_missing(
        eval_dir,
        [
            {
                "benchmark": b,
                "title": t,
                "path": f"/data/bench/{b}-files",
                "how_to_get": f"download {b} from its site",
            }
            for b, t in ((name, BENCHMARKS[name].title) for name in PAPER_BENCHMARKS)
            if b not in EVALUATED
        ],
    )
    (workdir / "training").mkdir(parents=True)
    with open(workdir / "training" / "metrics.jsonl", "w") as f:
        for step in range(10, 310, 10):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": 1.0 / math.sqrt(step) + 0.02 * rng.random(),
                        "lr": 1e-3,
                        "grad_norm": 0.5,
                        "images_per_s": 120.0,
                        "mfu": 0.01,
                    }
                )
                + "\n"
            )
        f.write('{"step": 310, "loss": ')  # torn last line of a killed run
    (workdir / "curation").mkdir(parents=True)
    manifest = {
        "config_hash": "c0ffee" * 4,
        "ran": ["extract", "download"],
        "reused": [],
        "fraction": 0.15,
        "threshold": 0.2712,
        "kept": kept,
        "download_failures": {"timeout": 7, "http 404": 20},
        "steps": {
            "extract": {"in": 2000, "out": 1800},
            "download": {"in": 1800, "out": 1500},
            "score": {"in": 1500, "out": 1500},
            "dedup": {"in": 1500, "out": 1300, "dropped": {}},
            "safety": {"in": 1300, "out": 1200},
            "select": {"in": 1200, "out": kept},
        },
        "quality": {"kept": kept, "precision": 0.93, "eval_leak_kept": 0},
    }
    (workdir / "curation" / "manifest.json").write_text(json.dumps(manifest))
    run_config = OpenAIMConfig(name=name, workdir=workdir).model_dump(mode="json")
    run_config["curation"]["select"]["fraction"] = 0.15 if kept > 150 else 0.1
    (eval_dir / "run_info.json").write_text(
        json.dumps(
            {
                "config": run_config,
                "torch": "2.0-test",
                "device": "cpu",
                "device_name": "x86_64",
                "seconds": 12.5,
            }
        )
    )
    (workdir / "pipeline.json").write_text(
        json.dumps(
            {"ran": [], "reused": [], "missing": [], "seconds": {"build-dataset": 61.0, "train": 185.2}}
        )
    )
    return truth


def config(workdir: Path, compare: list[str] | None = None) -> OpenAIMConfig:
    return OpenAIMConfig(
        name="demo", workdir=workdir, report={"title": "test report", "compare": compare or []}
    )
