"""The product's editor: the hypernetwork says where, a masked fine-tune fixes the error.

Masks predicted for each edit image are averaged over the edit batch (a group edit uses one
shared location); everything else is the masked editor's (``masked``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..forward import pooled_embedding
from ..hypernet import MaskHypernet
from ..sites import EditWindow
from .base import frozen, register_editor
from .masked import MaskedEditor


@register_editor("localized")
@dataclass(kw_only=True)
class LocalizedEditor(MaskedEditor):
    """Hypernetwork-localized masked fine-tuning (Learning Where to Edit ViTs, NeurIPS 2024).

    The window is the hypernetwork's; the model must be its base or a descendant of it.
    """

    hypernet: MaskHypernet
    name: str = "localized"

    def edit_window(self, model: nn.Module) -> EditWindow:
        return self.hypernet.window(model)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"lineage": self.hypernet.check_base(model).relation}

    @torch.no_grad()
    def unit_scores(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    window: EditWindow) -> list[torch.Tensor]:
        """Soft masks per matrix, averaged over the edit images."""
        self.hypernet.to(images.device).eval()
        with frozen(model):
            embedding = pooled_embedding(model, images)
        return [m.mean(0).cpu() for m in self.hypernet.masks(embedding)]

    def recorded_scores(self, window: EditWindow, scores: list[torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        return dict(zip(window.weight_names, scores))
