"""Find the FFN edit sites of any timm ViT-family model and choose windows of them.

A site is one transformer block's MLP (``fc1`` then ``fc2``). Sizes are read from the modules;
plain ViT/DeiT (``blocks.N``) and hierarchical Swin (``layers.S.blocks.M``) are both found by
walking the module tree in forward order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InvalidInputError

DEFAULT_WINDOW_LENGTH = 3
DEFAULT_WINDOW_END = 0.75  # the paper's relative position: ViT-B/16 (12 blocks) -> 7, 8, 9
DEFAULTS_SUFFIX = ".defaults.json"


@dataclass(frozen=True)
class FFNSite:
    """One block's FFN: where its weights live and how big they are."""

    index: int          # position among all FFN sites, in forward order
    block_path: str     # e.g. "blocks.8" or "layers.2.blocks.3"
    in_features: int    # fc1 input width == fc2 output width
    hidden: int         # FFN hidden units: fc1 rows == fc2 columns

    @property
    def fc1_weight(self) -> str:
        return f"{self.block_path}.mlp.fc1.weight"

    @property
    def fc2_weight(self) -> str:
        return f"{self.block_path}.mlp.fc2.weight"

    def fc1(self, model: nn.Module) -> nn.Linear:
        return model.get_submodule(f"{self.block_path}.mlp.fc1")

    def fc2(self, model: nn.Module) -> nn.Linear:
        return model.get_submodule(f"{self.block_path}.mlp.fc2")


@dataclass(frozen=True)
class EditWindow:
    """A run of consecutive FFN sites that an edit may change."""

    sites: tuple[FFNSite, ...]

    @property
    def start(self) -> int:
        return self.sites[0].index

    @property
    def end(self) -> int:
        return self.sites[-1].index

    @property
    def matrices(self) -> list[tuple[FFNSite, str]]:
        """The edited matrices in order: (site, 'fc1') then (site, 'fc2') for every site."""
        return [(site, which) for site in self.sites for which in ("fc1", "fc2")]

    @property
    def mask_sizes(self) -> list[int]:
        """One mask value per hidden unit for each edited matrix."""
        return [site.hidden for site, _ in self.matrices]

    @property
    def weight_names(self) -> list[str]:
        return [site.fc1_weight if which == "fc1" else site.fc2_weight
                for site, which in self.matrices]

    def describe(self) -> str:
        return f"blocks {self.start}-{self.end} ({', '.join(s.block_path for s in self.sites)})"


def find_ffn_sites(model: nn.Module) -> list[FFNSite]:
    """Every block MLP with Linear ``fc1``/``fc2``, in forward (module registration) order."""
    sites: list[FFNSite] = []
    for name, module in model.named_modules():
        if not name.endswith(".mlp"):
            continue
        fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            continue
        if fc1.out_features != fc2.in_features:
            continue  # gated / unusual MLPs: not an FFN site this method can mask per unit
        sites.append(FFNSite(index=len(sites), block_path=name.removesuffix(".mlp"),
                             in_features=fc1.in_features, hidden=fc1.out_features))
    if not sites:
        raise InvalidInputError(
            f"{type(model).__name__} has no transformer-block FFN (mlp.fc1/mlp.fc2) to edit")
    return sites


def default_window(num_sites: int, length: int = DEFAULT_WINDOW_LENGTH,
                   end_fraction: float = DEFAULT_WINDOW_END) -> tuple[int, int]:
    """(start, end) of the paper's default window: ``length`` blocks ending at ~3/4 depth."""
    length = max(1, min(length, num_sites))
    end = min(num_sites - 1, max(length - 1, int(num_sites * end_fraction)))
    return end - length + 1, end


def edit_window(model: nn.Module, start: int | None = None, end: int | None = None,
                length: int = DEFAULT_WINDOW_LENGTH) -> EditWindow:
    """The window of sites ``start..end`` (inclusive); the default one when not given."""
    sites = find_ffn_sites(model)
    if start is None and end is None:
        start, end = default_window(len(sites), length)
    elif start is None:
        start = max(0, end - length + 1)
    elif end is None:
        end = min(len(sites) - 1, start + length - 1)
    if not (0 <= start <= end < len(sites)):
        raise InvalidInputError(
            f"edit window {start}-{end} is outside the model's {len(sites)} FFN blocks "
            f"(0-{len(sites) - 1})")
    return EditWindow(tuple(sites[start:end + 1]))


def save_default_window(checkpoint: str | Path, window: tuple[int, int],
                        evidence: dict[str, Any] | None = None) -> Path:
    """Record a searched window beside the checkpoint (``<name>.defaults.json``)."""
    path = Path(checkpoint).with_suffix(DEFAULTS_SUFFIX)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update({"window": list(window), "window_search": evidence or {}})
    path.write_text(json.dumps(data, indent=2))
    return path


def saved_default_window(checkpoint: str | Path) -> tuple[int, int] | None:
    """The searched window of a checkpoint, if a window search was saved for it."""
    path = Path(checkpoint).with_suffix(DEFAULTS_SUFFIX)
    if not path.is_file():
        return None
    start, end = json.loads(path.read_text())["window"]
    return int(start), int(end)


@torch.no_grad()
def module_inputs(model: nn.Module, module: nn.Module, images: torch.Tensor,
                  batch_size: int = 128) -> torch.Tensor:
    """What ``module`` receives (its first argument) when ``model`` runs on ``images``, in
    batches: the readings the locate-then-edit editors take (fc1 activations, FFN inputs)."""
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])
    finally:
        handle.remove()
    return torch.cat(captured)
