"""The report's sections, as document blocks plus the PNGs they show."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from evaluation.report import charts
from evaluation.report.collect import (
    RANDOM_INIT,
    STAGES,
    BenchmarkInfo,
    CurationSamples,
    RunData,
    funnel,
    is_intermediate,
    parallel_filters,
    step_of,
)
from evaluation.report.document import Block, Bullets, Code, Figure, Heading, Link, Paragraph, Table, text
from evaluation.report.references import AIM_IMAGENET_ATTENTIVE, ML_AIM_README, PAPER
from evaluation.report.tables import (
    benchmark_table,
    fmt,
    pretrained_checkpoint,
    pretrained_vs_random,
    probes_present,
    table_benchmarks,
)

Images = dict[str, bytes]


def summary(runs: list[RunData], target_gap_points: float | None = None) -> list[Block]:
    this = runs[0]
    blocks: list[Block] = [Heading("Summary", anchor="summary")]
    gap = pretrained_vs_random(this)
    if gap is not None:
        line = (
            f"Measured gap: pretrained ({gap.checkpoint}) minus random-init weights = {gap.points:+.1f}"
            f"{_pm(gap)} points of mean top-1 ({gap.probe} probe, {gap.benchmarks} benchmark(s))."
        )
        blocks.append(Paragraph([line], emphasis=True))
        if gap.stderr is not None:
            within = abs(gap.points) < 2 * gap.stderr
            blocks.append(
                text(
                    "± is one standard error from the test-set sizes (each top-1 a binomial proportion); "
                    f"the gap is {'within' if within else 'outside'} two standard errors of zero. "
                    "How probe accuracy moves with "
                    "the pretraining loss is under “Pretraining loss vs probe accuracy”."
                )
            )
        if target_gap_points is not None:
            met = gap.points >= target_gap_points
            blocks.append(
                text(
                    f"report.target_gap_points: at least {target_gap_points:g} points: "
                    f"{'met' if met else 'not met'} ({gap.points:+.1f})."
                )
            )
    elif this.rows:
        blocks.append(
            text("No random-init checkpoint was evaluated, so there is no pretrained-vs-random gap.")
        )
    for run in runs[1:]:
        if (g := pretrained_vs_random(run)) is not None:
            blocks.append(
                text(
                    f"{run.label}: pretrained ({g.checkpoint}) vs random: {g.points:+.1f}{_pm(g)} points "
                    f"({g.probe} probe, {g.benchmarks} benchmark(s))."
                )
            )
    if len(runs) > 1:
        blocks.append(runs_compared(runs))
        blocks += config_diff(runs)
    notes = [(run.label, note) for run in runs for note in run.notes]
    if notes:
        blocks.append(text("Notes on the inputs (absent or damaged files; their sections say so too):"))
        blocks.append(Bullets([[f"{label}: {note}"] for label, note in notes]))
    return blocks


def _pm(gap) -> str:
    return f" ± {gap.stderr:.1f}" if gap.stderr is not None else ""


def runs_compared(runs: list[RunData]) -> Table:
    """One row per run shown side by side: where it lives and its headline numbers."""
    rows = []
    for k, run in enumerate(runs):
        gap = pretrained_vs_random(run)
        ckpt = pretrained_checkpoint(run)
        probe = (probes_present([run]) or ["attentive"])[0]
        scores = [v for b in run.benchmarks() if ckpt and (v := run.top1(ckpt, b, probe)) is not None]
        why = _archived_because(run.root)
        m = run.manifest or {}
        rows.append(
            [
                run.label,
                "this run" if k == 0 else (why or "compared run"),
                str(run.root or "—"),
                ckpt or "—",
                fmt(sum(scores) / len(scores)) if scores else "—",
                str(len(scores)),
                f"{gap.points:+.1f}{_pm(gap)}" if gap else "—",
                str(m.get("fraction", "—")),
                str(m.get("kept", "—")),
                f"{float(run.metrics[-1]['loss']):.4f}" if run.metrics else "—",
            ]
        )
    return Table(
        [
            "run",
            "role",
            "directory",
            "checkpoint",
            "mean top-1",
            "benchmarks",
            "vs random",
            "keep fraction",
            "curated pairs",
            "last loss",
        ],
        rows,
        caption="Runs shown side by side in this report (curation numbers: each run's own manifest).",
        text_columns=4,
    )


def _flat_config(obj, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for key, value in obj.items():
            out.update(_flat_config(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(obj, default=str)}


# Keys that differ between runs by construction, not by choice.
_NOT_COMPARED = ("workdir", "report.compare")


def config_diff(runs: list[RunData]) -> list[Block]:
    """The config keys whose values differ between the compared runs (from each eval's run_info.json)."""
    with_config = [run for run in runs if run.run_info and isinstance(run.run_info.get("config"), dict)]
    if len(runs) < 2:
        return []
    blocks: list[Block] = [Heading("Config differences between the runs", level=3, anchor="config-diff")]
    if len(with_config) < 2:
        return blocks + [
            text("Fewer than two runs recorded their config (eval/run_info.json): nothing to compare.")
        ]
    flat = [_flat_config(run.run_info["config"]) for run in with_config]
    keys = sorted({k for f in flat for k in f if not k.startswith(_NOT_COMPARED)})
    rows = [
        [key] + [_short(f.get(key, "(unset)")) for f in flat]
        for key in keys
        if len({f.get(key, "(unset)") for f in flat}) > 1
    ]
    if not rows:
        return blocks + [text("The runs' configs are identical (apart from their directories).")]
    return blocks + [
        Table(
            ["config key"] + [run.label for run in with_config],
            rows,
            caption="Values as each run's eval recorded them; keys with the same value everywhere "
            "are left out.",
            text_columns=1 + len(with_config),
        )
    ]


def _short(value: str, width: int = 80) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _archived_because(root: Path | None) -> str:
    """History runs (shared.pipeline) say why they were archived in run.json."""
    try:
        reasons = json.loads((root / "run.json").read_text()).get("archived_because") if root else None
    except (OSError, ValueError, AttributeError):
        return ""
    return (
        ("archived: " + "; ".join(map(str, reasons)))[:120] if isinstance(reasons, list) and reasons else ""
    )


def benchmarks(catalog: list[BenchmarkInfo], runs: list[RunData], images: Images) -> list[Block]:
    blocks: list[Block] = [
        Heading("Benchmarks", anchor="benchmarks"),
        text(
            "Attentive and linear probes trained on frozen trunk features; each probe's "
            "learning rate and weight decay chosen on a validation split carved from train."
        ),
    ]
    if any(run.rows for run in runs):
        blocks.append(benchmark_table(catalog, runs))
    else:
        blocks.append(text("No benchmark results yet: run `openaim eval`."))
    blocks.append(Heading("Published references (not our runs)", level=3))
    blocks.append(
        Table(
            ["benchmark", "model", "probe", "top-1 last 6 blocks", "top-1 best 6 blocks", "source"],
            [
                [
                    "ImageNet-1k",
                    f"published {r.model} ({r.params})",
                    r.probe,
                    f"{r.top1_last6:.1f}",
                    f"{r.top1_best6:.1f}",
                    "ml-aim README",
                ]
                for r in AIM_IMAGENET_ATTENTIVE
            ],
            caption="Published AIM results: frozen trunk, attentive probe, ImageNet-1k top-1 (%).",
            text_columns=3,
        )
    )
    blocks.append(
        Paragraph(
            [
                "Sources: ",
                Link("apple/ml-aim README", ML_AIM_README),
                ", ",
                Link("AIM paper (arXiv 2401.08541)", PAPER),
                ".",
            ]
        )
    )
    bars = _bar_chart(catalog, runs)
    if bars is not None:
        images["top1_per_benchmark.png"] = bars
        blocks.append(
            Figure(
                "top1_per_benchmark.png",
                "Top-1 per benchmark and checkpoint",
                "Top-1 per benchmark, one bar per checkpoint.",
            )
        )
    blocks += missing_benchmarks(catalog, runs)
    return blocks


def _bar_chart(catalog: list[BenchmarkInfo], runs: list[RunData]) -> bytes | None:
    probes = probes_present(runs)
    if not probes:
        return None
    probe = probes[0]
    benches = [b for b in table_benchmarks(catalog, runs) if any(b.name in r.benchmarks() for r in runs)]
    several = len(runs) > 1
    series = [
        (f"{run.label}: {ckpt}" if several else ckpt, [run.top1(ckpt, b.name, probe) for b in benches])
        for run in runs
        for ckpt in run.main_checkpoints()
    ]
    return charts.top1_bars(
        [b.title for b in benches], series, title=f"Top-1 accuracy per benchmark ({probe} probe)"
    )


def missing_benchmarks(catalog: list[BenchmarkInfo], runs: list[RunData]) -> list[Block]:
    """Every paper benchmark without results, and every benchmark that failed: where it was looked for and
    why it has no results (not found, or the reason it could not be read)."""
    evaluated = {b for run in runs for b in run.benchmarks()}
    this = runs[0]
    failed = {f["benchmark"]: f for f in this.failed}
    listed = {m["benchmark"]: m for run in runs for m in run.missing}
    by_name = {b.name: b for b in catalog}
    names = list(failed)
    names += [
        b.name for b in catalog if b.kind == "paper" and b.name not in evaluated and b.name not in failed
    ]
    names += [n for n in listed if n not in names and n not in evaluated]
    blocks: list[Block] = [Heading("Missing or failed benchmarks", level=3, anchor="missing")]
    if not names:
        return blocks + [text("Every paper benchmark has results.")]
    rows = []
    for name in names:
        info, entry = by_name.get(name), failed.get(name) or listed.get(name, {})
        title = info.title if info else str(entry.get("title") or name)
        path = str(entry.get("path") or (info.path if info else ""))
        if name in failed:
            why = f"failed ({entry.get('checkpoint', '?')}): {entry.get('reason', '')}"
        elif name in listed:
            why = f"not found; get it: {entry.get('how_to_get') or (info.how_to_get if info else '')}"
        else:
            why = f"not evaluated (not in evaluation.benchmarks); get it: {info.how_to_get if info else ''}"
        rows.append([title, name, path, why])
    return blocks + [
        text(
            "No results for these: put the data at the path shown (evaluation.data_root) or fix what "
            "the reason names, and rerun `openaim eval`."
        ),
        Table(["benchmark", "name", "expected at", "status"], rows, text_columns=4),
    ]


def accuracy_over_training(catalog: list[BenchmarkInfo], runs: list[RunData], images: Images) -> list[Block]:
    titles = {b.name: b.title for b in catalog}
    blocks: list[Block] = []
    for k, run in enumerate(runs):
        final = pretrained_checkpoint(run)
        ckpts = [c for c in run.checkpoints() if is_intermediate(c)] + ([final] if final else [])
        probe = (probes_present([run]) or ["attentive"])[0]
        lines = []
        for bench in run.benchmarks():
            pts = sorted(
                (s, v)
                for c in ckpts
                if (s := step_of(c, run)) is not None and (v := run.top1(c, bench, probe)) is not None
            )
            if len({s for s, _ in pts}) >= 2:
                lines.append((titles.get(bench, bench), [s for s, _ in pts], [v for _, v in pts]))
        if not lines:
            continue
        names = {titles.get(b, b): b for b in run.benchmarks()}
        baselines = {t: v for t, *_ in lines if (v := run.top1(RANDOM_INIT, names[t], probe)) is not None}
        png = charts.accuracy_vs_step(
            lines, baselines, f"{run.label}: {probe}-probe top-1 vs pretraining step"
        )
        if png is None:
            continue
        name = f"accuracy_vs_step_{k}.png"
        images[name] = png
        if not blocks:
            blocks.append(Heading("Accuracy over pretraining", anchor="over-training"))
        steps = sorted({s for _, ss, _ in lines for s in ss})
        rows = [[b] + [fmt(dict(zip(ss, vs, strict=True)).get(s)) for s in steps] for b, ss, vs in lines]
        blocks += [
            Figure(name, f"{run.label} probe accuracy vs step"),
            Table(
                ["benchmark"] + [f"step {s}" for s in steps],
                rows,
                caption=f"{run.label}: {probe}-probe top-1 (%) by checkpoint step",
            ),
        ]
    return blocks


def pretraining(runs: list[RunData], images: Images) -> list[Block]:
    blocks: list[Block] = [Heading("Pretraining", anchor="pretraining")]
    curves = [
        (run.label, [int(m["step"]) for m in run.metrics], [float(m["loss"]) for m in run.metrics])
        for run in runs
        if run.metrics
    ]
    png = charts.loss_curves(curves)
    if png is None:
        return blocks + [text("No training metrics (metrics.jsonl) yet: run `openaim train`.")]
    images["pretraining_loss.png"] = png
    blocks.append(Figure("pretraining_loss.png", "Pretraining loss curve"))
    rows = []
    for run in runs:
        if not run.metrics:
            continue
        last = run.metrics[-1]
        ips = [
            float(m["images_per_s"]) for m in run.metrics if isinstance(m.get("images_per_s"), (int, float))
        ]
        mfu = [float(m["mfu"]) for m in run.metrics if isinstance(m.get("mfu"), (int, float))]
        rows.append(
            [
                run.label,
                str(int(last["step"])),
                f"{float(last['loss']):.4f}",
                min((f"{float(m['loss']):.4f}" for m in run.metrics), key=float),
                f"{statistics.median(ips):,.0f}" if ips else "—",
                f"{100 * statistics.median(mfu):.1f}%" if mfu else "—",
            ]
        )
    blocks.append(
        Table(
            ["run", "last step", "last loss", "lowest loss", "median images/s", "median MFU"],
            rows,
            caption="Loss logged every log_every steps (mean over the window).",
        )
    )
    return blocks


def loss_at(run: RunData, step: int) -> float | None:
    """The logged pretraining loss at ``step`` (the mean over the log window ending there), or the last one
    logged before it."""
    before = [m for m in run.metrics if int(m["step"]) <= step]
    return float(before[-1]["loss"]) if before else None


def loss_vs_probe(runs: list[RunData], images: Images) -> list[Block]:
    """Mean probe top-1 against the pretraining loss across a run's checkpoints (the AIM paper's Figure 1
    relation, here across the checkpoints of one run rather than across model sizes)."""
    series, tables = [], []
    for run in runs:
        final = pretrained_checkpoint(run)
        ckpts = [c for c in run.checkpoints() if is_intermediate(c)] + ([final] if final else [])
        probe = (probes_present([run]) or ["attentive"])[0]
        steps = {c: step_of(c, run) for c in ckpts}
        ckpts = [c for c in ckpts if steps[c] is not None and loss_at(run, steps[c]) is not None]
        # the same benchmarks for every checkpoint, so the means compare
        common = [b for b in run.benchmarks() if all(run.top1(c, b, probe) is not None for c in ckpts)]
        if len(ckpts) < 2 or not common:
            continue
        pts = sorted(
            (steps[c], loss_at(run, steps[c]), sum(run.top1(c, b, probe) for b in common) / len(common))
            for c in ckpts
        )
        series.append((run.label, pts))
        r = _pearson([p[1] for p in pts], [p[2] for p in pts]) if len(pts) >= 3 else None
        tables.append((run, probe, common, pts, r))
    if not series:
        return []
    png = charts.loss_vs_top1(series, "Probe top-1 vs pretraining loss across checkpoints")
    blocks: list[Block] = [Heading("Pretraining loss vs probe accuracy", anchor="loss-vs-probe")]
    if png is not None:
        images["loss_vs_top1.png"] = png
        blocks.append(
            Figure(
                "loss_vs_top1.png",
                "Probe top-1 against pretraining loss",
                "Each point is a checkpoint (its step beside it); loss = the training loss logged "
                "at that step (mean over the log window), not a held-out loss.",
            )
        )
    for run, probe, common, pts, r in tables:
        corr = f"; Pearson correlation of loss and mean top-1: {r:+.2f}" if r is not None else ""
        blocks.append(
            Table(
                ["step", "pretraining loss", "mean top-1"],
                [[str(s), f"{loss:.4f}", fmt(top1)] for s, loss, top1 in pts],
                caption=f"{run.label}: {probe} probe, mean over {len(common)} benchmark(s){corr}.",
            )
        )
    return blocks


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else None


def curation(runs: list[RunData], images: Images, samples: CurationSamples | None = None) -> list[Block]:
    blocks: list[Block] = [Heading("Curation", anchor="curation")]
    funnels = [(run.label, funnel(run.manifest), parallel_filters(run.manifest)) for run in runs]
    png = charts.curation_funnel(funnels)
    if png is None:
        return blocks + [text("No curation manifest yet: run `openaim build-dataset`.")]
    images["curation_funnel.png"] = png
    blocks.append(
        Figure(
            "curation_funnel.png",
            "Curation funnel",
            "Dedup and safety are independent masks over the same scored pairs (hatched: what each "
            "keeps alone); the funnel continues with the pairs that pass both.",
        )
    )
    with_funnel = [(label, dict(chain), parallel) for label, chain, parallel in funnels if chain]
    stages = list(dict.fromkeys(s for _, chain, _ in funnels for s, _ in chain))
    rows = [
        [stage] + [f"{chain[stage]:,}" if stage in chain else "—" for _, chain, _ in with_funnel]
        for stage in stages
    ]
    for name in dict.fromkeys(n for _, _, parallel in with_funnel for n, _, _ in parallel):
        cells = []
        for _, _, parallel in with_funnel:
            hit = [(kept, seen) for n, kept, seen in parallel if n == name]
            cells.append(f"{hit[0][0]:,} of {hit[0][1]:,}" if hit else "—")
        rows.append([f"{name} alone (parallel filter)"] + cells)
    blocks.append(
        Table(
            ["pairs"] + [label for label, _, _ in with_funnel],
            rows,
            caption="Pairs left along the chain; the parallel filters each see the scored pairs.",
        )
    )
    facts = []
    for run in [run for run in runs if run.manifest]:
        m = run.manifest
        threshold = m.get("threshold")
        shown = f"{threshold:.4f}" if isinstance(threshold, (int, float)) else "—"
        facts.append(
            [
                (
                    f"{run.label}: keep fraction {m.get('fraction', '—')}, score threshold {shown}, "
                    f"kept {m.get('kept', '—')} pairs, config hash {str(m.get('config_hash', '—'))[:12]}"
                )
            ]
        )
        failures = m.get("download_failures") or m.get("failures")
        if isinstance(failures, dict) and failures:
            top = sorted(failures.items(), key=lambda kv: -_num(kv[1]))[:6]
            facts.append([f"{run.label}: download failures: " + ", ".join(f"{k} {v}" for k, v in top)])
        quality = m.get("quality")
        if isinstance(quality, dict) and quality:
            shown = {k: v for k, v in quality.items() if not isinstance(v, (dict, list))}
            facts.append(
                [
                    f"{run.label}: quality vs the mini web's truth: "
                    + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items())
                ]
            )
        if m.get("ran") is not None or m.get("reused") is not None:
            ran, reused = ", ".join(m.get("ran") or []) or "none", ", ".join(m.get("reused") or []) or "none"
            facts.append([f"{run.label}: steps ran: {ran}; reused: {reused}"])
    if facts:
        blocks.append(Bullets(facts))
    blocks += curation_samples(runs, samples, images)
    return blocks


