"""The product's editor: the hypernetwork says where, a masked fine-tune fixes the error.

Masks predicted for each edit image are averaged over the edit batch (a group edit uses one
shared location), the top ``keep_fraction`` of units is kept jointly across the window's
matrices, and only those rows of ``fc1`` / columns of ``fc2`` are fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..forward import pooled_embedding
from ..hypernet import MaskHypernet
from .base import (Editor, EditResult, OptimConfig, frozen, select_replay, validate_edit_inputs,
                   window_edit)
from .jitter import jittered_batch
from .nullspace import confined_unit_deltas
from .units import kept_fraction, kept_units_by_name, select_top_units


@dataclass
class LocalizedEditor(Editor):
    """Hypernetwork-localized masked fine-tuning (Learning Where to Edit ViTs, NeurIPS 2024).

    Product defaults beyond the paper (docs/frontier.md measures each): given a pool of
    images whose predictions must hold, the change is confined to the directions those images
    do not use (``null_space_energy``); a single-image edit also fits jittered copies of its
    image (``jitter_copies``), as a group edit's several images already show the variation.
    A KL replay term on the pool (``replay_weight``) is available but off: it bought less.
    """

    hypernet: MaskHypernet
    keep_fraction: float = 0.10
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    replay_pool: torch.Tensor | None = None
    replay_weight: float = 0.0  # KL replay on the pool; 0 = off
    replay_scope: str = "confusable"
    null_space_energy: float = 0.99  # > 0: confine the change against the pool (nullspace.py)
    jitter_copies: int = 8  # jittered copies of each edit image in the loss (jitter.py) ...
    jitter_max_images: int = 1  # ... for edits of at most this many images
    name: str = "localized"

    @torch.no_grad()
    def mask_scores(self, model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """Soft masks per matrix, averaged over the edit images."""
        self.hypernet.to(images.device).eval()
        with frozen(model):
            embedding = pooled_embedding(model, images)
        return [m.mean(0).cpu() for m in self.hypernet.masks(embedding)]

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = validate_edit_inputs(model, images, labels)
        lineage = self.hypernet.check_base(model)
        window = self.hypernet.window(model)
        scores = self.mask_scores(model, images)
        units = select_top_units(scores, self.keep_fraction)
        with frozen(model), torch.no_grad():
            before = model(images).argmax(-1)
            replay = select_replay(model, self.replay_pool, before, labels, self.replay_scope,
                                   self.replay_weight)
            deltas = confined_unit_deltas(model, window, units, self.replay_pool,
                                          self.null_space_energy)
        copies = self.jitter_copies if len(images) <= self.jitter_max_images else 0
        return window_edit(
            self.name, model, window, deltas, images, labels, self.optim,
            settings={"keep_fraction": self.keep_fraction,
                      "kept_fraction": kept_fraction(window, units),
                      "lineage": lineage.relation, "replay_weight": self.replay_weight,
                      "replay_scope": self.replay_scope,
                      "replay_images": 0 if replay is None else len(replay.inputs),
                      "jitter_copies": copies,
                      "null_space_energy": self.null_space_energy},
            mask_scores=dict(zip(window.weight_names, scores)),
            kept_units=kept_units_by_name(window, units), replay=replay,
            augmented=jittered_batch(images, labels, copies))
