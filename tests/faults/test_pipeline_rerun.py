"""Rerun after a filtering change: no download and no re-scoring; new shards, a new training run, new
probes, and a report that shows the old and the new run side by side. `openaim status` says why."""

from __future__ import annotations

import json

from tests.faults.conftest import make_workdir, openaim, sets, tiny_overrides


def test_fraction_change_reruns_only_downstream_and_report_compares(served_web, tmp_path):
    web_dir, port, server = served_web
    workdir = make_workdir(tmp_path / "run", web_dir)
    base = tiny_overrides(workdir, port)
    openaim("run", *sets(base))
    first = json.loads((workdir / "pipeline.json").read_text())
    assert first["ran"] == ["build-dataset", "train", "eval", "report"]

    status = openaim("status", *sets(base)).stdout
    assert "stale" not in status

    changed = [*base, "curation.select.fraction=0.3"]
    status = openaim("status", *sets(changed)).stdout
    assert "curation.select.fraction: 0.5 -> 0.3" in status
    assert "upstream select is stale" in status  # train, and through it eval

    requests_before = len(server.request_log)
    openaim("run", *sets(changed))
    manifest = json.loads((workdir / "curation" / "manifest.json").read_text())
    assert manifest["ran"] == ["select"]
    assert {"extract", "download", "score", "dedup", "train-filter"} <= set(manifest["reused"])
    assert len(server.request_log) == requests_before  # nothing downloaded again
    second = json.loads((workdir / "pipeline.json").read_text())
    assert second["ran"] == ["build-dataset", "train", "eval", "report"]

    history = workdir / "history" / "run-001"
    assert (history / "training" / "final").is_dir() and (history / "eval" / "results.csv").is_file()
    assert "curation.select.fraction" in (history / "run.json").read_text()
    report = (workdir / "report" / "report.md").read_text()
    assert "history/run-001" in report

    # Unchanged config: everything is reused.
    openaim("run", *sets(changed))
    third = json.loads((workdir / "pipeline.json").read_text())
    assert third["reused"] == ["train", "eval"]
    assert "stale" not in openaim("status", *sets(changed)).stdout
