"""The report's charts laid out by matplotlib's own renderer: no legend covers data."""

import io

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle
from PIL import Image

from openaim.report.charts import top1_bars, top1_figure

BENCHMARKS = ["miniweb-shape", "miniweb-color", "miniweb-count", "miniweb-texture", "digits"]


@pytest.mark.parametrize("series", [
    # the demo report's case: the last benchmark's bars are the longest, where a lower-right legend sat
    [("demo", [41.0, 63.5, 38.0, 55.0, 96.4]), ("demo-step_100", [35.0, 60.0, 33.0, 50.0, 93.1]),
     ("random-init", [30.0, 52.0, 31.0, 44.0, 88.7])],
    # every bar full length, long run names, a missing value
    [(f"/very/long/run/directory/name/number/{k}/final", [100.0, 99.0, None, 100.0, 98.0]) for k in range(4)],
])
def test_top1_legend_covers_no_bar_and_no_value_label(series):
    fig = top1_figure(BENCHMARKS, series)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == len(series)
    box = legend.get_window_extent(renderer)
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]
    labels = [t for t in ax.texts if t.get_text()]
    assert len(bars) == sum(v is not None and v > 0 for _, vals in series for v in vals)
    assert len(labels) == sum(v is not None for _, vals in series for v in vals)
    for artist in bars + labels:
        extent = artist.get_window_extent(renderer)
        assert not box.overlaps(extent), f"the legend covers {artist}"
    # outside the axes altogether, and inside the figure (not cut off)
    assert not box.overlaps(ax.get_window_extent(renderer))
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)


def test_top1_png_is_drawn_and_one_series_has_no_legend():
    png = top1_bars(BENCHMARKS, [("demo", [41.0, 63.5, 38.0, 55.0, 96.4]), ("random", [1, 2, 3, 4, 5])])
    assert Image.open(io.BytesIO(png)).size[0] > 500
    assert top1_figure(BENCHMARKS, [("demo", [41.0, 63.5, 38.0, 55.0, 96.4])]).axes[0].get_legend() is None
    assert top1_bars(BENCHMARKS, [("demo", [None] * 5)]) is None
