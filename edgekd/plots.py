"""Reliability diagrams as PNG files. Torch-free, display-free.

Figures are built with `matplotlib.figure.Figure` on an explicit Agg canvas: pyplot
is never imported, so no GUI backend is chosen and nothing global is changed for a
caller that uses pyplot itself. PNGs are rendered to memory and written atomically.

Every `bins` argument is the dict returned by `edgekd.calibration.reliability_bins`
(empty bins have accuracy/confidence None).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edgekd.errors import EdgeKDError
from edgekd.files import atomic_write_bytes

_KEYS = ("edges", "count", "accuracy", "confidence", "ece")
_DPI = 110


def _check(bins: Any, what: str) -> dict:
    if not isinstance(bins, dict) or any(k not in bins for k in _KEYS):
        raise EdgeKDError(f"{what}: expected the dict from calibration.reliability_bins with keys {_KEYS}")
    return bins


def _check_many(named: Any, what: str) -> dict[str, dict]:
    if not isinstance(named, dict) or not named:
        raise EdgeKDError(f"{what}: expected a non-empty dict of name -> reliability_bins dict")
    return {str(name): _check(b, f"{what} {name!r}") for name, b in named.items()}


def _geometry(bins: dict) -> tuple[list[float], list[float]]:
    e = bins["edges"]
    return [(a + b) / 2 for a, b in zip(e[:-1], e[1:])], [b - a for a, b in zip(e[:-1], e[1:])]


def _draw_reliability(ax, bins: dict, label_ece: bool = True) -> None:
    centers, widths = _geometry(bins)
    full = [(c, w, a, f) for c, w, a, f in zip(centers, widths, bins["accuracy"], bins["confidence"])
            if a is not None]
    if full:
        c, w, acc, conf = zip(*full)
        ax.bar(c, acc, width=w, color="#4c72b0", edgecolor="black", linewidth=0.6, label="accuracy")
        # Gap between accuracy and mean confidence: red above a bar = over-confident.
        gap = [f - a for a, f in zip(acc, conf)]
        ax.bar(c, gap, bottom=acc, width=w, color="#dd4444", alpha=0.35, edgecolor="#aa2222",
               hatch="//", linewidth=0.6, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    if label_ece:
        ax.text(0.97, 0.05, f"ECE = {100 * bins['ece']:.2f}%", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=10, bbox=dict(boxstyle="round", facecolor="white", alpha=0.85))


def _draw_histogram(ax, bins: dict) -> None:
    centers, widths = _geometry(bins)
    count = bins["count"]
    ax.bar(centers, count, width=widths, color="#8c8c8c", edgecolor="black", linewidth=0.6)
    n = sum(count)
    if n:
        # Overall accuracy vs mean confidence: the horizontal distance is the average gap.
        acc = sum(k * a for k, a in zip(count, bins["accuracy"]) if k) / n
        conf = sum(k * f for k, f in zip(count, bins["confidence"]) if k) / n
        ax.axvline(acc, color="#4c72b0", linewidth=1.5, label=f"accuracy {100 * acc:.1f}%")
        ax.axvline(conf, color="#dd4444", linestyle="--", linewidth=1.5,
                   label=f"mean confidence {100 * conf:.1f}%")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("count")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches itself to fig
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")  # keeps a legend placed outside the axes
    return buf.getvalue()


def _save(fig: Figure, path: str | Path) -> None:
    atomic_write_bytes(path, _png(fig))


def reliability_png(bins: dict, title: str) -> bytes:
    """Reliability bars (with the gap to confidence shaded and the ECE) above a
    confidence histogram, as PNG bytes (also what TensorBoard shows per evaluation)."""
    bins = _check(bins, "reliability_diagram")
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _draw_reliability(top, bins)
    _draw_histogram(bottom, bins)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def reliability_diagram(bins: dict, path: str | Path, title: str) -> None:
    """reliability_png as one PNG file at `path`."""
    atomic_write_bytes(path, reliability_png(bins, title))


def reliability_overlay(curves: dict[str, dict], path: str | Path, title: str) -> None:
    """One reliability curve per name (mean confidence vs accuracy over non-empty bins)
    on a shared axis with the diagonal; the legend carries each ECE."""
    curves = _check_many(curves, "reliability_overlay")
    # The legend goes below the axes: variant labels (bdkd:temperature=4:kl_weight=2...)
    # are long, and inside the axes they would cover the curves.
    fig = Figure(figsize=(7, 7))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    for name, bins in curves.items():
        pts = [(f, a) for a, f in zip(bins["accuracy"], bins["confidence"]) if a is not None]
        xs, ys = zip(*pts) if pts else ((), ())
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5,
                label=f"{name} (ECE {100 * bins['ece']:.2f}%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def reliability_grid(panels: dict[str, dict], path: str | Path, title: str) -> None:
    """reliability_grid_png as one PNG file at `path`."""
    atomic_write_bytes(path, reliability_grid_png(panels, title))


def reliability_grid_png(panels: dict[str, dict], title: str) -> bytes:
    """Side-by-side columns, one per name (e.g. fp32/fp16/int8): reliability bars on
    top, confidence histogram below; PNG bytes."""
    panels = _check_many(panels, "reliability_grid")
    n = len(panels)
    fig = Figure(figsize=(4.5 * n, 6.5))
    axes = fig.subplots(2, n, sharex="col", squeeze=False, gridspec_kw={"height_ratios": [3, 1]})
    for j, (name, bins) in enumerate(panels.items()):
        _draw_reliability(axes[0][j], bins)
        axes[0][j].set_title(name)
        _draw_histogram(axes[1][j], bins)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)