def curation_samples(runs: list[RunData], samples: CurationSamples | None, images: Images) -> list[Block]:
    """This run's score histogram with the threshold (other runs' thresholds beside it) and example pairs."""
    if samples is None:
        return [
            text(
                f"{runs[0].label}: no scored pool on disk (curation/scores/parts/): no score "
                "histogram or example pairs."
            )
        ]
    blocks: list[Block] = []
    others = [
        (run.label, float(run.manifest["threshold"]))
        for run in runs[1:]
        if run.manifest and isinstance(run.manifest.get("threshold"), (int, float))
    ]
    png = charts.score_histogram(samples.scores, samples.kept_scores, samples.threshold, others)
    if png is not None:
        images["score_histogram.png"] = png
        blocks.append(
            Figure(
                "score_histogram.png",
                "Filter-network score histogram with the selection threshold",
                f"{runs[0].label}: "
                + ("every scored pair" if samples.stride == 1 else
                   f"every {samples.stride}th of the {samples.pool_size:,} scored pairs")
                + "; selected = at or above the threshold and kept by both dedup and safety.",
            )
        )
    png = charts.pair_examples(samples.examples)
    if png is not None:
        images["curation_examples.png"] = png
        blocks.append(
            Figure(
                "curation_examples.png",
                "Kept and dropped image-text pairs",
                f"{runs[0].label}: kept pairs (best, middle, near the threshold) and dropped ones "
                "(just below the threshold, the lowest, and dedup/safety drops), with score and reason.",
            )
        )
    return blocks


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def probe_details(runs: list[RunData]) -> list[Block]:
    rows = []
    for run in runs:
        for (ckpt, bench), rec in sorted(run.details.items()):
            probes = rec.get("probes") if isinstance(rec.get("probes"), dict) else {}
            chosen = "; ".join(
                f"{p} lr {v.get('lr', '—')} wd {v.get('weight_decay', '—')}"
                for p, v in sorted(probes.items())
                if isinstance(v, dict)
            )
            seconds = rec.get("seconds")
            blocks = rec.get("blocks")
            blocks = ",".join(map(str, blocks)) if isinstance(blocks, list) else str(blocks or "—")
            rows.append(
                [
                    run.label,
                    ckpt,
                    bench,
                    str(rec.get("checkpoint_hash", "—"))[:12],
                    blocks,
                    chosen or "—",
                    f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "—",
                ]
            )
    if not rows:
        return []
    return [
        Heading("Probe details", anchor="details"),
        Table(
            ["run", "checkpoint", "benchmark", "checkpoint hash", "blocks", "chosen settings", "seconds"],
            rows,
            caption="Per result: trunk blocks averaged (0-based), the probe settings chosen on val.",
            text_columns=6,
        ),
    ]


