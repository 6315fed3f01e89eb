"""The mask hypernetwork: from an image's embedding, which FFN units to edit.

One learnable token per edited matrix plus the (projected) embedding of the image go through a
small transformer; token i's head gives one mask value per hidden unit of matrix i. Its size
depends on the model's width and the number of edited matrices, not on depth. It is bound to
the base model it was meta-trained for by a weights fingerprint: any other model is refused,
except descendants of that base (models whose only changed tensors are FFN weights).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import Block
from torch import nn

from .errors import IncompatibleBaseError, VitEditError
from .models import fingerprint_state, tensor_fingerprints
from .sites import EditWindow, edit_window

MASK_SHARPNESS = 3.0  # mask = sigmoid(3 * logit), as the authors' code
MASK_EPS = 1e-3


@dataclass
class HypernetConfig:
    """Everything needed to rebuild the hypernetwork and to know which model it serves."""

    embed_dim: int
    mask_sizes: list[int]
    weight_names: list[str]
    window: tuple[int, int]
    base_fingerprint: str
    base_tensor_fingerprints: dict[str, str]
    architecture: str = ""
    width: int = 128
    depth: int = 3
    num_heads: int = 4
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HypernetConfig:
        data = json.loads(text)
        data["window"] = tuple(data["window"])
        return cls(**data)


@dataclass(frozen=True)
class Lineage:
    """How a model relates to the hypernetwork's base: itself, or a descendant and how far."""

    relation: str                 # "base" or "descendant"
    changed_tensors: tuple[str, ...]


class MaskHypernet(nn.Module):
    """Predicts per-unit edit masks for each matrix of an edit window."""

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.input_proj = nn.Sequential(nn.LayerNorm(config.embed_dim),
                                        nn.Linear(config.embed_dim, width))
        self.tokens = nn.Parameter(torch.randn(len(config.mask_sizes), width) * 0.02)
        self.input_type = nn.Parameter(torch.zeros(1, width))
        self.blocks = nn.Sequential(*[Block(width, config.num_heads, mlp_ratio=2.0,
                                            qkv_bias=True) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleList(nn.Linear(width, size) for size in config.mask_sizes)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Mask logits, one (B, H_i) tensor per edited matrix."""
        batch = embedding.shape[0]
        x = self.input_proj(embedding).unsqueeze(1) + self.input_type
        tokens = self.tokens.unsqueeze(0).expand(batch, -1, -1)
        x = self.norm(self.blocks(torch.cat([x, tokens], dim=1)))
        return [head(x[:, i + 1]) for i, head in enumerate(self.heads)]

    def masks(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Soft masks in (0, 1) per matrix."""
        return [logits_to_mask(logit) for logit in self(embedding)]

    # -- binding to a base model --------------------------------------------------------------
    def window(self, model: nn.Module) -> EditWindow:
        start, end = self.config.window
        window = edit_window(model, start, end)
        if window.mask_sizes != list(self.config.mask_sizes):
            raise IncompatibleBaseError(
                f"hypernetwork masks {self.config.mask_sizes} do not fit the model's window "
                f"{window.describe()} ({window.mask_sizes})")
        return window

    def check_base(self, model: nn.Module) -> Lineage:
        """Refuse models that are neither the base nor a descendant of it (scoped patches
        and side modules, which change no weight, make a descendant too)."""
        return base_lineage(model, self.config.base_fingerprint,
                            self.config.base_tensor_fingerprints, self.config.architecture,
                            "hypernetwork")

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "hypernet.safetensors"),
                  metadata={"base_fingerprint": self.config.base_fingerprint})
        (directory / "hypernet.json").write_text(self.config.to_json())
        return directory

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu"
             ) -> MaskHypernet:
        directory = Path(directory)
        try:
            config = HypernetConfig.from_json((directory / "hypernet.json").read_text())
            state = load_file(str(directory / "hypernet.safetensors"), device=str(map_location))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise VitEditError(f"hypernetwork at {directory} is unreadable: {exc}") from exc
        net = cls(config)
        net.load_state_dict(state, strict=True)
        return net.eval()


def base_lineage(model: nn.Module, base_fingerprint: str, base: dict[str, str],
                 architecture: str, what: str) -> Lineage:
    """How ``model`` relates to the base a learned network (``what``) was meta-trained for:
    the base itself, or a descendant whose only changed tensors are FFN weights (scoped
    patches and side modules, which change no weight, make a descendant too); anything else
    is refused."""
    from .scoped import STACK
    from .side import side_prefixes

    full = model.state_dict()
    added = (f"{STACK}.",) + side_prefixes()
    state = {k: v for k, v in full.items() if not k.startswith(added)}
    scoped = len(state) != len(full)
    current = tensor_fingerprints(state)
    if fingerprint_state(state) == base_fingerprint and not scoped:
        return Lineage("base", ())
    if set(current) != set(base):
        raise IncompatibleBaseError(
            f"{what} was meta-trained for another architecture "
            f"(base {base_fingerprint[:12]}, {architecture})")
    changed = tuple(name for name in base if current[name] != base[name])
    foreign = [name for name in changed if not _is_ffn_weight(name)]
    if foreign:
        raise IncompatibleBaseError(
            f"{what} was meta-trained for base model {base_fingerprint[:12]};"
            f" this model differs in {len(foreign)} non-FFN tensors (e.g. {foreign[0]}), "
            "so it is not a descendant of that base")
    modules = tuple(sorted({k.split(".")[0] for k in set(full) - set(state)}))
    return Lineage("descendant", changed + modules)


def _is_ffn_weight(name: str) -> bool:
    return name.endswith((".mlp.fc1.weight", ".mlp.fc2.weight"))


def logits_to_mask(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(MASK_SHARPNESS * logits).clamp(MASK_EPS, 1 - MASK_EPS)


def new_hypernet(model: nn.Module, window: EditWindow, width: int | None = None, depth: int = 3,
                 num_heads: int = 4, architecture: str = "") -> MaskHypernet:
    """A fresh hypernetwork for ``model``'s ``window`` (width defaults to the model's, max 256)."""
    embed_dim = int(model.num_features)
    width = width or min(embed_dim, 256)
    state = model.state_dict()
    config = HypernetConfig(
        embed_dim=embed_dim, mask_sizes=window.mask_sizes, weight_names=window.weight_names,
        window=(window.start, window.end), base_fingerprint=fingerprint_state(state),
        base_tensor_fingerprints=tensor_fingerprints(state), architecture=architecture,
        width=width, depth=depth, num_heads=num_heads if width % num_heads == 0 else 1)
    return MaskHypernet(config)
