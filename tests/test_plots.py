"""edgekd.plots: what a reader sees in the diagrams (bar heights and positions, curve
points, the ECE label, the histogram) and that the PNGs written are real and complete.

The figures are read back as drawn: a spy on plots._png (the one place every plot
hands its finished Figure to) keeps each Figure and then lets the real renderer run.
"""

import math

import numpy as np
import pytest
from PIL import Image

from edgekd import calibration as cal
from edgekd import plots
from edgekd.errors import EdgeKDError


def _bins(seed, n=500, scale=2.5):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, 10)) * 2
    y = np.array([rng.choice(10, p=p) for p in cal.softmax(true)])
    return cal.reliability_bins(true * scale, y)


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()  # checks the whole file, not just the header
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _no_temp_files(folder):
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def drawn(monkeypatch):
    """The Figures the plot functions finished, in call order (the real PNG renderer still runs)."""
    figures = []
    real_png = plots._png

    def spy(fig):
        figures.append(fig)
        return real_png(fig)

    monkeypatch.setattr(plots, "_png", spy)
    return figures


def _bars(ax, label=None):
    """(x centre, bottom, height) of each bar of the bar series called `label` (the only one if None)."""
    series = [c for c in ax.containers if label is None or c.get_label() == label]
    assert len(series) == 1, [c.get_label() for c in ax.containers]
    return [(r.get_x() + r.get_width() / 2, r.get_y(), r.get_height()) for r in series[0]]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Three samples, 15 bins of width 1/15, all labelled class 0, worked out by hand:
#   [50, 0]   -> confidence 1.0 (float64), right; folded into the last bin (14)
#   [0.3, 0]  -> confidence sigmoid(0.3) = 0.5744, right; bin 8 = [8/15, 9/15)
#   [0, 0.1]  -> confidence sigmoid(0.1) = 0.5250, predicts class 1, wrong; bin 7 = [7/15, 8/15)
TINY_LOGITS = np.array([[50.0, 0.0], [0.3, 0.0], [0.0, 0.1]])
TINY_CONF = {7: _sigmoid(0.1), 8: _sigmoid(0.3), 14: 1.0}
TINY_ACC = {7: 0.0, 8: 1.0, 14: 1.0}
# ECE keeps the 1.0 confidence in a bin of its own (gap 0): (|0 - .5250| + |1 - .5744|) / 3.
TINY_ECE = (_sigmoid(0.1) + (1 - _sigmoid(0.3))) / 3


def _center(b, n_bins=15):
    return (b + 0.5) / n_bins


def test_reliability_diagram_draws_one_bar_per_non_empty_bin(tmp_path, drawn):
    bins = cal.reliability_bins(TINY_LOGITS, np.array([0, 0, 0]))
    out = tmp_path / "rel.png"
    out.write_bytes(b"old")  # overwritten
    plots.reliability_diagram(bins, out, title="tiny")
    (fig,) = drawn
    top, bottom = fig.axes
    # Accuracy bars only where there are samples: no fake bar at 0 for the 12 empty bins.
    acc = _bars(top, "accuracy")
    assert [x for x, _, _ in acc] == pytest.approx([_center(b) for b in TINY_ACC])
    assert [(y0, h) for _, y0, h in acc] == [(0.0, TINY_ACC[b]) for b in TINY_ACC]
    # The shaded gap runs from the accuracy to the mean confidence (negative = under-confident).
    gap = _bars(top, "gap to confidence")
    assert [x for x, _, _ in gap] == pytest.approx([_center(b) for b in TINY_CONF])
    assert [y0 for _, y0, _ in gap] == [TINY_ACC[b] for b in TINY_CONF]
    assert [h for _, _, h in gap] == pytest.approx([TINY_CONF[b] - TINY_ACC[b] for b in TINY_CONF], abs=1e-9)
    assert [t.get_text() for t in top.texts] == [f"ECE = {100 * TINY_ECE:.2f}%"] == ["ECE = 31.68%"]
    # The histogram has all 15 bins, with the sample counts.
    hist = _bars(bottom)
    assert [x for x, _, _ in hist] == pytest.approx([_center(b) for b in range(15)])
    assert [h for _, _, h in hist] == [1 if b in TINY_ACC else 0 for b in range(15)]
    # Its two vertical lines: overall accuracy 2/3 and mean confidence.
    mean_conf = sum(TINY_CONF.values()) / 3
    assert [line.get_xdata()[0] for line in bottom.lines] == pytest.approx([2 / 3, mean_conf])
    assert [t.get_text() for t in bottom.get_legend().get_texts()] == [
        "accuracy 66.7%", f"mean confidence {100 * mean_conf:.1f}%"]
    assert fig.get_suptitle() == "tiny"
    _png(out)
    _no_temp_files(tmp_path)


