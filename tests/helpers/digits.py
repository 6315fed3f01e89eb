"""sklearn's real handwritten digits and the one recipe the tests train tiny ViTs with.

Trained, not random, so predictions have real margins (a harmless change keeps them, a large
step breaks them) and there are real misclassifications to fix. One thread: bit-reproducible
and faster for models this small, above all on a busy shared host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from vitedit_ops.models import ModelSpec
from vitedit_ops.preprocess import Preprocessor


def digit_pixels(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 8x8 digits as (N, 3, size, size) pixels in [0, 1], in sklearn's order, and
    their labels."""
    data = load_digits()
    small = torch.from_numpy(data.images).float().unsqueeze(1) / 16.0
    big = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return big.clamp(0, 1).repeat(1, 3, 1, 1).contiguous(), torch.from_numpy(data.target).long()


def train_digits_vit(spec: ModelSpec, pixels: torch.Tensor, labels: torch.Tensor, *,
                     steps: int, batch_size: int, lr: float) -> nn.Module:
    """A model of ``spec`` (initialised from seed 0) trained with AdamW on random batches
    (seed 1) of ``pixels``; returned in eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = spec.build().train()
        inputs = Preprocessor(spec).normalize(pixels)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(1)
        for _ in range(steps):
            batch = torch.randint(0, len(inputs), (batch_size,), generator=generator)
            loss = F.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
