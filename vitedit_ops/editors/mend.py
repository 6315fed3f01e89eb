"""MEND (Mitchell et al., ICLR 2022): a low-rank network maps each token's gradient factors
to new ones, and their outer products make the update.

A linear layer's gradient is ``sum_t delta_t u_t^T``. MEND normalises each token's
``(u_t, delta_t)`` by running statistics, passes it through a residual low-rank MLP that
starts as the identity (one MLP per matrix shape, shared between the window's matrices of that
shape, with a per-matrix scale and shift), and edits with ``sum_t delta~_t u~_t^T`` times a
learned per-matrix step. The gradient's rank-one structure keeps the network small: its
input is ``in + out`` wide, not ``in x out``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..learned_update import EditInputs, Factors, UpdateNet, UpdaterConfig, register_updater
from .base import register_editor
from .learned import LearnedUpdateEditor

DEFAULT_RANK = 32
STAT_MOMENTUM = 0.01   # running statistics: a plain mean over the first 100 batches, then EMA
NORM_EPS = 1e-12


class _ResidualLowRank(nn.Module):
    """``z + up(relu(down(z)))`` twice, ``up`` starting at zero: the identity at first."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(dim, rank) for _ in range(2))
        self.up = nn.ModuleList(nn.Linear(rank, dim) for _ in range(2))
        for up in self.up:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for down, up in zip(self.down, self.up):
            z = z + up(torch.relu(down(z)))
        return z


@register_updater("mend")
class MENDNet(UpdateNet):
    """MEND's gradient decomposition network for every matrix of an edit window."""

    kind = "mend"
    SIZES = {"rank": DEFAULT_RANK}

    def __init__(self, config: UpdaterConfig) -> None:
        super().__init__(config)
        rank = int(config.options["rank"])
        shapes = [tuple(s) for s in config.shapes]
        self.nets = nn.ModuleDict({_key(s): _ResidualLowRank(sum(s), rank)
                                   for s in dict.fromkeys(shapes)})
        self.scale = nn.ParameterList(nn.Parameter(torch.ones(sum(s))) for s in shapes)
        self.shift = nn.ParameterList(nn.Parameter(torch.zeros(sum(s))) for s in shapes)
        for j, s in enumerate(shapes):
            self.register_buffer(f"mean{j}", torch.zeros(sum(s)))
            self.register_buffer(f"square{j}", torch.ones(sum(s)))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _tokens(factors: Factors) -> torch.Tensor:
        return torch.cat([factors.u, factors.delta], dim=-1)   # (E, T, in + out)

    @torch.no_grad()
    def observe(self, factors: Sequence[Factors]) -> None:
        weight = max(1.0 / (int(self.seen) + 1), STAT_MOMENTUM)
        for j, f in enumerate(factors):
            z = self._tokens(f).flatten(0, 1)
            mean, square = getattr(self, f"mean{j}"), getattr(self, f"square{j}")
            mean.lerp_(z.mean(0), weight)
            square.lerp_(z.pow(2).mean(0), weight)
        self.seen += 1

    def raw_updates(self, factors: Sequence[Factors], inputs: EditInputs
                    ) -> list[torch.Tensor]:
        out = []
        for j, f in enumerate(factors):
            mean, square = getattr(self, f"mean{j}"), getattr(self, f"square{j}")
            std = (square - mean.pow(2)).clamp_min(0).sqrt() + NORM_EPS
            shape = tuple(self.config.shapes[j])
            z = (self._tokens(f) - mean) / std
            h = self.nets[_key(shape)](z) * self.scale[j] + self.shift[j]
            u, delta = h.split([shape[1], shape[0]], dim=-1)
            out.append(torch.bmm(delta.transpose(1, 2), u))
        return out


def _key(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in shape)


@register_editor("mend")
@dataclass(kw_only=True)
class MENDEditor(LearnedUpdateEditor):
    """One-step edits by a meta-trained MEND network (``vitedit_ops.update_metatrain``)."""

    name: str = "mend"
    kind = "mend"
