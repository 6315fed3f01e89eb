"""Whole-edit FLOPs and wall time per baseline, as a ratio to full fine-tuning's."""

from __future__ import annotations

import pytest
import torch

from benchmarks.cost import edit_flops_ratios, edit_seconds_ratios
from tests.engine.conftest import tiny_vit


@pytest.fixture
def edit():
    """A tiny ViT, one edit image with its label, and a preserved pool of 8."""
    generator = torch.Generator().manual_seed(0)
    return (tiny_vit(), torch.randn(1, 3, 16, 16, generator=generator), torch.tensor([1]),
            torch.randn(8, 3, 16, 16, generator=generator))


def test_whole_edit_flops_count_each_methods_set_up(edit):
    ratios = edit_flops_ratios(*edit, steps=3,
                               methods=("random_mask", "kn", "grace", "mend", "ke"))
    assert ratios["full_ft_gflops"] > 0 and ratios["steps"] == 3
    # KN is the masked editor plus its attribution: it costs more than a random mask
    assert ratios["kn_ratio"] > ratios["random_mask_ratio"] > 0
    assert 0 < ratios["grace_ratio"] < 1  # one layer's values, from the window's last block
    # one step through the window and the update network against three full steps
    assert 0 < ratios["mend_ratio"] < 1 and 0 < ratios["ke_ratio"] < 1


def test_whole_edit_wall_time_is_measured_for_the_same_edits(edit):
    times = edit_seconds_ratios(*edit, steps=3, methods=("random_mask", "mend"), repeats=1)
    assert times["full_ft_seconds"] > 0 and times["steps"] == 3  # wall time: no ordering
    assert set(times) == {"steps", "batch", "full_ft_seconds", "random_mask_ratio",
                          "mend_ratio"}
