"""Masked fine-tuning: only selected hidden units of the window's FFNs change.

The localized editor (scores from the mask hypernetwork) and the random-mask baseline (random
scores) share everything but the scores: the top ``keep_fraction`` of units is kept jointly
across the window's matrices, and only those rows of ``fc1`` / columns of ``fc2`` are
fine-tuned. Given a ``preserved`` pool (model inputs whose predictions must hold), the change
can be confined to the directions those images do not use (``null_space_energy``, see
``nullspace``; earlier edits' fixes given as ``protected`` weigh as much as the pool there)
or pulled back by a KL replay term on them (``replay_weight``); a single-image
edit can also fit jittered copies of its image (``jitter_copies``, see ``jitter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..sites import EditWindow
from .base import (Editor, EditResult, OptimConfig, frozen, select_replay, validate_edit_inputs,
                   window_edit)
from .jitter import jittered_batch
from .nullspace import confined_unit_deltas
from .units import kept_fraction, kept_units_by_name, select_top_units


@dataclass(kw_only=True)
class MaskedEditor(Editor):
    """Masked fine-tuning on the top ``keep_fraction`` of units by :meth:`unit_scores`."""

    keep_fraction: float = 0.10
    optim: OptimConfig = field(default_factory=OptimConfig)
    preserved: torch.Tensor | None = None  # model inputs whose predictions must hold
    replay_weight: float = 0.0  # KL(original || edited) on the preserved pool; 0 = off
    replay_scope: str = "confusable"
    null_space_energy: float = 0.0  # > 0: confine the change against the preserved pool
    protected: torch.Tensor | None = None  # inputs of earlier fixes, weighed in as a second pool
    jitter_copies: int = 0  # jittered copies of each edit image in the loss ...
    jitter_max_images: int = 1  # ... for edits of at most this many images

    def edit_window(self, model: nn.Module) -> EditWindow:
        """The window this editor changes in ``model``."""
        raise NotImplementedError

    def unit_scores(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    window: EditWindow) -> list[torch.Tensor]:
        """One score per hidden unit and edited matrix; the highest are edited."""
        raise NotImplementedError

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Settings of the subclass recorded with the result."""
        return {}

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = validate_edit_inputs(model, images, labels)
        window = self.edit_window(model)
        extra = self.describe(model)
        scores = self.unit_scores(model, images, labels, window)
        units = select_top_units(scores, self.keep_fraction)
        with frozen(model), torch.no_grad():
            before = model(images).argmax(-1)
            replay = select_replay(model, self.preserved, before, labels, self.replay_scope,
                                   self.replay_weight)
            deltas = confined_unit_deltas(model, window, units, self.preserved,
                                          self.null_space_energy, self.protected)
        copies = self.jitter_copies if len(images) <= self.jitter_max_images else 0
        return window_edit(
            self.name, model, window, deltas, images, labels, self.optim,
            settings={"keep_fraction": self.keep_fraction,
                      "kept_fraction": kept_fraction(window, units),
                      "replay_weight": self.replay_weight, "replay_scope": self.replay_scope,
                      "replay_images": 0 if replay is None else len(replay.inputs),
                      "jitter_copies": copies, "null_space_energy": self.null_space_energy,
                      "protected_images": 0 if self.protected is None else len(self.protected),
                      **extra},
            mask_scores=self.recorded_scores(window, scores),
            kept_units=kept_units_by_name(window, units), replay=replay,
            augmented=jittered_batch(images, labels, copies))

    def recorded_scores(self, window: EditWindow, scores: list[torch.Tensor]
                        ) -> dict[str, torch.Tensor] | None:
        """The scores worth keeping with the result (None: they carry no information)."""
        return None
