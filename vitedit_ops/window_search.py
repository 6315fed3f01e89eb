"""The paper's greedy search for the edit window, on a validation split.

Start from the best single FFN block, then grow the window one block left or right while the
score improves, up to ``max_length`` blocks. A window's score is the best generalization a
cheap probe editor (random 10% mask, a few learning rates) reaches with mean locality at or
above ``min_locality``; the window is then the base model's default for meta-training
(``vitedit-ops search-window`` saves it beside the weights).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .edit_cases import EditCase, GroupInputs, make_cases
from .editors import create_editor
from .metrics import generalization, locality, predict_logits
from .sites import find_ffn_sites

PROBE_EDITOR = "random_mask"
PROBE_KEEP_FRACTION = 0.10


@dataclass
class WindowScore:
    window: tuple[int, int]
    score: float
    points: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class WindowSearch:
    best: tuple[int, int]
    tried: list[WindowScore]

    def to_dict(self) -> dict[str, Any]:
        return {"best": list(self.best), "tried": [asdict(t) for t in self.tried]}


def score_window(model: nn.Module, window: tuple[int, int], groups: list[GroupInputs],
                 cases: list[EditCase], locality_inputs: torch.Tensor,
                 base_predictions: torch.Tensor, lrs: tuple[float, ...], min_locality: float,
                 k: int) -> WindowScore:
    """Mean GR and LR of the probe editor on ``window`` per learning rate, every case edited,
    measured and reverted on ``model``; the score is the best GR among rates that keep LR."""
    points: dict[str, dict[str, float]] = {}
    for lr in lrs:
        editor = create_editor(PROBE_EDITOR, lr=lr, keep_fraction=PROBE_KEEP_FRACTION,
                               window=window)
        gr, lr_kept = [], []
        for case in (c.with_k(k) for c in cases):
            group = groups[case.group]
            labels = torch.full((len(case.edit_idx),), group.true_class, dtype=torch.long)
            patch = editor.edit(model, group.inputs[list(case.edit_idx)], labels).patch
            patch.apply(model)
            try:
                held_out = group.inputs[list(case.eval_idx)]
                gr.append(generalization(model, held_out, torch.full(
                    (len(held_out),), group.true_class, dtype=torch.long)))
                lr_kept.append(locality(base_predictions, model, locality_inputs))
            finally:
                patch.revert(model)
        points[f"lr={lr:g}"] = {"gr": statistics.fmean(gr), "lr": statistics.fmean(lr_kept)}
    eligible = [p["gr"] for p in points.values() if p["lr"] >= min_locality]
    return WindowScore(window, max(eligible, default=0.0), points)


def greedy_window_search(model: nn.Module, groups: list[GroupInputs],
                         locality_inputs: torch.Tensor, max_length: int = 3, cases: int = 16,
                         k: int = 1, lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3),
                         min_locality: float = 0.95, seed: int = 0,
                         log: Callable[[str], None] = lambda _m: None) -> WindowSearch:
    """Greedy window search; locality is measured against ``model``'s own predictions on
    ``locality_inputs``, and every scored window is kept for the report."""
    depth = len(find_ffn_sites(model))
    chosen = make_cases(groups, k, cases, seed=seed, min_eval=2)
    base_predictions = predict_logits(model, locality_inputs).argmax(-1)
    cache: dict[tuple[int, int], WindowScore] = {}

    def score(window: tuple[int, int]) -> WindowScore:
        if window not in cache:
            cache[window] = score_window(model, window, groups, chosen, locality_inputs,
                                         base_predictions, lrs, min_locality, k)
            log(f"window {window[0]}-{window[1]}: GR {cache[window].score:.3f} "
                f"at LR >= {min_locality}")
        return cache[window]

    best = max((score((b, b)) for b in range(depth)), key=lambda s: s.score)
    while best.window[1] - best.window[0] + 1 < max_length:
        start, end = best.window
        grown = [score(w) for w in ((start - 1, end), (start, end + 1))
                 if w[0] >= 0 and w[1] < depth]
        candidate = max(grown, key=lambda s: s.score, default=None)
        if candidate is None or candidate.score < best.score:
            break
        best = candidate
    return WindowSearch(best.window, list(cache.values()))
