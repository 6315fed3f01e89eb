"""Knowledge Neurons (Dai et al., ACL 2022): integrated-gradients attribution of FFN units.

A unit's attribution for an edit image is its activation times the mean gradient of the
true class's probability along the straight path that scales the whole layer's activation
(``fc2``'s input) from zero to its value (``ig_steps`` Riemann points), summed over tokens and
averaged over the edit images; each window block is attributed on its own, as in the paper.
The top ``keep_fraction`` of units by attribution (their ``fc1`` rows and ``fc2`` columns)
are then fine-tuned: everything but the scores is the masked editor's (``masked``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..forward import SplitForward
from ..sites import EditWindow, FFNSite, edit_window
from .base import frozen, register_editor
from .masked import MaskedEditor


def site_attribution(model: nn.Module, split: SplitForward, hidden: torch.Tensor,
                     label: int, site: FFNSite, steps: int) -> torch.Tensor:
    """Integrated gradients of one image's true-class probability for ``site``'s units."""
    alphas = torch.arange(1, steps + 1, device=hidden.device, dtype=hidden.dtype) / steps
    path = hidden.expand(steps, *hidden.shape[1:])
    held: dict[str, torch.Tensor] = {}

    def scale(_module: nn.Module, args: tuple) -> tuple[torch.Tensor]:
        activation = args[0].detach()
        held["activation"] = activation[0]
        scaled = alphas.view((-1,) + (1,) * (activation.ndim - 1)) * activation
        held["scaled"] = scaled.requires_grad_(True)
        return (held["scaled"],)

    handle = site.fc2(model).register_forward_pre_hook(scale)
    try:
        with torch.enable_grad():
            probability = split.suffix(path).softmax(-1)[:, label].sum()
            (gradient,) = torch.autograd.grad(probability, held["scaled"])
    finally:
        handle.remove()
    attribution = held["activation"] * gradient.mean(0)
    return attribution.flatten(0, -2).sum(0).detach()


@register_editor("kn")
@dataclass(kw_only=True)
class KnowledgeNeuronsEditor(MaskedEditor):
    """Masked fine-tuning on the window units with the highest integrated gradients."""

    window: tuple[int, int] | None = None
    ig_steps: int = 20
    name: str = "kn"

    def __post_init__(self) -> None:
        if self.ig_steps < 1:
            raise InvalidInputError(f"integrated gradients need >= 1 step, got {self.ig_steps}")

    def edit_window(self, model: nn.Module) -> EditWindow:
        return edit_window(model, *(self.window or (None, None)))

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {"ig_steps": self.ig_steps}

    def unit_scores(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    window: EditWindow) -> list[torch.Tensor]:
        """Each site's attribution, once for its ``fc1`` rows and once for its ``fc2`` columns."""
        with frozen(model):
            split = SplitForward(model, window.sites[0].block_path)
            split.verify(images[:2])
            hidden = split.prefix(images)
            per_site = [torch.stack([site_attribution(model, split, hidden[i:i + 1],
                                                      int(labels[i]), site, self.ig_steps)
                                     for i in range(len(images))]).mean(0).cpu()
                        for site in window.sites]
        return [score for score in per_site for _ in ("fc1", "fc2")]

    def recorded_scores(self, window: EditWindow, scores: list[torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        return dict(zip(window.weight_names, scores))
