"""The report's pretraining sections: the loss curves and how the pretraining loss tracks probe accuracy."""

from __future__ import annotations

import statistics

from openaim.report import charts
from openaim.report.document import Block, Figure, Heading, Images, Table, text
from openaim.report.run_data import RunData, is_intermediate, step_of
from openaim.report.tables import fmt, pretrained_checkpoint, probes_present


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
