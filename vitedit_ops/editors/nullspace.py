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

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..delta import UnitDelta
from ..errors import InvalidInputError
from ..models import fingerprint
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


_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, ...], list[torch.Tensor]] = OrderedDict()
_lock = threading.Lock()


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    return hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}|".encode()
                          + data.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


@torch.no_grad()
def window_moments(model: nn.Module, window: EditWindow, preserved: torch.Tensor,
                   batch_size: int = 256) -> list[torch.Tensor]:
    """Per edited matrix, the second moment of its input over ``preserved``: the FFN input for
    ``fc1``, every hidden unit's activation for ``fc2``.

    They depend only on (model, pool, window), not on which units an edit keeps, so they are
    computed once and kept for the next edits: a night's units, edited on copies of one
    champion against one pool, pay for one forward over the pool instead of one each.
    """
    key = (fingerprint(model), _digest(preserved), window.describe())
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    moments: list[torch.Tensor | None] = [None] * len(window.matrices)
    handles = []

    def accumulate(index: int, inputs: torch.Tensor) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).double()
        moment = flat.T @ flat
        moments[index] = moment if moments[index] is None else moments[index] + moment

    for index, (site, which) in enumerate(window.matrices):
        module = site.fc1(model) if which == "fc1" else site.fc2(model)
        handles.append(module.register_forward_hook(
            lambda _m, args, _out, i=index: accumulate(i, args[0])))
    try:
        device = next(model.parameters()).device
        for start in range(0, len(preserved), batch_size):
            model(preserved[start:start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    computed = [m.cpu() for m in moments]
    with _lock:
        _cache[key] = computed
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return computed


def pooled_moments(model: nn.Module, window: EditWindow, preserved: torch.Tensor,
                   protected: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The preserved pool's moments, with the ``protected`` images (earlier edits' fixes)
    weighing as much as the whole pool: a few dozen fixes would vanish in the energy of
    hundreds of clean images, and they are what the next edit most easily undoes (AlphaEdit
    projects against earlier edits' keys as well)."""
    pool = window_moments(model, window, preserved)
    if protected is None or len(protected) == 0:
        return pool
    fixes = window_moments(model, window, protected)
    return [p / len(preserved) + f / len(protected) for p, f in zip(pool, fixes)]


def preserved_projectors(model: nn.Module, window: EditWindow, units: Sequence[torch.Tensor],
                         preserved: torch.Tensor, energy: float,
                         protected: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One projector per edited matrix: over the FFN input width for ``fc1`` rows, over the
    kept units for ``fc2`` columns, from the unedited model's forward on ``preserved`` (and
    ``protected``, see :func:`pooled_moments`)."""
    projectors = []
    for moment, (_site, which), kept in zip(pooled_moments(model, window, preserved, protected),
                                            window.matrices, units):
        if which == "fc2":
            keep = kept.to(torch.long)
            moment = moment.index_select(0, keep).index_select(1, keep)
        projectors.append(complement_projector(moment, energy))
    return projectors


def confined_unit_deltas(model: nn.Module, window: EditWindow, units: Sequence[torch.Tensor],
                         preserved: torch.Tensor | None, energy: float,
                         protected: torch.Tensor | None = None) -> list[UnitDelta]:
    """Unit deltas for the kept units, confined against ``preserved`` (and ``protected``)
    when ``energy`` > 0 and preserved images exist (otherwise plain unit deltas)."""
    if energy <= 0 or preserved is None or len(preserved) == 0:
        return unit_deltas(window, units)
    return unit_deltas(window, units, preserved_projectors(model, window, units, preserved,
                                                           energy, protected))
