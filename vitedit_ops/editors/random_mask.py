"""Random-mask baseline: the same number of units as the localized editor, chosen at random.

It answers the question the learned mask must win: does *where* matter, or only *how much*?
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..sites import edit_window
from .base import (Editor, EditResult, OptimConfig, frozen, select_replay, validate_edit_inputs,
                   window_edit)
from .jitter import jittered_batch
from .nullspace import confined_unit_deltas
from .units import kept_fraction, kept_units_by_name, select_top_units


@dataclass
class RandomMaskEditor(Editor):
    """Masked fine-tuning on a random ``keep_fraction`` of the window's units."""

    window: tuple[int, int] | None = None
    keep_fraction: float = 0.10
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    replay_pool: torch.Tensor | None = None
    replay_weight: float = 0.0
    replay_scope: str = "confusable"
    null_space_energy: float = 0.0
    jitter_copies: int = 0
    jitter_max_images: int = 1
    name: str = "random_mask"

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = validate_edit_inputs(model, images, labels)
        window = edit_window(model, *(self.window or (None, None)))
        # seeded per edit batch: reproducible, yet different edits get different masks
        digest = hashlib.sha256(images.detach().cpu().numpy().tobytes()).digest()
        generator = torch.Generator().manual_seed(self.seed ^ int.from_bytes(digest[:6], "big"))
        scores = [torch.rand(size, generator=generator) for size in window.mask_sizes]
        units = select_top_units(scores, self.keep_fraction)
        with frozen(model), torch.no_grad():
            replay = select_replay(model, self.replay_pool, model(images).argmax(-1), labels,
                                   self.replay_scope, self.replay_weight)
            deltas = confined_unit_deltas(model, window, units, self.replay_pool,
                                          self.null_space_energy)
        copies = self.jitter_copies if len(images) <= self.jitter_max_images else 0
        return window_edit(
            self.name, model, window, deltas, images, labels, self.optim,
            settings={"keep_fraction": self.keep_fraction,
                      "kept_fraction": kept_fraction(window, units), "seed": self.seed,
                      "replay_weight": self.replay_weight, "replay_scope": self.replay_scope,
                      "jitter_copies": copies,
                      "null_space_energy": self.null_space_energy},
            kept_units=kept_units_by_name(window, units), replay=replay,
            augmented=jittered_batch(images, labels, copies))
