"""The report's benchmark sections: accuracy per benchmark (table and chart), the benchmarks not run,
and accuracy over training."""

from __future__ import annotations

from evaluation.results import RANDOM_INIT
from openaim.report import charts
from openaim.report.document import Block, Figure, Heading, Images, Link, Paragraph, Table, text
from openaim.report.references import AIM_IMAGENET_ATTENTIVE, ML_AIM_README, PAPER
from openaim.report.run_data import BenchmarkInfo, RunData, is_intermediate, step_of
from openaim.report.tables import (
    benchmark_table,
    fmt,
    pretrained_checkpoint,
    probes_present,
    table_benchmarks,
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
