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


def _affine(pixels: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``pixels`` through per-image 2x3 affine maps (output -> input coordinates),
    zeros (background) outside."""
    grid = F.affine_grid(theta.to(pixels.dtype), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, padding_mode="zeros", align_corners=False)


@register_shift("shear")
def shear(pixels: torch.Tensor, rng: np.random.Generator, min_factor: float = 0.35,
          max_factor: float = 0.5) -> torch.Tensor:
    """Slanted handwriting: a horizontal shear of [min, max], the same way for every image."""
    factors = torch.from_numpy(rng.uniform(min_factor, max_factor, len(pixels))).float()
    theta = torch.zeros(len(pixels), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 1] = factors
    return _affine(pixels, theta)


@register_shift("shrink")
def shrink(pixels: torch.Tensor, rng: np.random.Generator, min_scale: float = 0.5,
           max_scale: float = 0.65) -> torch.Tensor:
    """Small digits (written far from the camera): scaled by [min, max] about the centre."""
    scales = torch.from_numpy(rng.uniform(min_scale, max_scale, len(pixels))).float()
    theta = torch.zeros(len(pixels), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scales
    return _affine(pixels, theta)


@register_shift("thin")
def thin(pixels: torch.Tensor, rng: np.random.Generator, width: int = 5,
         min_gain: float = 2.5, max_gain: float = 3.5) -> torch.Tensor:
    """Thin strokes (a fine pen): grey erosion with a ``width`` square, then the remaining
    ink brightened by a random gain in [min, max]."""
    width |= 1  # odd: the eroded image keeps its size
    eroded = -F.max_pool2d(-pixels, kernel_size=width, stride=1, padding=width // 2)
    gains = torch.from_numpy(rng.uniform(min_gain, max_gain, len(pixels))).float()
    return (eroded * gains[:, None, None, None]).clamp(0.0, 1.0)


@register_shift("blur")
def blur(pixels: torch.Tensor, rng: np.random.Generator, min_sigma: float = 3.0,
         max_sigma: float = 4.0) -> torch.Tensor:
    """Out of focus: a Gaussian blur of random sigma in [min, max] pixels, contrast restored."""
    sigmas = rng.uniform(min_sigma, max_sigma, len(pixels))
    images = pixels.numpy()
    out = np.stack([ndimage.gaussian_filter(img, sigma=(0, s, s)) for img, s in
                    zip(images, sigmas)])
    out = out / np.maximum(out.max(axis=(1, 2, 3), keepdims=True), 1e-6)
    return torch.from_numpy(out).float()


@register_shift("strike")
def strike(pixels: torch.Tensor, rng: np.random.Generator, thickness: int = 3) -> torch.Tensor:
    """Crossed out: a bright horizontal bar through the middle third of each image."""
    out = pixels.clone()
    height = pixels.shape[-2]
    rows = rng.integers(height // 3, 2 * height // 3 - thickness + 1, len(pixels))
    for i, row in enumerate(rows):
        out[i, :, row:row + thickness, :] = 1.0
    return out


@register_shift("noise")
def noise(pixels: torch.Tensor, rng: np.random.Generator, std: float = 0.3) -> torch.Tensor:
    """A noisy sensor: additive Gaussian noise of ``std`` on every pixel."""
    grain = torch.from_numpy(rng.normal(0.0, std, pixels.shape[0:1] + pixels.shape[2:])
                             ).float().unsqueeze(1)
    return pixels + grain  # the same noise on every channel, as a grey sensor gives


@register_shift("dim")
def dim(pixels: torch.Tensor, rng: np.random.Generator, min_gain: float = 0.25,
        max_gain: float = 0.4, floor: float = 0.15) -> torch.Tensor:
    """Low contrast: ink scaled by [min, max] on a grey ``floor`` (a badly lit scan)."""
    gains = torch.from_numpy(rng.uniform(min_gain, max_gain, len(pixels))).float()
    return floor + pixels * gains[:, None, None, None]
