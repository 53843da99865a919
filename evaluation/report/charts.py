"""The report's figures as PNG bytes (matplotlib's Agg canvas, no pyplot global state).

Each function returns None when there is nothing to draw, so the caller can say so instead.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

# Colour-blind-safe palette (Okabe-Ito), in the order checkpoints/runs are listed.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 10,
          "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    return buf.getvalue()


def _styled(fn):
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@_styled
def top1_bars(benchmarks: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
              title: str = "Top-1 accuracy per benchmark (attentive probe)") -> bytes | None:
    """Horizontal grouped bars: one group per benchmark, one bar per checkpoint (values in percent)."""
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
        bars = ax.barh(ys, xs, height=bar * 0.92, color=PALETTE[k % len(PALETTE)], label=label)
        for rect, v in zip(bars, values):
            if v is not None:
                ax.text(rect.get_width() + 0.8, rect.get_y() + rect.get_height() / 2, f"{v:.1f}",
                        va="center", ha="left", fontsize=8.5, color="#333333")
    ax.set_yticks(range(len(benchmarks)), labels=list(benchmarks))
    ax.invert_yaxis()  # first benchmark on top, as in the table
    ax.set_xlim(0, 108)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title(title, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", frameon=True, framealpha=0.9) if n_series > 1 else None
    return _png(fig)


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
        ax.plot(steps, _smooth(list(losses), window), color=color, linewidth=2,
                label=label + (f" (moving average of {window})" if window > 1 else ""),
                marker="o" if len(steps) < 12 else None, markersize=4)
    if log_x:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 10, 20, 50, 100...: readable steps
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pretraining step" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("next-patch loss (normalised pixels, MSE)")
    ax.set_title("Pretraining loss", loc="left")
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    return _png(fig)


@_styled
def accuracy_vs_step(lines: Sequence[tuple[str, Sequence[int], Sequence[float]]],
                     baselines: dict[str, float], title: str) -> bytes | None:
    """Probe top-1 vs pretraining step, one line per benchmark; dotted line = that benchmark's random-init."""
    lines = [(label, s, v) for label, s, v in lines if len(s) >= 2]
    if not lines:
        return None
    fig = _figure(8.0, 4.4)
    ax = fig.add_subplot()
    for k, (label, steps, values) in enumerate(lines):
        color = PALETTE[k % len(PALETTE)]
        ax.plot(steps, values, color=color, marker="o", linewidth=2, label=label)
        if label in baselines:
            ax.axhline(baselines[label], color=color, linestyle=":", linewidth=1.2)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if baselines:
        ax.text(0.0, -0.2, "dotted: the same probe on a randomly initialised trunk", transform=ax.transAxes,
                fontsize=9, color="#555555")
    return _png(fig)


@_styled
def curation_funnel(funnels: Sequence[tuple[str, Sequence[tuple[str, int]]]]) -> bytes | None:
    """Horizontal bars: items left after each curation step, one bar per run in each step."""
    funnels = [(label, steps) for label, steps in funnels if steps]
    if not funnels:
        return None
    stages: list[str] = []
    for _, steps in funnels:
        stages += [s for s, _ in steps if s not in stages]
    n_runs = len(funnels)
    bar = 0.8 / n_runs
    fig = _figure(8.5, max(2.4, 0.6 + len(stages) * (0.3 + 0.25 * n_runs)))
    ax = fig.add_subplot()
    largest = max(n for _, steps in funnels for _, n in steps) or 1
    for k, (label, steps) in enumerate(funnels):
        counts = dict(steps)
        ys = [i - 0.4 + bar * (k + 0.5) for i in range(len(stages))]
        xs = [counts.get(s, 0) for s in stages]
        rects = ax.barh(ys, xs, height=bar * 0.92, color=PALETTE[k % len(PALETTE)], label=label)
        first = steps[0][1] or 1
        for rect, stage in zip(rects, stages):
            if stage in counts:
                ax.text(rect.get_width() + largest * 0.01, rect.get_y() + rect.get_height() / 2,
                        f"{counts[stage]:,} ({100 * counts[stage] / first:.1f}%)", va="center", fontsize=8.5)
    ax.set_yticks(range(len(stages)), labels=stages)
    ax.invert_yaxis()
    ax.set_xlim(0, largest * 1.25)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("image-text pairs")
    ax.set_title("Curation funnel: pairs left after each step", loc="left")
    ax.grid(axis="x", alpha=0.3)
    if n_runs > 1:
        ax.legend(loc="lower right", frameon=True, framealpha=0.9)
    return _png(fig)
