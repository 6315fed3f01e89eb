"""Pseudo edit episodes for meta-training: where the model's view of an image is disturbed.

CutMix pastes a patch-grid-aligned rectangle of image B into image A; the episode asks the
edited model to predict on the mixed image what the frozen model predicted on clean A. PGD
(the paper's Fig. 6a alternative) perturbs A within an L-inf ball by projected gradient ascent
until the frozen model's prediction moves, and asks for the clean prediction back. No labels
are needed. Each kind registers under its own name and is drawn the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidInputError
from .registries import Registry


@dataclass
class EpisodeBatch:
    """Mixed (disturbed) inputs and the clean inputs whose predictions are the targets."""

    mixed: torch.Tensor
    clean: torch.Tensor


EpisodeSampler = Callable[[int, torch.Generator], EpisodeBatch]
EPISODES: Registry[Callable[..., EpisodeSampler]] = Registry("episode kind")
register_episodes = EPISODES.register


def episodes_from_config(config: Any, model: nn.Module, images: torch.Tensor) -> EpisodeSampler:
    """The sampler of ``config.episodes``, built from that kind's own fields of ``config``
    (``<kind>_<option>``, e.g. ``pgd_epsilon``)."""
    prefix = f"{config.episodes}_"
    options = {k.removeprefix(prefix): v for k, v in vars(config).items()
               if k.startswith(prefix)}
    return EPISODES.get(config.episodes).from_options(model, images, **options)


def option_prefixes() -> tuple[str, ...]:
    """Config-field prefixes of every registered episode kind."""
    return tuple(f"{name}_" for name in EPISODES.names())


def episode_settings(settings: dict[str, Any], kind: str) -> dict[str, Any]:
    """A config's ``settings`` without the options of episode kinds other than ``kind``, so
    adding a kind changes no existing fingerprint or cached network's match."""
    return {k: v for k, v in settings.items()
            if not k.startswith(option_prefixes()) or k.startswith(f"{kind}_")}


def patch_grid(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """(rows, cols) of the model's patch grid; rectangles align to it."""
    embed = getattr(model, "patch_embed", None)
    patch = getattr(embed, "patch_size", (16, 16)) if embed is not None else (16, 16)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return max(1, input_size[1] // patch[0]), max(1, input_size[2] // patch[1])


@register_episodes("cutmix")
class CutMixEpisodes:
    """CutMix episodes whose rectangle spans ``min_frac``-``max_frac`` of the grid per side.

    With ``prefer_changed`` the sampler draws extra candidates and keeps those where the mix
    changes the frozen model's prediction: episodes with nothing to repair teach nothing.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, grid: tuple[int, int],
                 min_frac: float = 0.2, max_frac: float = 0.6, prefer_changed: bool = True,
                 oversample: int = 4) -> None:
        if len(images) < 2:
            raise InvalidInputError("meta-training needs at least 2 unlabeled images")
        self.model, self.images, self.grid = model, images, grid
        self.min_frac, self.max_frac = min_frac, max_frac
        self.prefer_changed, self.oversample = prefer_changed, oversample

    @classmethod
    def from_options(cls, model: nn.Module, images: torch.Tensor, min_frac: float,
                     max_frac: float) -> CutMixEpisodes:
        return cls(model, images, patch_grid(model, tuple(images.shape[1:])), min_frac,
                   max_frac)

    def _mix(self, count: int, generator: torch.Generator) -> EpisodeBatch:
        n = len(self.images)
        a = torch.randint(n, (count,), generator=generator)
        b = (a + torch.randint(1, n, (count,), generator=generator)) % n
        clean = self.images[a]
        mixed = clean.clone()
        rows, cols = self.grid
        ph, pw = clean.shape[2] // rows, clean.shape[3] // cols
        for i in range(count):
            h = _side(rows, self.min_frac, self.max_frac, generator)
            w = _side(cols, self.min_frac, self.max_frac, generator)
            top = int(torch.randint(rows - h + 1, (1,), generator=generator))
            left = int(torch.randint(cols - w + 1, (1,), generator=generator))
            ys, xs = slice(top * ph, (top + h) * ph), slice(left * pw, (left + w) * pw)
            mixed[i, :, ys, xs] = self.images[b[i], :, ys, xs]
        return EpisodeBatch(mixed=mixed, clean=clean)

    @torch.no_grad()
    def __call__(self, batch_size: int, generator: torch.Generator) -> EpisodeBatch:
        if not self.prefer_changed:
            return self._mix(batch_size, generator)
        pool = self._mix(batch_size * self.oversample, generator)
        device = next(self.model.parameters()).device
        changed = (self.model(pool.mixed.to(device)).argmax(-1)
                   != self.model(pool.clean.to(device)).argmax(-1)).cpu()
        order = torch.argsort(changed.float(), descending=True, stable=True)[:batch_size]
        return EpisodeBatch(mixed=pool.mixed[order], clean=pool.clean[order])


def _side(cells: int, lo: float, hi: float, generator: torch.Generator) -> int:
    low = max(1, round(lo * cells))
    high = max(low, min(cells, round(hi * cells)))
    return int(torch.randint(low, high + 1, (1,), generator=generator))


@register_episodes("pgd")
class PGDEpisodes:
    """PGD episodes: ``steps`` signed-gradient steps of size ``2.5 * epsilon / steps`` from a
    random start, each projected back onto the L-inf ball of radius ``epsilon`` (model input
    units) around the clean image, raising the frozen model's cross-entropy for its own clean
    prediction. The disturbance is spread over the whole image, not one rectangle: which FFN
    units repair it is what the hypernetwork then learns from."""

    def __init__(self, model: nn.Module, images: torch.Tensor, epsilon: float = 0.1,
                 steps: int = 10) -> None:
        if len(images) < 1:
            raise InvalidInputError("meta-training needs at least 1 unlabeled image")
        if not epsilon > 0 or steps < 1:
            raise InvalidInputError(f"PGD episodes need epsilon > 0 and steps >= 1, got "
                                    f"{epsilon} and {steps}")
        self.model, self.images = model, images
        self.epsilon, self.steps = epsilon, steps

    @classmethod
    def from_options(cls, model: nn.Module, images: torch.Tensor, epsilon: float,
                     steps: int) -> PGDEpisodes:
        return cls(model, images, epsilon, steps)

    def __call__(self, batch_size: int, generator: torch.Generator) -> EpisodeBatch:
        clean = self.images[torch.randint(len(self.images), (batch_size,), generator=generator)]
        device = next(self.model.parameters()).device
        x = clean.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                target = self.model(x).argmax(-1)
            start = (torch.rand(clean.shape, generator=generator) * 2 - 1) * self.epsilon
            delta = start.to(device)
            step = 2.5 * self.epsilon / self.steps
            for _ in range(self.steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(self.model(x + delta), target)
                    grad, = torch.autograd.grad(loss, delta)
                delta = (delta.detach() + step * grad.sign()).clamp(-self.epsilon, self.epsilon)
        finally:
            self.model.train(was_training)
        return EpisodeBatch(mixed=(x + delta).detach().cpu(), clean=clean)
