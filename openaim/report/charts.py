"""The report's figures as PNG bytes (matplotlib's Agg canvas, no pyplot global state).

Each function returns None when there is nothing to draw, so the caller can say so instead.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from PIL import Image

# Colour-blind-safe palette (Okabe-Ito), in the order checkpoints/runs are listed.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_STYLE = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _fit(label: str, width: int = 36) -> str:
    """A legend or title label cut to ``width`` characters in the middle (run directories can be long)."""
    return label if len(label) <= width else label[: width // 2 - 1] + "…" + label[-(width - width // 2) :]


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig


def _png(fig) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    return buf.getvalue()


def _styled(fn):
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@_styled
def top1_bars(
    benchmarks: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    title: str = "Top-1 accuracy per benchmark (attentive probe)",
) -> bytes | None:
    """Horizontal grouped bars: one group per benchmark, one bar per checkpoint (values in percent)."""
    fig = top1_figure(benchmarks, series, title)
    return None if fig is None else _png(fig)


@_styled
def top1_figure(
    benchmarks: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    title: str = "Top-1 accuracy per benchmark (attentive probe)",
) -> Figure | None:
    """The figure of `top1_bars`. Its legend sits outside the axes, right of them: inside, wherever it
    went, some run's bars (they reach any length up to 100%) would run under it."""
    if not benchmarks or not series or all(v is None for _, vals in series for v in vals):
        return None
    n_series = len(series)
    group = 0.8
    bar = group / n_series
    height = min(24.0, max(2.6, 0.8 + len(benchmarks) * (0.28 + 0.18 * n_series)))
    fig = _figure(9.0, height)
    ax = fig.add_subplot()
    for k, (label, values) in enumerate(series):
        ys = [i - group / 2 + bar * (k + 0.5) for i in range(len(benchmarks))]
        xs = [v if v is not None else 0.0 for v in values]
        bars = ax.barh(ys, xs, height=bar * 0.92, color=PALETTE[k % len(PALETTE)], label=_fit(label))
        for rect, v in zip(bars, values, strict=True):
            if v is not None:
                ax.text(
                    rect.get_width() + 0.8,
                    rect.get_y() + rect.get_height() / 2,
                    f"{v:.1f}",
                    va="center",
                    ha="left",
                    fontsize=8.5,
                    color="#333333",
                )
    ax.set_yticks(range(len(benchmarks)), labels=list(benchmarks))
    ax.invert_yaxis()  # first benchmark on top, as in the table
    ax.set_xlim(0, 108)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title(_fit(title, 70), loc="left")
    ax.grid(axis="x", alpha=0.3)
    if n_series > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: the trend without a long lag at the start."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


