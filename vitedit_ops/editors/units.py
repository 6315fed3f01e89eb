"""Choosing which hidden units an edit may touch, from per-unit scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..delta import UnitDelta
from ..errors import InvalidInputError
from ..sites import EditWindow


def select_top_units(scores: Sequence[torch.Tensor], keep_fraction: float) -> list[torch.Tensor]:
    """Keep the top ``keep_fraction`` of all units jointly across matrices (the paper's rule):
    a matrix the scores favour gets more units than one they do not."""
    if not 0 < keep_fraction <= 1:
        raise InvalidInputError(f"keep fraction must be in (0, 1], got {keep_fraction}")
    flat = torch.cat([s.detach().float().reshape(-1).cpu() for s in scores])
    k = max(1, round(keep_fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, k, sorted=False).indices] = True
    out, offset = [], 0
    for s in scores:
        out.append(torch.nonzero(chosen[offset:offset + s.numel()]).flatten())
        offset += s.numel()
    return out


def unit_deltas(window: EditWindow, units: Sequence[torch.Tensor],
                projectors: Sequence[torch.Tensor] | None = None) -> list[UnitDelta]:
    """One row/column delta per edited matrix, for the selected units (optionally confined
    by a projector per matrix, see ``nullspace``)."""
    projectors = projectors or [None] * len(units)
    return [UnitDelta(site, which, idx, projector) for (site, which), idx, projector
            in zip(window.matrices, units, projectors)]


def kept_units_by_name(window: EditWindow, units: Sequence[torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    return dict(zip(window.weight_names, units))


def kept_fraction(window: EditWindow, units: Sequence[torch.Tensor]) -> float:
    return sum(int(u.numel()) for u in units) / sum(window.mask_sizes)
