"""Split a classifier's forward pass at the first edited block.

Everything before the edit window is frozen, so its output is computed once per edit and every
optimisation step runs only the blocks from the window on (the paper's main compute saving).
ViT/DeiT (``blocks.N``) and Swin (``layers.S.blocks.M``) are split natively; any other model
falls back to the full forward, and every split is verified against the full forward once.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_VIT_BLOCK = re.compile(r"^blocks\.(\d+)$")
_SWIN_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)$")


class _Captured(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


def pooled_embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The final class (or pooled) embedding: what the mask hypernetwork reads."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


class SplitForward:
    """``suffix(prefix(x)) == model(x)``, with ``prefix`` run once and ``suffix`` per step."""

    def __init__(self, model: nn.Module, first_block_path: str) -> None:
        self.model = model
        self.block = model.get_submodule(first_block_path)
        self._suffix_modules: list[nn.Module] | None = None
        if (m := _VIT_BLOCK.match(first_block_path)) and hasattr(model, "forward_head"):
            self._suffix_modules = list(model.blocks)[int(m.group(1)):] + [model.norm]
        elif (m := _SWIN_BLOCK.match(first_block_path)) and hasattr(model, "forward_head"):
            stage, block = int(m.group(1)), int(m.group(2))
            stages = list(model.layers)
            self._suffix_modules = (list(stages[stage].blocks)[block:] + stages[stage + 1:]
                                    + [model.norm])
        self.native = self._suffix_modules is not None

    @torch.no_grad()
    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """Input of the first edited block (or the images themselves in fallback mode)."""
        if not self.native:
            return images

        def capture(_module: nn.Module, args: tuple) -> None:
            raise _Captured(args[0])

        handle = self.block.register_forward_pre_hook(capture)
        try:
            self.model(images)
        except _Captured as captured:
            return captured.value.detach()
        finally:
            handle.remove()
        raise RuntimeError("the first edited block was never reached in the forward pass")

    def suffix(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the cached prefix output (differentiable through the window)."""
        if not self.native:
            return self.model(hidden)
        x = hidden
        for module in self._suffix_modules:
            x = module(x)
        return self.model.forward_head(x)

    @torch.no_grad()
    def verify(self, images: torch.Tensor, atol: float = 1e-4) -> bool:
        """Check the split against the full forward; fall back to it if they disagree."""
        if self.native:
            full = self.model(images)
            split = self.suffix(self.prefix(images))
            if not torch.allclose(full, split, atol=atol, rtol=1e-4):
                self.native = False
        return self.native
