"""Rerun after a filtering change: no download and no re-scoring; new shards, a new training run, new
probes, and a report that shows the old and the new run side by side. `openaim status` says why.
A step's identity is its config, inputs and VERSION: editing source files without a VERSION bump
reruns nothing; a bump reruns that step and every step after it."""

from __future__ import annotations

import json
import re
import shutil

from tests.faults.conftest import ROOT, make_workdir, openaim, sets, tiny_overrides


def test_fraction_change_reruns_only_downstream_and_report_compares(served_web, tmp_path):
    web_dir, port, server = served_web
    workdir = make_workdir(tmp_path / "run", web_dir)
    base = tiny_overrides(workdir, port)
    openaim("run", *sets(base))
    first = json.loads((workdir / "pipeline.json").read_text())
    assert first["ran"] == ["build-dataset", "train", "eval", "report"]

    status = openaim("status", *sets(base)).stdout
    assert "would run" not in status and status.count("fresh") == 9, status

    changed = [*base, "curation.select.fraction=0.3"]
    status = openaim("status", *sets(changed)).stdout
    assert "config curation.select.fraction: 0.5 -> 0.3" in status
    assert "upstream select would run" in status and "upstream train would run" in status

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
    assert "would run" not in openaim("status", *sets(changed)).stdout

    # A copy of the code with a comment appended to every openaim, curation, training and evaluation file:
    # `openaim status` says fresh, and `openaim run` reruns nothing.
    code = tmp_path / "code"
    for part in ("openaim", "shared", "curation", "training", "evaluation", "configs"):
        shutil.copytree(ROOT / part, code / part, ignore=shutil.ignore_patterns("__pycache__"))
    for stage in ("openaim", "curation", "training", "evaluation"):
        for src in (code / stage).rglob("*.py"):
            with src.open("a") as f:
                f.write("\n# a comment changes no result\n")
    status = openaim("status", *sets(changed), code=code).stdout
    assert "would run" not in status and status.count("fresh") == 9, status
    openaim("run", *sets(changed), code=code)
    assert json.loads((workdir / "curation" / "manifest.json").read_text())["ran"] == []
    stages = json.loads((workdir / "pipeline.json").read_text())
    assert (stages["ran"], stages["reused"]) == (["build-dataset", "report"], ["train", "eval"])

    # Bumping dedup's VERSION reruns dedup and every step after it (not download, score or safety).
    dedup_py = code / "openaim" / "steps" / "dedup.py"  # the dedup step, its VERSION with it
    source = dedup_py.read_text()
    version = int(re.search(r"^    VERSION = (\d+)", source, re.MULTILINE).group(1))
    bumped = re.sub(r"^    VERSION = \d+", f"    VERSION = {version + 1}", source, flags=re.MULTILINE)
    dedup_py.write_text(bumped)
    status = openaim("status", *sets(changed), code=code).stdout
    assert f"version {version} -> {version + 1}" in status and "upstream dedup would run" in status, status
    assert status.count("fresh") == 5, status  # extract, download, train-filter, score, safety
    openaim("run", *sets(changed), code=code)
    manifest = json.loads((workdir / "curation" / "manifest.json").read_text())
    assert manifest["ran"] == ["dedup", "select"]
    assert json.loads((workdir / "pipeline.json").read_text())["ran"] == ["build-dataset", "train", "eval",
                                                                           "report"]