def runtime(runs: list[RunData]) -> list[Block]:
    """Wall time per stage (from `openaim run`'s pipeline.json; eval's own from its run_info.json) and the
    torch version and device eval ran on."""
    rows = []
    for run in runs:
        info = run.run_info or {}
        seconds = dict(run.stage_seconds)
        if "eval" not in seconds and isinstance(info.get("seconds"), (int, float)):
            seconds["eval"] = float(info["seconds"])
        if not seconds and not info:
            continue
        device = str(info.get("device", "—"))
        if info.get("device_name") and info.get("device_name") != device:
            device += f" ({info['device_name']})"
        if info.get("world_size", 1) and int(info.get("world_size", 1)) > 1:
            device += f" x {info['world_size']} ranks"
        rows.append(
            [run.label]
            + [_duration(seconds.get(stage)) for stage in STAGES]
            + [str(info.get("torch", "—")), device]
        )
    if not rows:
        return []
    return [
        Heading("Runtime", anchor="runtime"),
        Table(
            ["run"] + [f"{stage} wall time" for stage in STAGES] + ["torch", "eval device"],
            rows,
            caption="Stages not run by `openaim run` (or reused) show —; the report's own time is known "
            "only after it is written, so this run's shows on the next report.",
            text_columns=1,
        ),
    ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def provenance(training_cfg, training_dir: Path, runs: list[RunData], facts: dict[str, str]) -> list[Block]:
    items = [[f"{k}: {v}"] for k, v in facts.items()]
    for run in runs:
        items.append(
            [
                f"{run.label}: curation manifest sha256 {(run.manifest_hash or 'none')[:16]}"
                + (f", directory {run.root}" if run.root else "")
            ]
        )
    blocks: list[Block] = [
        Heading("Provenance", anchor="provenance"),
        Bullets(items),
        text("Training config of this run:"),
        Code(json.dumps(training_cfg.model_dump(mode="json"), indent=2)),
    ]
    saved = training_config_file(training_dir)
    if saved is not None:
        blocks += [
            text(f"Model config saved with the final checkpoint ({training_dir / 'final'}):"),
            Code(json.dumps(saved, indent=2, sort_keys=True)),
        ]
    return blocks


def training_config_file(training_dir: Path) -> dict | None:
    path = training_dir / "final" / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
