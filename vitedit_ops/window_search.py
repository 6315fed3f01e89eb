"""The paper's greedy search for the edit window, on a validation split.

Start from the best single FFN block, then grow the window one block left or right while the
score improves, up to ``max_length`` blocks. A window's score is the best generalization a
cheap probe editor (random 10% mask, a few learning rates) reaches with mean locality at or
above ``min_locality``; the window is then the base model's default for meta-training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..sites import find_ffn_sites
from .cases import BenchGroup, make_cases
from .frontier import point_means
from .grid import EvalSets, MethodPoint, run_grid

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


def score_window(model: nn.Module, window: tuple[int, int], evals: EvalSets, cases,
                 lrs: tuple[float, ...], min_locality: float, k: int) -> WindowScore:
    points = [MethodPoint("probe", "random_mask", "keep=0.10", lr,
                          (("keep_fraction", 0.10), ("window", window))) for lr in lrs]
    rows = run_grid(model, points, cases, [k], evals, lambda _p: {})
    means = point_means(rows)
    eligible = [v["gr"] for v in means.values() if v["lr_locality"] >= min_locality]
    return WindowScore(window, max(eligible) if eligible else 0.0,
                       {f"lr={key[2]:g}": {"gr": v["gr"], "lr": v["lr_locality"]}
                        for key, v in means.items()})


def greedy_window_search(model: nn.Module, groups: list[BenchGroup], evals: EvalSets,
                         max_length: int = 3, cases: int = 16, k: int = 1,
                         lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3),
                         min_locality: float = 0.95, seed: int = 0,
                         log: Callable[[str], None] = lambda _m: None) -> WindowSearch:
    """Greedy window search; every scored window is kept for the report."""
    depth = len(find_ffn_sites(model))
    chosen = make_cases(groups, k, cases, seed=seed, min_eval=2)
    cache: dict[tuple[int, int], WindowScore] = {}

    def score(window: tuple[int, int]) -> WindowScore:
        if window not in cache:
            cache[window] = score_window(model, window, evals, chosen, lrs, min_locality, k)
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
