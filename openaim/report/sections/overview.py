"""The report's opening: the summary, the runs compared, and the config keys that differ between them."""

from __future__ import annotations

import json
from pathlib import Path

from openaim.report.document import Block, Bullets, Heading, Paragraph, Table, text
from openaim.report.run_data import RunData
from openaim.report.tables import fmt, pretrained_checkpoint, pretrained_vs_random, probes_present


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
    """History runs (openaim.pipeline) say why they were archived in run.json."""
    try:
        reasons = json.loads((root / "run.json").read_text()).get("archived_because") if root else None
    except (OSError, ValueError, AttributeError):
        return ""
    return (
        ("archived: " + "; ".join(map(str, reasons)))[:120] if isinstance(reasons, list) and reasons else ""
    )
