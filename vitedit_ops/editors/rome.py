"""ROME (Meng et al., NeurIPS 2022): a rank-one update of one window FFN's ``fc2``.

ROME treats ``fc2`` as a key-value memory: the key is ``fc2``'s input (the ``fc1``
activation), the value its output. The update ``W += lam u^T`` with ``u = C^-1 k* /
(k*^T C^-1 k*)`` writes the value ``W k* + lam`` for the key ``k*`` and disturbs other keys
as little as the key covariance ``C`` allows; ``lam`` (the value, less what ``W`` already
gives) is optimised so that the edit images get their true class, with the update in place.

The key ``k*`` is the ``fc1`` activation averaged over the patch tokens of the edit images
(and over the images of a group edit, one fact per edit). ROME reads the subject's last
token; an image has no such token: the class token at a window block has only begun to
gather the image and Swin has none, while the shifted content that makes the error lives
in the patch tokens, and their mean is what the images of an error group share. The update
then acts on every token in proportion to its alignment with ``u``.

``C`` is the second moment of the ``fc1`` activations of every token of the preserved pool
(plus ``ridge`` times its mean diagonal), never of the gate's suite: the images the change
must leave alone decide which directions it may use.

As in ROME's ``compute_v``, ``lam`` is projected after every step into the ball of radius
``clamp_norm_factor`` times the norm of the value the key reads now (``W k* + b``); the
paper's default factor is 4. Without it ``C^-1`` lets the value grow wherever the pool's
variance is low (fc2's norm grew 12-21x over three sequential edits); ``inf`` turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..delta import MatrixDelta
from ..errors import InvalidInputError
from ..scope import prefix_tokens
from ..sites import EditWindow, FFNSite, edit_window, module_inputs
from .base import (Editor, EditResult, OptimConfig, frozen, register_editor,
                   window_edit)
from .grace import pick_site, token_mean

COVARIANCE_IMAGES = 256  # preserved images whose tokens estimate the key covariance
CLAMP_NORM_FACTOR = 4.0  # ROME's clamp_norm_factor (its GPT-2 XL and GPT-J settings)


class RankOneDelta(MatrixDelta):
    """``fc2 += lam u^T``: ``u`` fixed by the key and the covariance, ``lam`` trained."""

    def __init__(self, site: FFNSite, direction: torch.Tensor,
                 max_norm: float = float("inf")) -> None:
        super().__init__()
        self.weight_name, self.which = site.fc2_weight, "fc2"
        self.register_buffer("direction", direction.detach().float())
        self.value = nn.Parameter(torch.zeros(site.in_features))
        self.max_norm = max_norm

    def project_(self) -> None:
        norm = float(self.value.norm())
        if norm > self.max_norm:
            self.value.mul_(self.max_norm / norm)

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out + (x @ self.direction)[..., None] * self.value

    def dense(self) -> torch.Tensor:
        return self.value[:, None] * self.direction[None]


def fc2_inputs(model: nn.Module, site: FFNSite, images: torch.Tensor, batch_size: int = 128
               ) -> torch.Tensor:
    """``fc2``'s input (the ``fc1`` activation) for every token: (N, ..., tokens, hidden)."""
    return module_inputs(model, site.fc2(model), images, batch_size)


def rome_direction(key: torch.Tensor, pool_keys: torch.Tensor, ridge: float) -> torch.Tensor:
    """``u = C^-1 k / (k^T C^-1 k)`` (so ``u . k = 1``), ``C`` the pool keys' second moment."""
    keys = pool_keys.double()
    second = keys.T @ keys / len(keys)
    second += ridge * second.diagonal().mean() * torch.eye(len(second), dtype=keys.dtype,
                                                            device=keys.device)
    solved = torch.linalg.solve(second, key.double())
    return (solved / (solved @ key.double())).float()


@register_editor("rome")
@dataclass(kw_only=True)
class RomeEditor(Editor):
    """ROME's rank-one ``fc2`` update at window block ``site`` (default: the window's middle).

    Needs a preserved pool for the key covariance. ``clamp_norm_factor`` bounds the value's
    norm relative to the key's current value (``inf``: unbounded).
    """

    window: tuple[int, int] | None = None
    site: int | None = None  # position in the window; None: its middle block
    ridge: float = 1e-2
    clamp_norm_factor: float = CLAMP_NORM_FACTOR
    preserved: torch.Tensor | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2))
    name: str = "rome"
    needs_preserved = "its key covariance is estimated on it"

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = self.checked_inputs(model, images, labels)
        if not self.ridge >= 0:
            raise InvalidInputError(f"ROME's ridge must be >= 0, got {self.ridge}")
        if not self.clamp_norm_factor > 0:
            raise InvalidInputError("ROME's clamp_norm_factor must be > 0 (inf: no clamp), "
                                    f"got {self.clamp_norm_factor}")
        window = edit_window(model, *(self.window or (None, None)))
        position = len(window.sites) // 2 if self.site is None else self.site
        site = pick_site(window, position)
        prefix = prefix_tokens(model)
        with frozen(model):
            key = token_mean(fc2_inputs(model, site, images), prefix).mean(0)
            pool = self.preserved[:COVARIANCE_IMAGES].to(images.device)
            pool_keys = fc2_inputs(model, site, pool).flatten(0, -2)
            current = float(site.fc2(model)(key).norm())  # the value the key reads now
            delta = RankOneDelta(site, rome_direction(key, pool_keys, self.ridge),
                                 max_norm=self.clamp_norm_factor * current)
        result = window_edit(self.name, model, EditWindow((site,)), [delta], images, labels,
                             self.optim, settings={"ridge": self.ridge, "site": site.index,
                                                   "covariance_tokens": len(pool_keys),
                                                   "clamp_norm_factor": self.clamp_norm_factor,
                                                   "value_norm_limit": delta.max_norm})
        result.settings["value_norm"] = float(delta.value.detach().norm())
        return result
