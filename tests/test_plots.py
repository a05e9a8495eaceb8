"""edgekd.plots writes real, complete PNGs from calibration.reliability_bins output."""

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


def test_reliability_diagram(tmp_path):
    out = tmp_path / "rel.png"
    plots.reliability_diagram(_bins(0), out, title="student resnet8 (bdkd) on val")
    w, h = _png(out)
    assert 400 <= w <= 2000 and 400 <= h <= 2000 and h > w  # bars above histogram
    _no_temp_files(tmp_path)


def test_reliability_diagram_with_empty_bins_and_overwrite(tmp_path):
    # Three samples: most bins are empty (None), and one confidence is 1.0.
    bins = cal.reliability_bins(np.array([[50.0, 0.0], [0.3, 0.0], [0.0, 0.1]]), np.array([0, 0, 0]))
    assert bins["accuracy"].count(None) >= 12
    out = tmp_path / "rel.png"
    out.write_bytes(b"old")
    plots.reliability_diagram(bins, out, title="tiny")
    _png(out)
    _no_temp_files(tmp_path)


def test_reliability_overlay(tmp_path):
    out = tmp_path / "compare.png"
    curves = {"ce": _bins(0, scale=3.0), "dml": _bins(1, scale=1.5), "bdkd": _bins(2, scale=1.0)}
    plots.reliability_overlay(curves, out, title="methods")
    w, h = _png(out)
    assert 400 <= w <= 2000 and 400 <= h <= 2000


def test_reliability_grid_has_one_column_per_panel(tmp_path):
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    plots.reliability_grid({"fp32": _bins(0)}, one, title="validate")
    plots.reliability_grid({"fp32": _bins(0), "fp16": _bins(1), "int8": _bins(2, scale=4.0)}, three,
                           title="validate")
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