@_styled
def loss_curves(curves: Sequence[tuple[str, Sequence[int], Sequence[float]]]) -> bytes | None:
    """Pretraining loss vs step, one line per run: raw values faint, a moving average on top; log-scale x."""
    curves = [(label, s, v) for label, s, v in curves if len(s) > 0]
    if not curves:
        return None
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    log_x = all(min(s) > 0 for _, s, _ in curves) and max(max(s) / min(s) for _, s, _ in curves) >= 10
    for k, (label, steps, losses) in enumerate(curves):
        color = PALETTE[k % len(PALETTE)]
        window = max(1, len(losses) // 20)
        if window > 1:
            ax.plot(steps, losses, color=color, alpha=0.25, linewidth=1)
        ax.plot(
            steps,
            _smooth(list(losses), window),
            color=color,
            linewidth=2,
            label=_fit(label) + (f" (moving average of {window})" if window > 1 else ""),
            marker="o" if len(steps) < 12 else None,
            markersize=4,
        )
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(
            LogLocator(base=10, subs=(1.0, 2.0, 5.0))
        )  # 10, 20, 50, 100...: readable steps
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pretraining step" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("next-patch loss (normalised pixels, MSE)")
    ax.set_title("Pretraining loss", loc="left")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    return _png(fig)


@_styled
def accuracy_vs_step(
    lines: Sequence[tuple[str, Sequence[int], Sequence[float]]], baselines: dict[str, float], title: str
) -> bytes | None:
    """Probe top-1 vs pretraining step, one line per benchmark; dotted line = that benchmark's random-init."""
    lines = [(label, s, v) for label, s, v in lines if len(s) >= 2]
    if not lines:
        return None
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    for k, (label, steps, values) in enumerate(lines):
        color = PALETTE[k % len(PALETTE)]
        ax.plot(steps, values, color=color, marker="o", linewidth=2, label=_fit(label))
        if label in baselines:
            ax.axhline(baselines[label], color=color, linestyle=":", linewidth=1.2)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(_fit(title, 70), loc="left")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if baselines:
        ax.text(
            0.0,
            -0.2,
            "dotted: the same probe on a randomly initialised trunk",
            transform=ax.transAxes,
            fontsize=9,
            color="#555555",
        )
    return _png(fig)


@_styled
def curation_funnel(
    funnels: Sequence[tuple[str, Sequence[tuple[str, int]], Sequence[tuple[str, int, int]]]],
) -> bytes | None:
    """Horizontal bars, one per run in each row: the chain of pairs left (each a subset of the row above),
    and, hatched beside it, the filters applied side by side to the scored pairs (dedup, safety: each
    keeps its own share of the same pairs; the chain goes on with the pairs that pass both)."""
    funnels = [(label, chain, parallel) for label, chain, parallel in funnels if chain]
    if not funnels:
        return None
    rows: list[str] = []
    for _, chain, parallel in funnels:
        labels = [s for s, _ in chain]
        at = labels.index("scored") + 1 if "scored" in labels else len(labels)
        names = labels[:at] + [f"  {name} alone (parallel filter)" for name, _, _ in parallel] + labels[at:]
        rows += [r for r in names if r not in rows]
    n_runs = len(funnels)
    bar = 0.8 / n_runs
    fig = _figure(8.5, max(2.4, 0.6 + len(rows) * (0.3 + 0.25 * n_runs)))
    ax = fig.add_subplot()
    largest = max(n for _, chain, _ in funnels for _, n in chain) or 1
    for k, (label, chain, parallel) in enumerate(funnels):
        counts = dict(chain) | {f"  {name} alone (parallel filter)": kept for name, kept, _ in parallel}
        ys = [i - 0.4 + bar * (k + 0.5) for i in range(len(rows))]
        xs = [counts.get(r, 0) for r in rows]
        hatches = ["//" if "parallel" in r else "" for r in rows]
        rects = ax.barh(
            ys,
            xs,
            height=bar * 0.92,
            color=PALETTE[k % len(PALETTE)],
            label=_fit(label),
            hatch=hatches,
            edgecolor="white",
        )
        first = chain[0][1] or 1
        for rect, row in zip(rects, rows, strict=True):
            if row in counts:
                ax.text(
                    rect.get_width() + largest * 0.01,
                    rect.get_y() + rect.get_height() / 2,
                    f"{counts[row]:,} ({100 * counts[row] / first:.1f}%)",
                    va="center",
                    fontsize=8.5,
                )
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.invert_yaxis()
    ax.set_xlim(0, largest * 1.25)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("image-text pairs")
    ax.set_title("Curation funnel: pairs left after each step", loc="left")
    ax.grid(axis="x", alpha=0.3)
    if n_runs > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


@_styled
def score_histogram(
    scores: Sequence[float],
    kept: Sequence[float],
    threshold: float | None,
    other_thresholds: Sequence[tuple[str, float]] = (),
) -> bytes | None:
    """Filter-network scores of every scored pair, the selected ones on top, and the selection threshold
    (dashed; other runs' thresholds dotted)."""
    if len(scores) < 2:
        return None
    fig = _figure(8.0, 3.8)
    ax = fig.add_subplot()
    bins = min(60, max(10, len(scores) // 20))
    _, edges, _ = ax.hist(scores, bins=bins, color="#BBBBBB", label=f"scored ({len(scores):,})")
    if kept:
        ax.hist(kept, bins=edges, color=PALETTE[0], label=f"selected ({len(kept):,})")
    if threshold is not None:
        ax.axvline(
            threshold, color="#D55E00", linestyle="--", linewidth=2, label=f"threshold {threshold:.4f}"
        )
    for k, (label, value) in enumerate(other_thresholds):
        ax.axvline(
            value,
            color=PALETTE[(k + 1) % len(PALETTE)],
            linestyle=":",
            linewidth=1.5,
            label=f"{_fit(label)}: threshold {value:.4f}",
        )
    ax.set_xlabel("filter-network score (image-text cosine similarity)")
    ax.set_ylabel("pairs")
    ax.set_title("Score distribution and the selection threshold", loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    return _png(fig)


@_styled
def pair_examples(examples: Sequence[dict], columns: int = 4) -> bytes | None:
    """A grid of pairs: the image, then kept/dropped, the score, the reason and the caption (wrapped)."""
    if not examples:
        return None
    rows = -(-len(examples) // columns)
    fig = _figure(2.6 * columns, 3.5 * rows)
    for i, ex in enumerate(examples):
        ax = fig.add_subplot(rows, columns, i + 1)
        try:
            with Image.open(io.BytesIO(ex["image"])) as im:
                ax.imshow(im.convert("RGB"))
        except OSError:
            ax.text(0.5, 0.5, "unreadable image", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        colour = "#009E73" if ex["kept"] else "#D55E00"
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(colour)
            spine.set_linewidth(3)
        status = "KEPT" if ex["kept"] else "DROPPED"
        ax.set_title(f"{status} · score {ex['score']:.3f}", color=colour, fontsize=10, loc="left")
        reason = "" if ex["kept"] else textwrap.shorten(ex["reason"], 40, placeholder="…")
        caption = textwrap.shorten(str(ex["caption"]) or "(no caption)", 80, placeholder="…")
        ax.set_xlabel("\n".join(filter(None, [reason, *textwrap.wrap(f"“{caption}”", 30)[:3]])), fontsize=8.5)
    return _png(fig)


@_styled
def loss_vs_top1(
    series: Sequence[tuple[str, Sequence[tuple[int, float, float]]]], title: str
) -> bytes | None:
    """Mean probe top-1 against the pretraining loss at each checkpoint, one line per run; points are
    labelled with their step. Lower loss to the right, as in the AIM paper's Figure 1."""
    series = [(label, pts) for label, pts in series if len(pts) >= 2]
    if not series:
        return None
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    for k, (label, pts) in enumerate(series):
        pts = sorted(pts)
        color = PALETTE[k % len(PALETTE)]
        ax.plot(
            [p[1] for p in pts], [p[2] for p in pts], color=color, marker="o", linewidth=2, label=_fit(label)
        )
        for step, loss, top1 in pts:
            ax.annotate(
                f"{step}",
                (loss, top1),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
                color="#555555",
            )
    ax.invert_xaxis()
    ax.set_xlabel("pretraining loss at the checkpoint (lower is right)")
    ax.set_ylabel("mean top-1 accuracy (%)")
    ax.set_title(_fit(title, 70), loc="left")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _png(fig)
