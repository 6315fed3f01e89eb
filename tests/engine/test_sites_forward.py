from __future__ import annotations

import pytest
import timm
import torch

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.forward import SplitForward
from vitedit_ops.sites import default_window, edit_window, find_ffn_sites


@pytest.mark.parametrize("depth,expected", [(12, (7, 9)), (6, (2, 4)), (24, (16, 18)),
                                            (3, (0, 2)), (2, (0, 1))])
def test_default_window_is_three_blocks_ending_near_three_quarters(depth, expected):
    assert default_window(depth) == expected


def test_vit_base_default_window_matches_paper():
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    window = edit_window(model)
    assert [s.block_path for s in window.sites] == ["blocks.7", "blocks.8", "blocks.9"]
    assert window.mask_sizes == [3072] * 6


def test_deit_sites_are_found():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=5,
                              img_size=32, patch_size=8, depth=4)
    assert [s.block_path for s in find_ffn_sites(model)] == [f"blocks.{i}" for i in range(4)]


def test_swin_sites_read_sizes_from_the_model(swin):
    sites = find_ffn_sites(swin)
    assert [s.block_path for s in sites] == ["layers.0.blocks.0", "layers.0.blocks.1",
                                             "layers.1.blocks.0", "layers.1.blocks.1"]
    assert [s.hidden for s in sites] == [64, 64, 128, 128]
    assert [s.in_features for s in sites] == [16, 16, 32, 32]


def test_window_outside_the_model_is_refused(vit):
    with pytest.raises(InvalidInputError, match="outside"):
        edit_window(vit, 2, 9)


def test_model_without_ffn_is_refused():
    with pytest.raises(InvalidInputError, match="no transformer-block FFN"):
        find_ffn_sites(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("start", [0, 1, 3])
def test_vit_split_forward_equals_full_forward(vit, start):
    x = torch.randn(2, 3, 16, 16)
    split = SplitForward(vit, f"blocks.{start}")
    assert split.verify(x) and split.native
    torch.testing.assert_close(split.suffix(split.prefix(x)), vit(x))


@pytest.mark.parametrize("path", ["layers.0.blocks.1", "layers.1.blocks.0", "layers.1.blocks.1"])
def test_swin_split_forward_equals_full_forward(swin, path):
    x = torch.randn(2, 3, 32, 32)
    split = SplitForward(swin, path)
    assert split.verify(x) and split.native
    torch.testing.assert_close(split.suffix(split.prefix(x)), swin(x))


def test_split_falls_back_to_full_forward_when_it_disagrees(vit):
    x = torch.randn(2, 3, 16, 16)
    split = SplitForward(vit, "blocks.2")
    split._suffix_modules = split._suffix_modules[1:]  # a broken split (skips a block)
    assert not split.verify(x)
    torch.testing.assert_close(split.suffix(split.prefix(x)), vit(x))
