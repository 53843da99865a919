"""`openaim report`: fixture runs written with the eval stage's own writers, real PNGs, real HTML parsing."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from curation.select import subset_to_uids
from evaluation.benchmarks.registry import BENCHMARKS, PAPER_BENCHMARKS
from openaim.report import report_from_config
from shared.errors import InputError
from tests.report_runs import EVALUATED, config, make_run

PAPER_TITLES = {
    "imagenet-1k": "ImageNet-1k",
    "inat-2018": "iNaturalist",
    "cifar-10": "CIFAR-10",
    "cifar-100": "CIFAR-100",
    "food-101": "Food-101",
    "dtd": "DTD",
    "pets": "Oxford-IIIT Pets",
    "cars": "Stanford Cars",
    "iwildcam": "iWildCam",
    "camelyon17": "Camelyon17",
    "pcam": "PatchCamelyon",
    "rxrx1": "RxRx1",
    "eurosat": "EuroSAT",
    "fmow": "Functional Map of the World",
    "domainnet-infograph": "DomainNet Infograph",
}


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset", "data", "poster")]


def _markdown_table(md: str) -> tuple[list[str], list[list[str]]]:
    """The first pipe table after '## Benchmarks': header and rows, bold markers stripped."""
    section = md.split("## Benchmarks", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    end = next(
        i
        for i in range(1, len(lines))
        if not lines[i].startswith("|") or i > 1 and lines[i].startswith("| benchmark")
    )
    rows = [[c.strip().strip("*") for c in ln.strip("|").split(" | ")] for ln in lines[:end]]
    return rows[0], rows[2:]


def test_report_tables_match_csv_and_name_all_benchmarks(tmp_path):
    truth = make_run(tmp_path / "run", seed=1)
    cfg = config(tmp_path / "run")
    html_path = report_from_config(cfg)
    md = (cfg.report_dir / "report.md").read_text()

    for name, title in PAPER_TITLES.items():
        assert title in md, f"{name} not named in the Markdown"
    for name in PAPER_BENCHMARKS:
        if name not in EVALUATED:
            assert f"/data/bench/{name}-files" in md  # missing benchmark with its path
    assert "download imagenet-1k from its site" in md

    header, rows = _markdown_table(md)
    assert header[0] == "benchmark" and "status" not in header
    cols = {h: i for i, h in enumerate(header)}
    by_title = {r[0]: r for r in rows}

    checked = 0
    for (ckpt, bench, probe), top1 in truth.items():
        col = f"{ckpt} · {probe}"
        if "step_" in ckpt:
            assert col not in cols  # intermediates go to the accuracy-vs-step section
            continue
        assert by_title[BENCHMARKS[bench].title][cols[col]] == f"{100 * top1:.1f}"
        checked += 1
    assert checked == 2 * 2 * len(EVALUATED)
    # only evaluated benchmarks in the main table; the others once, in the Missing table, with a reason
    assert set(by_title) - {r[0] for r in rows if r[0].startswith("average")} == {
        BENCHMARKS[b].title for b in EVALUATED
    }
    missing = md.split("### Missing or failed benchmarks", 1)[1].split("\n## ", 1)[0]
    assert md.count("ImageNet-1k | imagenet-1k |") == 1
    assert "| ImageNet-1k | imagenet-1k | /data/bench/imagenet-1k-files | not found; get it:" in missing

    # the average row and the pretrained-vs-random line agree with the CSV
    average = next(r for r in rows if r[0].startswith("average"))
    mean = sum(truth[("demo-final", b, "attentive")] for b in EVALUATED) / len(EVALUATED)
    assert average[cols["demo-final · attentive"]] == f"{100 * mean:.1f}"
    gap = (
        100
        * sum(
            truth[("demo-final", b, "attentive")] - truth[("random-init", b, "attentive")] for b in EVALUATED
        )
        / len(EVALUATED)
    )
    # one standard error: each top-1 a binomial proportion over its 40 test images
    var = sum(
        truth[(c, b, "attentive")] * (1 - truth[(c, b, "attentive")]) / 40
        for b in EVALUATED
        for c in ("demo-final", "random-init")
    )
    stderr = 100 * math.sqrt(var) / len(EVALUATED)
    assert f"minus random-init weights = {gap:+.1f} ± {stderr:.1f} points of mean top-1" in md
    assert ("within two standard errors" in md) == (abs(gap) < 2 * stderr)
    assert "target_gap_points" not in md  # no target configured

    # the best attentive number of a row is the bold one
    line = next(ln for ln in md.splitlines() if ln.startswith("| CIFAR-10 |"))
    best = max(truth[(c, "cifar-10", "attentive")] for c in ("demo-final", "random-init"))
    assert f"**{100 * best:.1f}**" in line

    assert "82.4" in md and "84.0" in md and "published AIM-7B" in md  # published references
    assert "step 100" in md and "step 300" in md  # accuracy vs step table

    # probe top-1 against the pretraining loss logged at each checkpoint's step
    section = md.split("## Pretraining loss vs probe accuracy", 1)[1].split("\n## ", 1)[0]
    losses = {
        int(json.loads(ln)["step"]): json.loads(ln)["loss"]
        for ln in (cfg.training_dir / "metrics.jsonl").read_text().splitlines()[:-1]
    }
    for step, ckpt in ((100, "demo-step_0000100"), (300, "demo-final")):
        mean = 100 * sum(truth[(ckpt, b, "attentive")] for b in EVALUATED) / len(EVALUATED)
        assert f"| {step} | {losses[step]:.4f} | {mean:.1f} |" in section
    assert "loss_vs_top1.png" in section and "Pearson correlation" in section

    # wall time per stage, torch version and device
    runtime = md.split("## Runtime", 1)[1].split("\n## ", 1)[0]
    assert "| demo | 61.0 s | 3.1 min | 12.5 s | — | 2.0-test | cpu (x86_64) |" in runtime
    assert html_path == cfg.report_dir / "report.html"


def test_html_is_self_contained_and_pngs_are_real(tmp_path):
    from PIL import Image

    make_run(tmp_path / "run", seed=2)
    cfg = config(tmp_path / "run")
    html = report_from_config(cfg).read_text()
    parser = _Refs()
    parser.feed(html)
    for tag, attr, value in parser.refs:
        if tag == "a" and attr == "href":
            continue  # text links to sources are fine
        assert value.startswith("data:image/png;base64,"), (tag, attr, value[:80])
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html
    embedded = [v for t, a, v in parser.refs if t == "img"]
    pngs = sorted(cfg.report_dir.glob("*.png"))
    names = {p.name for p in pngs}
    assert {
        "top1_per_benchmark.png",
        "pretraining_loss.png",
        "curation_funnel.png",
        "accuracy_vs_step_0.png",
        "loss_vs_top1.png",
    } <= names
    assert len(embedded) == len(pngs)
    md = (cfg.report_dir / "report.md").read_text()
    import base64

    for png in pngs:
        assert f"]({png.name})" in md  # referenced relatively from the Markdown
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width >= 500 and im.height >= 200
            assert len(im.convert("L").getcolors(1 << 16)) > 20  # not a blank canvas
        assert base64.b64encode(png.read_bytes()).decode() in html


def test_report_without_any_input_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()  # a workdir with nothing in it yet (a missing one is an error)
    cfg = config(tmp_path / "empty")
    html = report_from_config(cfg).read_text()
    md = (cfg.report_dir / "report.md").read_text()
    for title in PAPER_TITLES.values():
        assert title in md
    assert "run `openaim eval`" in md and "run `openaim train`" in md and "run `openaim build-dataset`" in md
    assert "<img" not in html and not list(cfg.report_dir.glob("*.png"))
    assert "git commit" in md and re.search(r"config sha256: [0-9a-f]{16}", md)


def test_compare_runs_side_by_side(tmp_path):
    old = make_run(tmp_path / "old", seed=3, kept=120)
    make_run(tmp_path / "new", seed=4, kept=220)
    cfg = config(tmp_path / "new", compare=[str(tmp_path / "old")])
    report_from_config(cfg)
    md = (cfg.report_dir / "report.md").read_text()
    header, rows = _markdown_table(md)
    assert "old: demo-final · attentive" in header and "demo: demo-final · linear" in header
    col = header.index("old: demo-final · attentive")
    row = next(r for r in rows if r[0] == "CIFAR-10")
    assert row[col] == f"{100 * old[('demo-final', 'cifar-10', 'attentive')]:.1f}"
    funnel_header = next(ln for ln in md.splitlines() if ln.startswith("| pairs |"))
    assert "demo" in funnel_header and "old" in funnel_header
    assert "| selected | 220 | 120 |" in md
    # the funnel never grows; dedup and safety are shown as parallel filters over the scored pairs
    chain = [
        ln.split(" | ")[1]
        for ln in md.splitlines()
        if ln.startswith(
            ("| links found", "| after extract", "| downloaded", "| scored", "| pass dedup", "| selected")
        )
    ]
    counts = [int(c.replace(",", "")) for c in chain]
    assert len(counts) == 6 and counts == sorted(counts, reverse=True)
    assert "| dedup alone (parallel filter) | 1,300 of 1,500 | 1,300 of 1,500 |" in md
    # random weights are the same trunk in both runs: one column, not one per run
    assert header.count("random-init (every run) · attentive") == 1
    assert not [h for h in header if h.endswith(": random-init · attentive")]
    # the runs table: each run's own keep fraction and kept count
    runs_rows = [ln for ln in md.splitlines() if ln.startswith(("| demo |", "| old |"))]
    assert "| 0.15 | 220 |" in runs_rows[0] and "| 0.15 | 120 |" in runs_rows[1]
    # the config keys that differ between the runs
    diff = md.split("### Config differences between the runs", 1)[1].split("\n#", 1)[0]
    assert "| curation.select.fraction | 0.15 | 0.1 |" in diff and "| name |" not in diff


@pytest.mark.parametrize("target", [-100.0, 100.0])
def test_summary_checks_the_configured_target_gap(tmp_path, target):
    truth = make_run(tmp_path / "run", seed=5)
    cfg = config(tmp_path / "run")
    cfg.report.target_gap_points = target
    report_from_config(cfg)
    md = (cfg.report_dir / "report.md").read_text()
    gap = (
        100
        * sum(
            truth[("demo-final", b, "attentive")] - truth[("random-init", b, "attentive")] for b in EVALUATED
        )
        / len(EVALUATED)
    )
    verdict = "met" if target < 0 else "not met"
    assert f"at least {target:g} points: {verdict} ({gap:+.1f})." in md


def test_percent_results_and_bad_inputs(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "eval").mkdir(parents=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "checkpoint",
            "step",
            "benchmark",
            "probe",
            "top1",
            "top5",
            "mean_per_class_recall",
            "lr",
            "weight_decay",
            "n_train",
            "n_test",
        ]
    )
    w.writerow(["x-final", 5, "cifar-10", "attentive", 87.25, 99.0, 86.0, 0.001, 0.0001, 10, 10])
    (workdir / "eval" / "results.csv").write_text(buf.getvalue())
    (workdir / "eval" / "missing.json").write_text("{not json")
    (workdir / "curation").mkdir()
    (workdir / "curation" / "manifest.json").write_text("[1, 2")
    cfg = config(workdir)
    report_from_config(cfg)
    md = (cfg.report_dir / "report.md").read_text()
    assert "| CIFAR-10 | 87.2 |" in md or "| CIFAR-10 | 87.3 |" in md  # percent kept as is
    assert "missing.json is unreadable" in md.replace("missing-benchmark list ", "") or "unreadable" in md

    before = (cfg.report_dir / "report.html").read_bytes()
    with pytest.raises(InputError, match="not a directory"):
        report_from_config(config(workdir, compare=[str(tmp_path / "nope")]))
    assert (cfg.report_dir / "report.html").read_bytes() == before  # nothing already written is lost


def test_report_cli_writes_and_fails_in_one_line(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    make_run(tmp_path / "w", seed=5)
    history = tmp_path / "w" / "history" / "run-001"
    make_run(history, seed=6)
    (history / "run.json").write_text(
        json.dumps({"archived_because": ["config changed: curation.select.fraction"]})
    )
    good = tmp_path / "good.yaml"
    good.write_text(f"name: t\nworkdir: {tmp_path / 'w'}\nreport:\n  compare: ['{history}']\n")
    out = subprocess.run(
        [sys.executable, "-m", "openaim", "report", "--config", str(good)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "w" / "report" / "report.md").read_text()
    assert "history/run-001: demo-final · attentive" in md and "archived: config changed" in md

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: t\nworkdir: {tmp_path / 'w'}\nreport:\n  compare: ['{tmp_path / 'absent'}']\n")
    out = subprocess.run(
        [sys.executable, "-m", "openaim", "report", "--config", str(bad)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1 and "not a directory" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_curation_samples_read_a_large_pool_as_a_uniform_sample(tmp_path, monkeypatch):
    """A pool larger than SAMPLE_ROWS is read as every k-th scored row (never whole); kept/dropped follow
    curation.select's rule (both masks keep it and the score reaches the threshold), with reasons."""
    from openaim.report import curation_samples
    from tests.test_report_render import write_curated_pool

    make_run(tmp_path / "run", seed=8)
    threshold = write_curated_pool(tmp_path / "run" / "curation", n=60)
    manifest = json.loads((tmp_path / "run" / "curation" / "manifest.json").read_text())
    full = curation_samples.read_curation_samples(tmp_path / "run" / "curation", manifest, [])
    assert full.stride == 1 and len(full.scores) == 60 and full.pool_size == 60
    kept_uids = set(subset_to_uids(np.load(tmp_path / "run" / "curation" / "subset.npy")))
    assert len(full.kept_scores) == len(kept_uids) and min(full.kept_scores) >= threshold
    assert {e["uid"] for e in full.examples if e["kept"]} <= kept_uids
    reasons = {e["reason"] for e in full.examples if not e["kept"]}
    below = f"score below the threshold {threshold:.4f}"
    assert {"dedup: near_dup", "safety: unsafe_concept", below} <= reasons
    assert all(e["caption"].startswith("a ") and e["image"][:2] == b"\xff\xd8" for e in full.examples)

    monkeypatch.setattr(curation_samples, "SAMPLE_ROWS", 10)
    sampled = curation_samples.read_curation_samples(tmp_path / "run" / "curation", manifest, [])
    assert sampled.stride == 6 and sampled.scores == full.scores[::6]
