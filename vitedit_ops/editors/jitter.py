"""Jittered copies of the edit images: one image stands for the small variations around it.

Production error groups come from shifts of the input distribution (rotated, thicker or
displaced digits here); an edit fitted to jittered copies of its images as well fits the
neighbourhood the rest of the group lives in rather than the exact pixels it was shown.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def jittered_copies(images: torch.Tensor, copies: int, generator: torch.Generator,
                    degrees: float = 10.0, shift: float = 0.08,
                    scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """``copies`` random small affine variants of each image (rotation, shift, zoom),
    the copies of image i at rows ``i * copies .. (i + 1) * copies - 1``."""
    batch = images.repeat_interleave(copies, 0)
    n = len(batch)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(*scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, uniform(-2 * shift, 2 * shift)], -1),
                         torch.stack([sin, cos, uniform(-2 * shift, 2 * shift)], -1)], 1)
    grid = F.affine_grid(theta.to(batch.device, batch.dtype), list(batch.shape),
                         align_corners=False)
    return F.grid_sample(batch, grid, padding_mode="border", align_corners=False)


def jittered_batch(images: torch.Tensor, labels: torch.Tensor, copies: int, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(copies, their labels) for an edit batch, or None when jitter is off."""
    if copies <= 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    return (jittered_copies(images, copies, generator),
            labels.repeat_interleave(copies, 0))
