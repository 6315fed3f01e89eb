"""Fine-tuning baselines on the edit window: plain, with an L1 or an L2 pull to the base.

FT-L1 / FT-L2 penalise the distance of the window's weights from the originals (the delta),
the classic regularised fine-tuning editors the paper compares against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..delta import DenseDelta
from ..errors import InvalidInputError
from ..sites import edit_window
from .base import (Editor, EditResult, OptimConfig, register_editor, validate_edit_inputs,
                   window_edit)

PENALTIES = ("none", "l1", "l2")


@register_editor("window_ft")
@dataclass(kw_only=True)
class WindowFinetuneEditor(Editor):
    """Fine-tune every weight of the window's FFN matrices, optionally with a penalty."""

    window: tuple[int, int] | None = None
    penalty: str = "none"
    strength: float = 0.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    name: str = "window_ft"

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise InvalidInputError(f"unknown penalty {self.penalty!r}; use {PENALTIES}")

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = validate_edit_inputs(model, images, labels)
        window = edit_window(model, *(self.window or (None, None)))
        deltas = [DenseDelta(site, which) for site, which in window.matrices]

        def penalty() -> torch.Tensor:
            norm = (sum(d.penalty_l1() for d in deltas) if self.penalty == "l1"
                    else sum(d.penalty_l2() for d in deltas))
            return self.strength * norm

        return window_edit(
            self.name, model, window, deltas, images, labels, self.optim,
            settings={"penalty": self.penalty, "strength": self.strength},
            penalty=penalty if self.penalty != "none" and self.strength > 0 else None)


@register_editor("ft_l1")
@dataclass(kw_only=True)
class FTL1Editor(WindowFinetuneEditor):
    """Window fine-tuning with an L1 pull of the delta towards zero."""

    penalty: str = "l1"
    strength: float = 1e-3
    name: str = "ft_l1"


@register_editor("ft_l2")
@dataclass(kw_only=True)
class FTL2Editor(WindowFinetuneEditor):
    """Window fine-tuning with an L2 pull of the delta towards zero."""

    penalty: str = "l2"
    strength: float = 1e-2
    name: str = "ft_l2"
