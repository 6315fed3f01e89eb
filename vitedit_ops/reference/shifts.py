"""Named subpopulation shifts of images, in a registry users can extend.

A shift is a function ``fn(pixels, rng, **params) -> pixels`` on (N, C, H, W) floats in [0, 1];
``rng`` is a seeded :class:`numpy.random.Generator`, so a shift is deterministic given a seed.
Register one like a timm model::

    @register_shift("invert")
    def invert(pixels, rng):
        return 1.0 - pixels

then ``apply_shift("invert", pixels, seed=0)`` and every benchmark option that takes shift
names can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import InvalidInputError
from ..registries import Registry

ShiftFn = Callable[..., torch.Tensor]

SHIFTS: Registry[ShiftFn] = Registry("shift")
register_shift = SHIFTS.register
get_shift = SHIFTS.get
list_shifts = SHIFTS.names


def apply_shift(name: str, pixels: torch.Tensor, seed: int = 0, **params: Any) -> torch.Tensor:
    """Shifted copy of ``pixels`` (N, C, H, W in [0, 1]); same name, seed and params -> same
    output."""
    if pixels.ndim != 4:
        raise InvalidInputError(f"expected (N, C, H, W) pixels, got shape "
                                f"{tuple(pixels.shape)}")
    out = get_shift(name)(pixels.detach().float().cpu(), np.random.default_rng(seed), **params)
    if out.shape != pixels.shape:
        raise InvalidInputError(f"shift {name!r} changed the shape {tuple(pixels.shape)} -> "
                         f"{tuple(out.shape)}")
    return out.clamp(0.0, 1.0)


def translate_pixels(pixels: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move image i by ``offsets[i] = (dy, dx)`` whole pixels, filling with zeros (background).

    Vectorized (one gather for the batch); also the training augmentation.
    """
    n, c, h, w = pixels.shape
    pad = int(offsets.abs().max()) if len(offsets) else 0
    padded = F.pad(pixels, (pad, pad, pad, pad))
    rows = (torch.arange(h, device=pixels.device) + pad - offsets[:, :1].to(pixels.device))
    cols = (torch.arange(w, device=pixels.device) + pad - offsets[:, 1:].to(pixels.device))
    return padded[torch.arange(n, device=pixels.device)[:, None, None, None],
                  torch.arange(c, device=pixels.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


@register_shift("rotate")
def rotate(pixels: torch.Tensor, rng: np.random.Generator, min_degrees: float = 30.0,
           max_degrees: float = 45.0) -> torch.Tensor:
    """Rotate each image by a random angle of magnitude in [min, max] degrees, either way."""
    angles = rng.uniform(min_degrees, max_degrees, len(pixels)) * rng.choice([-1.0, 1.0],
                                                                              len(pixels))
    images = pixels.numpy()
    out = np.stack([ndimage.rotate(img, angle, axes=(1, 2), reshape=False, order=1,
                                   mode="constant", cval=0.0)
                    for img, angle in zip(images, angles)])
    return torch.from_numpy(out).float()


@register_shift("thicken")
def thicken(pixels: torch.Tensor, rng: np.random.Generator, min_width: int = 5,
            max_width: int = 7) -> torch.Tensor:
    """Thicker strokes: grey dilation with a square of random odd width in [min, max]."""
    sizes = rng.choice(np.arange(min_width | 1, max_width + 1, 2), len(pixels))
    out = torch.empty_like(pixels)
    for size in np.unique(sizes):
        chosen = torch.from_numpy(np.flatnonzero(sizes == size))
        k = int(size)
        out[chosen] = F.max_pool2d(pixels[chosen], kernel_size=k, stride=1, padding=k // 2)
    return out


@register_shift("translate")
def translate(pixels: torch.Tensor, rng: np.random.Generator, min_pixels: float = 5.0,
              max_pixels: float = 8.0, direction_degrees: float | None = None,
              jitter_degrees: float = 30.0) -> torch.Tensor:
    """Move every image [min, max] pixels in one direction (+- jitter), like a misaligned camera.

    One shared direction (drawn from the seed unless given) makes a coherent subpopulation:
    the model's errors then cluster into (true, predicted) groups instead of scattering.
    """
    base = rng.uniform(0.0, 360.0) if direction_degrees is None else direction_degrees
    radius = rng.uniform(min_pixels, max_pixels, len(pixels))
    angle = np.deg2rad(base + rng.uniform(-jitter_degrees, jitter_degrees, len(pixels)))
    offsets = np.rint(np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1))
    return translate_pixels(pixels, torch.from_numpy(offsets).long())
