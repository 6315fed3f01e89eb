"""Random-mask baseline: the same number of units as the localized editor, chosen at random.

It answers the question the learned mask must win: does *where* matter, or only *how much*?
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..sites import EditWindow, edit_window
from .base import register_editor
from .masked import MaskedEditor


@register_editor("random_mask")
@dataclass(kw_only=True)
class RandomMaskEditor(MaskedEditor):
    """Masked fine-tuning on a random ``keep_fraction`` of the window's units."""

    window: tuple[int, int] | None = None
    seed: int = 0
    name: str = "random_mask"

    def edit_window(self, model: nn.Module) -> EditWindow:
        return edit_window(model, *(self.window or (None, None)))

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"seed": self.seed}

    def unit_scores(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    window: EditWindow) -> list[torch.Tensor]:
        # seeded per edit batch: reproducible, yet different edits get different masks
        digest = hashlib.sha256(images.detach().cpu().numpy().tobytes()).digest()
        generator = torch.Generator().manual_seed(self.seed ^ int.from_bytes(digest[:6], "big"))
        return [torch.rand(size, generator=generator) for size in window.mask_sizes]
