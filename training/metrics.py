"""Training metrics: metrics.jsonl (one flushed line per log step), MFU, loss.png.

MFU = achieved training FLOP/s / (peak FLOP/s of the devices). Training FLOPs per image come from
`training.model.flops.flops_per_image`; peaks are dense bf16 figures from vendor sheets. On CPU there is
no meaningful vendor peak, so MFU is reported as null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from shared.atomic import atomic_path, atomic_write_text

# Dense bf16 peak FLOP/s per device, matched by substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def peak_flops(device) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (CPU, unlisted GPU)."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def mfu(flops_per_image: float | None, images_per_s: float, peak_per_device: float | None,
        world_size: int) -> float | None:
    if not flops_per_image or not peak_per_device:
        return None
    return flops_per_image * images_per_s / (peak_per_device * world_size)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete lines of a metrics.jsonl (a line cut by a kill is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Appends one JSON line per log step to metrics.jsonl, flushed and fsynced, so a kill loses none.

    On resume from step k, lines after k (logged by the killed run past its last checkpoint) are
    dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def plot_loss(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> None:
    """loss (and lr) against step, written atomically."""
    rows = read_metrics(metrics_path)
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(6, 3.5), dpi=110)  # no pyplot: no GUI backend, no global figure state
    ax = fig.subplots()
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("next-patch loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate", color="tab:orange")
    ax.set_title("AIM pretraining")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
