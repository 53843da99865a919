"""The report's closing sections: probe details, runtime per stage, and provenance."""

from __future__ import annotations

import json
from pathlib import Path

from openaim.report.document import Block, Bullets, Code, Heading, Table, text
from openaim.report.run_data import STAGES, RunData
from shared.config.training import TrainingConfig


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


def provenance(training_cfg: TrainingConfig, training_dir: Path, runs: list[RunData],
               facts: dict[str, str]) -> list[Block]:
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
