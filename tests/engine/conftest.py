"""Tiny random timm models: fast enough for property tests, real enough to split and edit."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn


def tiny_vit(depth: int = 4, seed: int = 0, embed_dim: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                             img_size=16, patch_size=4, embed_dim=embed_dim, depth=depth,
                             num_heads=2).eval()


def tiny_swin(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=5,
                             img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                             window_size=4).eval()


@pytest.fixture
def vit() -> nn.Module:
    return tiny_vit()


@pytest.fixture
def swin() -> nn.Module:
    return tiny_swin()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
