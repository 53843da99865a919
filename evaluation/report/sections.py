"""The report's sections, as document blocks plus the PNGs they show."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from evaluation.report import charts
from evaluation.report.collect import RANDOM_INIT, BenchmarkInfo, RunData, funnel, is_intermediate, step_of
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
        verb = "beats" if gap.points >= 0 else "trails"
        line = (f"Pretrained ({gap.checkpoint}) {verb} random by {abs(gap.points):.1f}{_pm(gap)} points average "
                f"top-1 ({gap.probe} probe, {gap.benchmarks} benchmark(s)).")
        blocks.append(Paragraph([line], emphasis=True))
        if gap.stderr is not None:
            within = abs(gap.points) < 2 * gap.stderr
            blocks.append(text(
                f"± is one standard error from the test-set sizes (each top-1 a binomial proportion); the gap is "
                f"{'within' if within else 'outside'} two standard errors of zero."))
        if target_gap_points is not None:
            met = gap.points >= target_gap_points
            blocks.append(text(f"Target: pretrained ahead of random by at least {target_gap_points:g} points: "
                               f"{'met' if met else 'NOT met'} ({gap.points:+.1f})."))
    elif this.rows:
        blocks.append(text("No random-init checkpoint was evaluated, so there is no pretrained-vs-random gap."))
    for run in runs[1:]:
        if (g := pretrained_vs_random(run)) is not None:
            blocks.append(text(f"{run.label}: pretrained ({g.checkpoint}) vs random: {g.points:+.1f}{_pm(g)} points "
                               f"({g.probe} probe, {g.benchmarks} benchmark(s))."))
    if len(runs) > 1:
        blocks.append(runs_compared(runs))
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
        rows.append([run.label, "this run" if k == 0 else (why or "compared run"), str(run.root or "—"),
                     ckpt or "—", fmt(sum(scores) / len(scores)) if scores else "—", str(len(scores)),
                     f"{gap.points:+.1f}{_pm(gap)}" if gap else "—",
                     f"{run.manifest.get('kept', '—')}" if run.manifest else "—",
                     f"{float(run.metrics[-1]['loss']):.4f}" if run.metrics else "—"])
    return Table(["run", "role", "directory", "checkpoint", "mean top-1", "benchmarks", "vs random",
                  "curated pairs", "last loss"], rows, caption="Runs shown side by side in this report.",
                 text_columns=4)


def _archived_because(root: Path | None) -> str:
    """History runs (shared.pipeline) say why they were archived in run.json."""
    try:
        reasons = json.loads((root / "run.json").read_text()).get("archived_because") if root else None
    except (OSError, ValueError, AttributeError):
        return ""
    return ("archived: " + "; ".join(map(str, reasons)))[:120] if isinstance(reasons, list) and reasons else ""


def benchmarks(catalog: list[BenchmarkInfo], runs: list[RunData], images: Images) -> list[Block]:
    blocks: list[Block] = [Heading("Benchmarks", anchor="benchmarks"),
                           text("Attentive and linear probes trained on frozen trunk features; each probe's "
                                "learning rate and weight decay chosen on a validation split carved from train.")]
    blocks.append(benchmark_table(catalog, runs))
    blocks.append(Heading("Published references (not our runs)", level=3))
    blocks.append(Table(
        ["benchmark", "model", "probe", "top-1 last 6 blocks", "top-1 best 6 blocks", "source"],
        [["ImageNet-1k", f"published {r.model} ({r.params})", r.probe, f"{r.top1_last6:.1f}", f"{r.top1_best6:.1f}",
          "ml-aim README"] for r in AIM_IMAGENET_ATTENTIVE],
        caption="Published AIM results: frozen trunk, attentive probe, ImageNet-1k top-1 (%).", text_columns=3))
    blocks.append(Paragraph(["Sources: ", Link("apple/ml-aim README", ML_AIM_README), ", ",
                             Link("AIM paper (arXiv 2401.08541)", PAPER), "."]))
    bars = _bar_chart(catalog, runs)
    if bars is not None:
        images["top1_per_benchmark.png"] = bars
        blocks.append(Figure("top1_per_benchmark.png", "Top-1 per benchmark and checkpoint",
                             "Top-1 per benchmark, one bar per checkpoint."))
    blocks += missing_benchmarks(catalog, runs)
    return blocks


def _bar_chart(catalog: list[BenchmarkInfo], runs: list[RunData]) -> bytes | None:
    probes = probes_present(runs)
    if not probes:
        return None
    probe = probes[0]
    benches = [b for b in table_benchmarks(catalog, runs) if any(b.name in r.benchmarks() for r in runs)]
    several = len(runs) > 1
    series = [(f"{run.label}: {ckpt}" if several else ckpt, [run.top1(ckpt, b.name, probe) for b in benches])
              for run in runs for ckpt in run.main_checkpoints()]
    return charts.top1_bars([b.title for b in benches], series,
                            title=f"Top-1 accuracy per benchmark ({probe} probe)")


def missing_benchmarks(catalog: list[BenchmarkInfo], runs: list[RunData]) -> list[Block]:
    evaluated = {b for run in runs for b in run.benchmarks()}
    listed = {m["benchmark"]: m for run in runs for m in run.missing}
    by_name = {b.name: b for b in catalog}
    names = [b.name for b in catalog if b.kind == "paper" and b.name not in evaluated]
    names += [n for n in listed if n not in names and n not in evaluated]
    blocks: list[Block] = [Heading("Missing benchmarks", level=3, anchor="missing")]
    if not names:
        return blocks + [text("Every paper benchmark has results.")]
    rows = []
    for name in names:
        info, entry = by_name.get(name), listed.get(name, {})
        rows.append([str(entry.get("title") or (info.title if info else name)), name,
                     str(entry.get("path") or (info.path if info else "")),
                     str(entry.get("how_to_get") or (info.how_to_get if info else ""))])
    return blocks + [text("Not evaluated: put the data at the path shown (cfg.evaluation.data_root) and rerun "
                          "`openaim eval`."), Table(["benchmark", "name", "expected at", "how to get it"], rows,
                                                          text_columns=4)]


def accuracy_over_training(catalog: list[BenchmarkInfo], runs: list[RunData], images: Images) -> list[Block]:
    titles = {b.name: b.title for b in catalog}
    blocks: list[Block] = []
    for k, run in enumerate(runs):
        final = pretrained_checkpoint(run)
        ckpts = [c for c in run.checkpoints() if is_intermediate(c)] + ([final] if final else [])
        probe = (probes_present([run]) or ["attentive"])[0]
        lines = []
        for bench in run.benchmarks():
            pts = sorted((s, v) for c in ckpts if (s := step_of(c, run)) is not None
                         and (v := run.top1(c, bench, probe)) is not None)
            if len({s for s, _ in pts}) >= 2:
                lines.append((titles.get(bench, bench), [s for s, _ in pts], [v for _, v in pts]))
        if not lines:
            continue
        names = {titles.get(b, b): b for b in run.benchmarks()}
        baselines = {t: v for t, *_ in lines if (v := run.top1(RANDOM_INIT, names[t], probe)) is not None}
        png = charts.accuracy_vs_step(lines, baselines, f"{run.label}: {probe}-probe top-1 vs pretraining step")
        if png is None:
            continue
        name = f"accuracy_vs_step_{k}.png"
        images[name] = png
        if not blocks:
            blocks.append(Heading("Accuracy over pretraining", anchor="over-training"))
        steps = sorted({s for _, ss, _ in lines for s in ss})
        rows = [[b] + [fmt(dict(zip(ss, vs)).get(s)) for s in steps] for b, ss, vs in lines]
        blocks += [Figure(name, f"{run.label} probe accuracy vs step"),
                   Table(["benchmark"] + [f"step {s}" for s in steps], rows,
                         caption=f"{run.label}: {probe}-probe top-1 (%) by checkpoint step")]
    return blocks


def pretraining(runs: list[RunData], images: Images) -> list[Block]:
    blocks: list[Block] = [Heading("Pretraining", anchor="pretraining")]
    curves = [(run.label, [int(m["step"]) for m in run.metrics], [float(m["loss"]) for m in run.metrics])
              for run in runs if run.metrics]
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
        ips = [float(m["images_per_s"]) for m in run.metrics if isinstance(m.get("images_per_s"), (int, float))]
        mfu = [float(m["mfu"]) for m in run.metrics if isinstance(m.get("mfu"), (int, float))]
        rows.append([run.label, str(int(last["step"])), f"{float(last['loss']):.4f}",
                     min((f"{float(m['loss']):.4f}" for m in run.metrics), key=float),
                     f"{statistics.median(ips):,.0f}" if ips else "—",
                     f"{100 * statistics.median(mfu):.1f}%" if mfu else "—"])
    blocks.append(Table(["run", "last step", "last loss", "lowest loss", "median images/s", "median MFU"], rows,
                        caption="Loss logged every log_every steps (mean over the window)."))
    return blocks


def curation(runs: list[RunData], images: Images) -> list[Block]:
    blocks: list[Block] = [Heading("Curation", anchor="curation")]
    funnels = [(run.label, funnel(run.manifest)) for run in runs]
    png = charts.curation_funnel(funnels)
    if png is None:
        return blocks + [text("No curation manifest yet: run `openaim build-dataset`.")]
    images["curation_funnel.png"] = png
    blocks.append(Figure("curation_funnel.png", "Curation funnel"))
    with_manifest = [run for run in runs if run.manifest]
    stages = list(dict.fromkeys(s for _, f in funnels for s, _ in f))
    rows = [[stage] + [f"{dict(f).get(stage, 0):,}" if stage in dict(f) else "—" for _, f in funnels
                       if f] for stage in stages]
    blocks.append(Table(["pairs"] + [label for label, f in funnels if f], rows))
    facts = []
    for run in with_manifest:
        m = run.manifest
        threshold = m.get("threshold")
        shown = f"{threshold:.4f}" if isinstance(threshold, (int, float)) else "—"
        facts.append([(f"{run.label}: keep fraction {m.get('fraction', '—')}, score threshold {shown}, "
                       f"kept {m.get('kept', '—')} pairs, config hash {str(m.get('config_hash', '—'))[:12]}")])
        failures = m.get("download_failures") or m.get("failures")
        if isinstance(failures, dict) and failures:
            top = sorted(failures.items(), key=lambda kv: -_num(kv[1]))[:6]
            facts.append([f"{run.label}: download failures: " + ", ".join(f"{k} {v}" for k, v in top)])
        quality = m.get("quality")
        if isinstance(quality, dict) and quality:
            shown = {k: v for k, v in quality.items() if not isinstance(v, (dict, list))}
            facts.append([f"{run.label}: quality vs the mini web's truth: "
                          + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items())])
        if m.get("ran") is not None or m.get("reused") is not None:
            ran, reused = ", ".join(m.get("ran") or []) or "none", ", ".join(m.get("reused") or []) or "none"
            facts.append([f"{run.label}: steps ran: {ran}; reused: {reused}"])
    if facts:
        blocks.append(Bullets(facts))
    return blocks


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def probe_details(runs: list[RunData]) -> list[Block]:
    rows = []
    for run in runs:
        for (ckpt, bench), rec in sorted(run.details.items()):
            probes = rec.get("probes") if isinstance(rec.get("probes"), dict) else {}
            chosen = "; ".join(f"{p} lr {v.get('lr', '—')} wd {v.get('weight_decay', '—')}"
                               for p, v in sorted(probes.items()) if isinstance(v, dict))
            seconds = rec.get("seconds")
            blocks = rec.get("blocks")
            blocks = ",".join(map(str, blocks)) if isinstance(blocks, list) else str(blocks or "—")
            rows.append([run.label, ckpt, bench, str(rec.get("checkpoint_hash", "—"))[:12], blocks, chosen or "—",
                         f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "—"])
    if not rows:
        return []
    return [Heading("Probe details", anchor="details"),
            Table(["run", "checkpoint", "benchmark", "checkpoint hash", "blocks", "chosen settings", "seconds"],
                  rows, caption="Per result: trunk blocks averaged (0-based), the probe settings chosen on val.",
                  text_columns=6)]


def provenance(cfg, runs: list[RunData], facts: dict[str, str]) -> list[Block]:
    items = [[f"{k}: {v}"] for k, v in facts.items()]
    for run in runs:
        items.append([f"{run.label}: curation manifest sha256 {(run.manifest_hash or 'none')[:16]}"
                      + (f", directory {run.root}" if run.root else "")])
    blocks: list[Block] = [Heading("Provenance", anchor="provenance"), Bullets(items),
                           text("Training config of this run:"),
                           Code(json.dumps(cfg.training.model_dump(mode="json"), indent=2))]
    saved = training_config_file(cfg.training_dir)
    if saved is not None:
        blocks += [text(f"Model config saved with the final checkpoint ({cfg.training_dir / 'final'}):"),
                   Code(json.dumps(saved, indent=2, sort_keys=True))]
    return blocks


def training_config_file(training_dir: Path) -> dict | None:
    path = training_dir / "final" / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
