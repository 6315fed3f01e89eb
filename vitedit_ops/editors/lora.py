"""LoRA baseline: a rank-r update ``B @ A`` on each FFN matrix of the edit window."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..delta import LoRADelta
from ..errors import InvalidInputError
from ..sites import edit_window
from .base import (Editor, EditResult, OptimConfig, register_editor, validate_edit_inputs,
                   window_edit)


@register_editor("lora")
@dataclass(kw_only=True)
class LoRAEditor(Editor):
    """Low-rank fine-tuning of the window's FFNs (the patch stores the dense product)."""

    window: tuple[int, int] | None = None
    rank: int = 4
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    name: str = "lora"

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        if self.rank < 1:
            raise InvalidInputError(f"LoRA rank must be >= 1, got {self.rank}")
        images, labels = validate_edit_inputs(model, images, labels)
        window = edit_window(model, *(self.window or (None, None)))
        generator = torch.Generator().manual_seed(self.seed)
        deltas = [LoRADelta(site, which, self.rank, generator) for site, which in window.matrices]
        return window_edit(self.name, model, window, deltas, images, labels, self.optim,
                           settings={"rank": self.rank})
