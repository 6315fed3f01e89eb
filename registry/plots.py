"""Plots a reviewer looks at before promoting an edit: where it edited, what it fixed, what moved.

Pure matplotlib on the Agg canvas (``Figure`` objects, never pyplot), so plotting works on
headless hosts and does not change the process-wide backend of whoever imports this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _array(values) -> np.ndarray:
    """Tensors, lists and arrays alike, on the CPU, as numpy."""
    if hasattr(values, "detach"):
        values = values.detach().to("cpu").float().numpy()
    return np.asarray(values)


def mask_heatmap(weight_name: str, scores: Mapping[str, object],
                 kept_units: Mapping[str, object] | None, path: str | Path) -> Path:
    """Hypernetwork mask scores of one edited matrix: one row per error group, one column per
    FFN hidden unit; below, the units each edit actually changed."""
    groups = list(scores)
    if not groups:
        raise ValueError(f"no mask scores for {weight_name}")
    rows = [_array(scores[g]).reshape(-1) for g in groups]
    width = rows[0].size
    if any(r.size != width for r in rows):
        raise ValueError(f"mask scores of {weight_name} differ in length across groups")
    matrix = np.stack(rows)
    kept = np.zeros_like(matrix)
    for i, g in enumerate(groups):
        if kept_units and g in kept_units:
            index = _array(kept_units[g]).astype(np.int64).reshape(-1)
            if index.size and (index.min() < 0 or index.max() >= width):
                raise ValueError(f"kept unit index out of range 0..{width - 1} for {g}")
            kept[i, index] = 1.0

    height = 2.2 + 0.7 * len(groups)
    fig = Figure(figsize=(11, height))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    image = top.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                       interpolation="nearest")
    top.set_title(f"Hypernetwork mask scores - {weight_name}")
    top.set_ylabel("error group")
    top.set_yticks(range(len(groups)), groups)
    fig.colorbar(image, ax=top, label="mask score")

    edited = bottom.imshow(kept, aspect="auto", cmap="Greys", vmin=0.0, vmax=1.0,
                           interpolation="nearest")
    counts = [f"{g}: {int(k.sum())}/{width}" for g, k in zip(groups, kept)]
    bottom.set_title("Units edited (" + ", ".join(counts) + ")", fontsize=9)
    bottom.set_xlabel(f"FFN hidden unit (0..{width - 1})")
    bottom.set_ylabel("error group")
    bottom.set_yticks(range(len(groups)), groups)
    fig.colorbar(edited, ax=bottom, ticks=[0, 1], label="edited")
    fig.tight_layout()
    return _save(fig, path)


@dataclass(frozen=True)
class BeforeAfter:
    """Generalization (GR) and locality (LR) of one error group (or overall) before/after."""

    label: str
    gr_before: float
    gr_after: float
    lr_before: float
    lr_after: float


def gr_lr_plot(points: Sequence[BeforeAfter], path: str | Path) -> Path:
    """Left: GR and LR before/after as bars per group. Right: the same moves in the GR-LR
    plane, where the top-right corner is a perfect, perfectly local edit."""
    if not points:
        raise ValueError("no groups to plot")
    fig = Figure(figsize=(12, 4.8))
    bars, plane = fig.subplots(1, 2, width_ratios=[3, 2])

    x = np.arange(len(points))
    width = 0.2
    series = [("GR before", [p.gr_before for p in points], "#9ecae1"),
              ("GR after", [p.gr_after for p in points], "#3182bd"),
              ("LR before", [p.lr_before for p in points], "#fdae6b"),
              ("LR after", [p.lr_after for p in points], "#e6550d")]
    for i, (name, values, color) in enumerate(series):
        heights = np.array(values, dtype=float)
        drawn = bars.bar(x + (i - 1.5) * width, np.nan_to_num(heights), width, label=name,
                         color=color)
        bars.bar_label(drawn, labels=["n/a" if math.isnan(v) else f"{v:.2f}" for v in heights],
                       fontsize=7, padding=1)
    bars.set_xticks(x, [p.label for p in points])
    bars.set_ylim(0, 1.3)
    bars.set_yticks(np.linspace(0, 1, 6))
    bars.set_ylabel("share of images")
    bars.set_xlabel("error group")
    bars.set_title("Generalization (GR) and locality (LR), before vs after")
    bars.legend(loc="upper center", ncol=4, fontsize=8)

    for p in points:
        plane.annotate("", xy=(p.lr_after, p.gr_after), xytext=(p.lr_before, p.gr_before),
                       arrowprops={"arrowstyle": "->", "color": "#555555"})
        plane.scatter([p.lr_before], [p.gr_before], color="#9ecae1", edgecolor="k", zorder=3)
        plane.scatter([p.lr_after], [p.gr_after], color="#3182bd", edgecolor="k", zorder=3)
        plane.annotate(p.label, (p.lr_after, p.gr_after), textcoords="offset points",
                       xytext=(5, 5), fontsize=8)
    # locality usually stays near 1: zoom the LR axis onto the data, in steps of 0.1
    lr_values = [v for p in points for v in (p.lr_before, p.lr_after) if not math.isnan(v)]
    low = math.floor(10 * (min(lr_values, default=0.0) - 0.05)) / 10
    plane.set_xlim(max(0.0, low) - 0.01, 1.01)
    plane.set_ylim(-0.02, 1.05)
    plane.set_xlabel("locality LR (unchanged predictions)")
    plane.set_ylabel("generalization GR (group fixed)")
    plane.set_title("Before (light) -> after (dark)")
    plane.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    labels = _array(labels).astype(np.int64).reshape(-1)
    predictions = _array(predictions).astype(np.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels vs {predictions.size} predictions")
    out_of_range = (labels < 0) | (labels >= num_classes) | (predictions < 0) | \
        (predictions >= num_classes)
    if out_of_range.any():  # sklearn would drop such pairs silently
        raise ValueError(f"class index outside 0..{num_classes - 1}")
    return sklearn_confusion_matrix(labels, predictions, labels=np.arange(num_classes))


def confusion_plot(labels, before, after, num_classes: int, path: str | Path,
                   class_names: Sequence[str] | None = None) -> Path:
    """Suite confusion matrices before and after the edit, and their difference (after -
    before: blue = more images in that cell, red = fewer)."""
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    cm_before = confusion_matrix(labels, before, num_classes)
    cm_after = confusion_matrix(labels, after, num_classes)
    diff = cm_after - cm_before
    total = max(int(cm_before.sum()), 1)
    changed = int((_array(before).reshape(-1) != _array(after).reshape(-1)).sum())

    fig = Figure(figsize=(17, 5.6))
    axes = fig.subplots(1, 3)
    panels = [(cm_before, f"Before: accuracy {np.trace(cm_before) / total:.3f}", "Blues", None),
              (cm_after, f"After: accuracy {np.trace(cm_after) / total:.3f}", "Blues", None),
              (diff, f"Change (after - before): {changed} predictions changed",
               "RdBu", TwoSlopeNorm(0.0, -max(1, np.abs(diff).max()),
                                    max(1, np.abs(diff).max())))]
    annotate = num_classes <= 20
    for ax, (matrix, title, cmap, norm) in zip(axes, panels):
        image = ax.imshow(matrix, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(range(num_classes), names, rotation=90 if num_classes > 12 else 0)
        ax.set_yticks(range(num_classes), names)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
        if annotate:
            peak = max(1, np.abs(matrix).max())
            for (i, j), value in np.ndenumerate(matrix):
                if value:
                    ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=7,
                            color="white" if abs(value) > 0.6 * peak else "black")
    fig.tight_layout()
    return _save(fig, path)
