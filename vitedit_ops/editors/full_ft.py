"""Full fine-tuning baseline: every weight of the model may change.

It reaches reliability 1.0 easily and shows what unconstrained editing costs in locality and
compute. The base weights stay untouched: the change is a delta added through
``torch.func.functional_call``, and its patch is dense over every parameter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..models import fingerprint
from ..patch import Patch
from .base import (Editor, EditResult, OptimConfig, frozen, make_optimizer, register_editor,
                   validate_edit_inputs)


@register_editor("full_ft")
@dataclass(kw_only=True)
class FullFinetuneEditor(Editor):
    """Fine-tune all parameters with the same optimiser, step limit and stopping rule."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    name: str = "full_ft"

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = validate_edit_inputs(model, images, labels)
        start = time.perf_counter()
        base_fp = fingerprint(model)
        base = {n: p.detach() for n, p in model.named_parameters()}
        deltas = {n: torch.zeros_like(p, requires_grad=True) for n, p in base.items()}
        optimizer = make_optimizer(self.optim.optimizer, list(deltas.values()), self.optim.lr)
        history: list[float] = []
        steps = 0
        with frozen(model):
            with torch.no_grad():
                before = model(images).argmax(-1).cpu()
            while True:
                params = {n: base[n] + deltas[n] for n in base}
                logits = functional_call(model, params, (images,))
                ce = F.cross_entropy(logits, labels)
                history.append(float(ce.detach()))
                right = bool((logits.argmax(-1) == labels).all())
                if (right and history[-1] <= self.optim.ce_target) or \
                        steps >= self.optim.max_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                ce.backward()
                optimizer.step()
                steps += 1
        after = logits.argmax(-1).detach().cpu()
        patch = Patch.from_deltas(model, [(n, "dense", None, d) for n, d in deltas.items()],
                                  base_fp, metadata={"method": self.name})
        return EditResult(
            method=self.name, patch=patch, success=bool((after == labels.cpu()).all()),
            steps=steps, seconds=time.perf_counter() - start, loss_history=history,
            labels=labels.cpu(), predictions_before=before, predictions_after=after,
            settings={"lr": self.optim.lr, "optimizer": self.optim.optimizer,
                      "max_steps": self.optim.max_steps, "ce_target": self.optim.ce_target})
