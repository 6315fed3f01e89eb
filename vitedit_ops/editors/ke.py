"""KE, Knowledge Editor (De Cao et al., EMNLP 2021): a network reads the edit and scales,
masks and shifts the fine-tuning gradient of every matrix.

From a condition vector (here: the edit images' pooled embedding at the base, for the
paper's LSTM over the input text, and the target class), an MLP gives per matrix
``alpha, beta`` (out) and ``gamma, delta`` (in) and a gate ``eta``; the update is
``sigmoid(eta) * (sigmoid(alpha) gamma^T * grad + sigmoid(beta) delta^T)``, times a learned
per-matrix step. Unlike MEND it sees the whole gradient but changes it only through rank-one
masks, and unlike MEND it reads the edit itself, not only its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..learned_update import EditInputs, Factors, UpdateNet, UpdaterConfig, register_updater
from .base import register_editor
from .learned import LearnedUpdateEditor

DEFAULT_HIDDEN = 256
HEAD_INIT_STD = 1e-2
GAMMA_START = 2.0   # sigmoid(0) * 2 = 1: the untrained update is the plain gradient, halved


@register_updater("ke")
class KENet(UpdateNet):
    """KE's conditioned gradient masks for every matrix of an edit window."""

    kind = "ke"
    SIZES = {"hidden": DEFAULT_HIDDEN}

    def __init__(self, config: UpdaterConfig) -> None:
        super().__init__(config)
        hidden = int(config.options["hidden"])
        self.embed = nn.Sequential(nn.LayerNorm(config.embed_dim),
                                   nn.Linear(config.embed_dim, hidden))
        self.classes = nn.Linear(config.num_classes, hidden, bias=False)
        self.body = nn.Sequential(nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.heads = nn.ModuleList()
        for out_f, in_f in (tuple(s) for s in config.shapes):
            head = nn.Linear(hidden, 2 * out_f + 2 * in_f + 1)
            nn.init.normal_(head.weight, std=HEAD_INIT_STD)
            nn.init.zeros_(head.bias)
            with torch.no_grad():
                head.bias[out_f:out_f + in_f] = GAMMA_START
            self.heads.append(head)

    def raw_updates(self, factors: Sequence[Factors], inputs: EditInputs
                    ) -> list[torch.Tensor]:
        condition = self.body(self.embed(inputs.embedding)
                              + self.classes(inputs.labels.to(inputs.embedding.dtype)))
        out = []
        for head, f, shape in zip(self.heads, factors, self.config.shapes):
            out_f, in_f = shape
            alpha, gamma, beta, delta, eta = head(condition).split(
                [out_f, in_f, out_f, in_f, 1], dim=-1)
            scale = torch.sigmoid(alpha).unsqueeze(2) * gamma.unsqueeze(1)
            shift = torch.sigmoid(beta).unsqueeze(2) * delta.unsqueeze(1)
            gate = torch.sigmoid(eta).unsqueeze(2)
            out.append(gate * (scale * f.gradient() + shift))
        return out


@register_editor("ke")
@dataclass(kw_only=True)
class KEEditor(LearnedUpdateEditor):
    """One-step edits by a meta-trained KE network (``vitedit_ops.update_metatrain``)."""

    name: str = "ke"
    kind = "ke"