def test_reliability_diagram_bars_are_the_bins(tmp_path, drawn):
    bins = _bins(0)
    out = tmp_path / "rel.png"
    plots.reliability_diagram(bins, out, title="student resnet8 (bdkd) on val")
    (fig,) = drawn
    top, bottom = fig.axes
    full = [i for i, k in enumerate(bins["count"]) if k]
    assert 5 <= len(full) < 15  # a spread of bins, some empty: the case that needs filtering
    assert [h for _, _, h in _bars(top, "accuracy")] == [bins["accuracy"][i] for i in full]
    assert [y0 + h for _, y0, h in _bars(top, "gap to confidence")] == pytest.approx(
        [bins["confidence"][i] for i in full], abs=1e-12)
    assert [h for _, _, h in _bars(bottom)] == bins["count"]
    w, h = _png(out)
    assert 400 <= w <= 2000 and 400 <= h <= 2000 and h > w  # bars above histogram
    _no_temp_files(tmp_path)


def test_reliability_overlay_draws_each_curve_through_its_bins(tmp_path, drawn):
    out = tmp_path / "compare.png"
    curves = {"ce": _bins(0, scale=3.0), "dml": _bins(1, scale=1.5), "bdkd": _bins(2, scale=1.0)}
    plots.reliability_overlay(curves, out, title="methods")
    (fig,) = drawn
    (ax,) = fig.axes
    diagonal, *lines = ax.lines
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    assert len(lines) == 3
    for line, bins in zip(lines, curves.values()):
        full = [i for i, k in enumerate(bins["count"]) if k]
        assert list(line.get_xdata()) == [bins["confidence"][i] for i in full]
        assert list(line.get_ydata()) == [bins["accuracy"][i] for i in full]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["perfect calibration"] + [f"{name} (ECE {100 * b['ece']:.2f}%)" for name, b in curves.items()]
    assert ax.get_title() == "methods"
    w, h = _png(out)
    assert 400 <= w <= 2000 and 400 <= h <= 2000


def test_reliability_grid_has_one_column_per_panel(tmp_path, drawn):
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    plots.reliability_grid({"fp32": _bins(0)}, one, title="validate")
    panels = {"fp32": _bins(0), "fp16": _bins(1), "int8": _bins(2, scale=4.0)}
    plots.reliability_grid(panels, three, title="validate")
    fig = drawn[1]
    assert len(fig.axes) == 6
    tops, bottoms = fig.axes[:3], fig.axes[3:]  # row by row: reliability bars, then histograms
    assert [ax.get_title() for ax in tops] == list(panels)
    for top, bottom, bins in zip(tops, bottoms, panels.values()):
        full = [i for i, k in enumerate(bins["count"]) if k]
        assert [h for _, _, h in _bars(top, "accuracy")] == [bins["accuracy"][i] for i in full]
        assert [h for _, _, h in _bars(bottom)] == bins["count"]
        assert [t.get_text() for t in top.texts] == [f"ECE = {100 * bins['ece']:.2f}%"]
    (w1, h1), (w3, h3) = _png(one), _png(three)
    assert h1 == h3 and w3 > 2.5 * w1


@pytest.mark.parametrize("call", [
    lambda p: plots.reliability_diagram({"count": []}, p, "x"),
    lambda p: plots.reliability_overlay({}, p, "x"),
    lambda p: plots.reliability_grid({"fp32": "nope"}, p, "x"),
    lambda p: plots.reliability_diagram(_bins(0, n=50), p / "missing" / "r.png", "x"),
])
def test_bad_input_raises_edgekd_error(tmp_path, call):
    with pytest.raises(EdgeKDError):
        call(tmp_path)
    _no_temp_files(tmp_path)
