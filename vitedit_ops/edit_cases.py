"""Error groups as model inputs, and the paired edit cases drawn from them.

An edit case says which images of a group an editor edits on and which held-out images of the
same group measure its generalization. Every editor (or window) is evaluated on exactly the
same cases, so differences can be measured per case (paired) rather than between means: the
window search (``window_search.py``) and the benchmarks (``benchmarks/``) both draw them here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GroupInputs:
    """One (true, predicted) error group as model inputs; ``shift`` names what produced it
    (a reference shift such as ``"rotate"``)."""

    shift: str
    true_class: int
    predicted_class: int
    inputs: torch.Tensor
    ids: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.shift}:{self.true_class}->{self.predicted_class}"


@dataclass(frozen=True)
class EditCase:
    """Edit on ``edit_idx`` of a group; measure generalization on ``eval_idx``.

    ``edit_idx`` of a k-image case starts with the 1-image case's image, and both share
    ``eval_idx``: k = 1 and k = 4 are compared on the same held-out images.
    """

    case_id: int
    group: int
    edit_idx: tuple[int, ...]
    eval_idx: tuple[int, ...]
    split: str  # "select" (operating points are chosen here) or "eval" (reported here)

    def with_k(self, k: int) -> EditCase:
        return EditCase(self.case_id, self.group, self.edit_idx[:k], self.eval_idx, self.split)


def make_cases(groups: list[GroupInputs], max_k: int, count: int, seed: int = 0,
               min_eval: int = 3) -> list[EditCase]:
    """Up to ``count`` cases spread round-robin over the groups, disjoint edit sets within a
    group; alternate cases go to the selection and evaluation halves."""
    generator = torch.Generator().manual_seed(seed)
    pools = []
    for g in groups:
        order = torch.randperm(len(g.inputs), generator=generator).tolist()
        pools.append(order)
    cases: list[EditCase] = []
    cursor = [0] * len(groups)
    progress = True
    while len(cases) < count and progress:
        progress = False
        for gi, group in enumerate(groups):
            if len(cases) >= count:
                break
            order = pools[gi]
            start = cursor[gi]
            if start + max_k + min_eval > len(order):
                continue
            edit = tuple(order[start:start + max_k])
            cursor[gi] += max_k
            rest = tuple(i for i in range(len(group.inputs)) if i not in edit)
            split = "select" if len(cases) % 2 == 0 else "eval"
            cases.append(EditCase(len(cases), gi, edit, rest, split))
            progress = True
    return cases
