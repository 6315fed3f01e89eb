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


def gr_lr_plot(points: Sequence[BeforeAfter], path: str | Path, gr_min: float | None = None,
               lr_min: float | None = None) -> Path:
    """``gr_lr_figure`` saved as a PNG."""
    return _save(gr_lr_figure(points, gr_min, lr_min), path)


def gr_lr_figure(points: Sequence[BeforeAfter], gr_min: float | None = None,
                 lr_min: float | None = None) -> Figure:
    """One row per group (``overall`` on top), GR on the left, LR on the right: a light dot
    before, a dark dot after, joined by a line; the after dot is green when it clears the
    gate's threshold (dashed line) and red when not. The values are printed once per row at
    the right, so nothing overlaps however many groups there are."""
    if not points:
        raise ValueError("no groups to plot")
    ordered = sorted(points, key=lambda p: p.label != "overall")  # stable: overall first
    rows = np.arange(len(ordered))[::-1]  # first row at the top
    fig = Figure(figsize=(12, 2.4 + 0.3 * len(ordered)))
    gr_ax, lr_ax = fig.subplots(1, 2, sharey=True, width_ratios=[1, 1])
    lr_values = [v for p in ordered for v in (p.lr_before, p.lr_after) if not math.isnan(v)]
    # locality usually stays near 1: zoom the LR axis onto the data and the threshold
    lr_low = min([*lr_values, *([lr_min] if lr_min is not None else [])], default=0.0)
    lr_low = max(0.0, math.floor(20 * (lr_low - 0.01)) / 20)
    panels = [(gr_ax, "generalization GR (share of the group's unseen images fixed)",
               [(p.gr_before, p.gr_after) for p in ordered], gr_min, (-0.02, 1.02)),
              (lr_ax, "locality LR (share of clean suite predictions unchanged)",
               [(p.lr_before, p.lr_after) for p in ordered], lr_min, (lr_low, 1.0 + 0.005))]
    for ax, title, pairs, threshold, limits in panels:
        for y, (before, after) in zip(rows, pairs):
            if not (math.isnan(before) or math.isnan(after)):
                ax.plot([before, after], [y, y], color="#999999", lw=1.5, zorder=1)
            if not math.isnan(before):
                ax.scatter([before], [y], s=28, color="#c6dbef", edgecolor="#6b8fb3", zorder=2)
            if not math.isnan(after):
                ok = threshold is None or after >= threshold
                ax.scatter([after], [y], s=40, zorder=3, edgecolor="k",
                           color="#31a354" if ok else "#de2d26")
        if threshold is not None:
            ax.axvline(threshold, color="#555555", ls="--", lw=1)
            ax.annotate(f"gate {threshold:g}", (threshold, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, 3), textcoords="offset points", fontsize=8, color="#555555")
        ax.set_xlim(*limits)
        ax.set_xlabel(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(ordered) - 0.3)
    gr_ax.set_yticks(rows, [p.label for p in ordered], fontsize=8)
    for tick in gr_ax.get_yticklabels():
        if tick.get_text().endswith("(not applied)"):
            tick.set_color("#888888")
    values = lr_ax.twinx()
    values.set_ylim(lr_ax.get_ylim())
    values.set_yticks(rows, [f"GR {_pct(p.gr_before)} -> {_pct(p.gr_after)}   "
                             f"LR {_pct(p.lr_before)} -> {_pct(p.lr_after)}" for p in ordered],
                      fontsize=8, family="monospace")
    values.tick_params(length=0)
    if len(ordered) > 1:
        for ax in (gr_ax, lr_ax):
            ax.axhline(rows[0] - 0.5, color="#cccccc", lw=0.8)  # overall | groups
    fig.suptitle("Per error group: before (light) -> after (green: clears the gate, red: not)",
                 fontsize=10)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return fig


def _pct(value: float) -> str:
    return "  n/a" if math.isnan(value) else f"{value:5.3f}"


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
    # imported here: sklearn.metrics takes ~2 s to import, and most commands never plot
    from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

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
