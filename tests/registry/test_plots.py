"""The review plots: correct numbers, readable PNGs, clear errors on bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from registry import plots


def test_confusion_matrix_counts_true_rows_predicted_columns():
    cm = plots.confusion_matrix(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_confusion_matrix_refuses_out_of_range_and_length_mismatch():
    with pytest.raises(ValueError, match="outside"):
        plots.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="labels vs"):
        plots.confusion_matrix([0, 1], [0], 3)


def _png(path):
    with Image.open(path) as image:
        return image.format, image.size


def test_plots_write_pngs(tmp_path):
    scores = {"3->8": torch.rand(64), "5->6": torch.rand(64)}
    kept = {"3->8": torch.tensor([1, 5, 9]), "5->6": torch.tensor([0, 63])}
    mask = plots.mask_heatmap("blocks.1.mlp.fc1.weight", scores, kept, tmp_path / "m.png")
    grlr = plots.gr_lr_plot([plots.BeforeAfter("3->8", 0.1, 0.8, 1.0, 0.95),
                             plots.BeforeAfter("overall", 0.1, 0.8, 1.0, float("nan"))],
                            tmp_path / "g.png")
    labels = np.arange(50) % 10
    cm = plots.confusion_plot(labels, labels, (labels + 1) % 10, 10, tmp_path / "c.png")
    for path in (mask, grlr, cm):
        fmt, (width, height) = _png(path)
        assert fmt == "PNG" and width >= 800 and height >= 250


def test_mask_heatmap_refuses_inconsistent_input(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        plots.mask_heatmap("w", {"a": torch.rand(8), "b": torch.rand(9)}, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="out of range"):
        plots.mask_heatmap("w", {"a": torch.rand(8)}, {"a": torch.tensor([8])}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _gr_lr_points(count: int) -> list[plots.BeforeAfter]:
    rng = np.random.default_rng(0)
    points = [plots.BeforeAfter(f"{i % 10}->{(i * 7) % 10} @shift-{i}" + (
        " (not applied)" if i % 9 == 4 else ""), float(rng.uniform(0, 0.3)),
        float(rng.uniform(0.1, 1)), 1.0, float(1 - rng.uniform(0, 0.02)))
        for i in range(count)]
    return points + [plots.BeforeAfter("overall", 0.1, 0.7, 1.0, float("nan"))]


def test_gr_lr_plot_stays_readable_with_many_groups():
    """45 groups: one row each, overall first, no two labels or value texts overlap, the
    gate thresholds are drawn, and the after dots are coloured by them."""
    points = _gr_lr_points(45)
    fig = plots.gr_lr_figure(points, gr_min=0.5, lr_min=0.99)
    gr_ax, lr_ax, values = fig.axes
    renderer = fig.canvas.get_renderer()
    for axis in (gr_ax, values):
        labels = [t for t in axis.get_yticklabels() if t.get_text()]
        assert len(labels) == 46
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.y0)
        assert all(low.y1 <= high.y0 for low, high in zip(boxes, boxes[1:]))
    top = max(gr_ax.get_yticklabels(), key=lambda t: t.get_position()[1])
    assert top.get_text() == "overall"
    assert "0.990" not in values.get_yticklabels()[0].get_text()  # values, not thresholds
    assert [line.get_xdata()[0] for ax in (gr_ax, lr_ax) for line in ax.lines
            if line.get_linestyle() == "--"] == [0.5, 0.99]
    after = gr_ax.collections[1::2]  # before, after, before, after, ... per row
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 2)) for c in after}
    assert len(colours) == 2  # some clear the 0.5 gate, some do not
    greyed = [t for t in gr_ax.get_yticklabels() if t.get_text().endswith("(not applied)")]
    assert greyed and all(t.get_color() == "#888888" for t in greyed)
