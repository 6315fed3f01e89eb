"""Keep an edit out of the directions that unrelated images use (null-space edits).

A change ``dw`` to an ``fc1`` row alters that unit's pre-activation by ``dw . x`` for every
FFN input ``x``. Confining ``dw`` to the orthogonal complement of the subspace holding
``energy`` of the preserved images' second moment leaves their activations (nearly) as they
were, while inputs that stick out of that subspace (shifted images, the usual production
error) still move. ``fc2`` column changes are confined the same way against the kept units'
activations on preserved images. AlphaEdit (ICLR 2025) projects LLM FFN edits like this;
here it is an option of the masked editors, measured in docs/frontier.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..delta import UnitDelta
from ..errors import InvalidInputError
from ..sites import EditWindow
from .units import unit_deltas


def complement_projector(moment: torch.Tensor, energy: float) -> torch.Tensor:
    """``I - U U^T`` where ``U`` spans the top eigenvectors holding ``energy`` of ``moment``."""
    if not 0 < energy < 1:
        raise InvalidInputError(f"null-space energy must be in (0, 1), got {energy}")
    values, vectors = torch.linalg.eigh(moment.double())
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    eye = torch.eye(len(moment), dtype=torch.float64)
    total = float(values.sum())
    if total <= 0:
        return eye.float()
    rank = int(torch.searchsorted(values.cumsum(0) / total, torch.tensor(energy,
                                                                         dtype=torch.float64)))
    basis = vectors[:, :rank + 1]
    return (eye - basis @ basis.T).float()


@torch.no_grad()
def preserved_projectors(model: nn.Module, window: EditWindow, units: Sequence[torch.Tensor],
                         preserved: torch.Tensor, energy: float, batch_size: int = 256
                         ) -> list[torch.Tensor]:
    """One projector per edited matrix: over the FFN input width for ``fc1`` rows, over the
    kept units for ``fc2`` columns, from the unedited model's forward on ``preserved``."""
    moments: list[torch.Tensor | None] = [None] * len(window.matrices)
    handles = []

    def accumulate(index: int, keep: torch.Tensor | None, inputs: torch.Tensor) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).double()
        if keep is not None:
            flat = flat.index_select(-1, keep.to(flat.device))
        moment = flat.T @ flat
        moments[index] = moment if moments[index] is None else moments[index] + moment

    for index, ((site, which), kept) in enumerate(zip(window.matrices, units)):
        module = site.fc1(model) if which == "fc1" else site.fc2(model)
        keep = None if which == "fc1" else kept.to(torch.long)
        handles.append(module.register_forward_hook(
            lambda _m, args, _out, i=index, k=keep: accumulate(i, k, args[0])))
    try:
        device = next(model.parameters()).device
        for start in range(0, len(preserved), batch_size):
            model(preserved[start:start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return [complement_projector(m.cpu(), energy) for m in moments]


def confined_unit_deltas(model: nn.Module, window: EditWindow, units: Sequence[torch.Tensor],
                         preserved: torch.Tensor | None, energy: float) -> list[UnitDelta]:
    """Unit deltas for the kept units, confined against ``preserved`` when ``energy`` > 0
    and preserved images exist (otherwise plain unit deltas)."""
    if energy <= 0 or preserved is None or len(preserved) == 0:
        return unit_deltas(window, units)
    return unit_deltas(window, units, preserved_projectors(model, window, units, preserved,
                                                           energy))
