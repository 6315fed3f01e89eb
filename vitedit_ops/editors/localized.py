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
from .units import kept_fraction, kept_units_by_name, select_top_units, unit_deltas


@dataclass
class LocalizedEditor(Editor):
    """Hypernetwork-localized masked fine-tuning (Learning Where to Edit ViTs, NeurIPS 2024).

    Product default beyond the paper: with a replay pool, a KL term keeps the pool images of
    the classes this edit moves at their original predictions (``replay_scope="confusable"``);
    see docs/frontier.md for what it buys and costs.
    """

    hypernet: MaskHypernet
    keep_fraction: float = 0.10
    optim: OptimConfig = field(default_factory=OptimConfig)
    replay_pool: torch.Tensor | None = None
    replay_weight: float = 10.0  # active only when a replay pool is given
    replay_scope: str = "confusable"
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
        return window_edit(
            self.name, model, window, unit_deltas(window, units), images, labels, self.optim,
            settings={"keep_fraction": self.keep_fraction,
                      "kept_fraction": kept_fraction(window, units),
                      "lineage": lineage.relation, "replay_weight": self.replay_weight,
                      "replay_scope": self.replay_scope,
                      "replay_images": 0 if replay is None else len(replay.inputs)},
            mask_scores=dict(zip(window.weight_names, scores)),
            kept_units=kept_units_by_name(window, units), replay=replay)
