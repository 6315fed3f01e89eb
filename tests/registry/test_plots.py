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
