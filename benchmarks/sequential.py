"""Sequential editing: many error groups fixed one after another on the same model.

This is what nightly runs do, and what the paper does not study: after each edit we measure the
newest edit's reliability, retention of every earlier fix, locality against the original model
and the growth of the edited matrices' norms. Edits that fail are left out, as the product
does, and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vitedit_ops.edit_cases import GroupInputs
from vitedit_ops.editors import Editor
from vitedit_ops.metrics import norm_growth, predict_logits
from vitedit_ops.patch import Patch, revert_stack

from .grid import EvalSets


def run_sequential(model: nn.Module, family: str, make_editor: Callable[[], Editor],
                   groups: list[GroupInputs], evals: EvalSets, k: int = 1,
                   weight_names: list[str] | None = None,
                   on_row: Callable[[dict[str, Any]], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Edit ``groups`` in order with fresh editors; the model is restored afterwards."""
    base_state = {n: p.detach().clone() for n, p in model.named_parameters()}
    applied: list[Patch] = []
    fixed_inputs: list[torch.Tensor] = []
    fixed_labels: list[torch.Tensor] = []
    rows: list[dict[str, Any]] = []
    try:
        for step, group in enumerate(groups, start=1):
            images = group.inputs[:k]
            labels = torch.full((len(images),), group.true_class, dtype=torch.long)
            result = make_editor().edit(model, images, labels)
            if result.success:
                result.patch.apply(model)
                applied.append(result.patch)
            earlier_ok = float("nan")
            if fixed_inputs:
                earlier = predict_logits(model, torch.cat(fixed_inputs)).argmax(-1)
                earlier_ok = float((earlier == torch.cat(fixed_labels)).float().mean())
            if result.success:
                fixed_inputs.append(images)
                fixed_labels.append(labels)
            newest = float((predict_logits(model, images).argmax(-1) == labels).float().mean())
            preds = predict_logits(model, evals.locality_inputs).argmax(-1)
            names = weight_names or [n for n in base_state if n.endswith(".mlp.fc1.weight")
                                     or n.endswith(".mlp.fc2.weight")]
            growth = norm_growth(base_state, model, names)
            row = {"family": family, "step": step, "group": group.name,
                   "success": result.success, "newest_reliability": newest,
                   "earlier_retention": earlier_ok,
                   "locality": float((preds == evals.base_predictions).float().mean()),
                   "max_norm_growth": max(growth.values()), "accepted": len(applied)}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        revert_stack(model, applied)
    return rows
