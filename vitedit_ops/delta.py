"""Trainable weight deltas on the edit window's FFNs, applied through forward hooks.

The base weights are never copied or modified while an edit is optimised: each edited
``fc1``/``fc2`` gets a hook that adds the delta's contribution to its output. Row/column deltas
cost only the touched units (and their weight gradients only those rows), which is what makes
a localized edit cheaper than fine-tuning. ``materialize`` turns a delta into patch entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .sites import EditWindow, FFNSite


class MatrixDelta(nn.Module):
    """The change to one FFN matrix, as a contribution to the layer's output."""

    weight_name: str
    which: str  # "fc1" or "fc2"

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The layer's output with this delta's contribution for input ``x`` added."""
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The delta as a dense weight-shaped tensor."""
        raise NotImplementedError

    def patch_entry(self) -> tuple[str, str, torch.Tensor | None, torch.Tensor]:
        return self.weight_name, "dense", None, self.dense().detach()

    def project_(self) -> None:
        """Called after every optimiser step: a delta with a constraint puts its parameters
        back inside it (ROME's value-norm ball); unconstrained deltas keep them."""

    def penalty_l1(self) -> torch.Tensor:
        return sum(p.abs().sum() for p in self.parameters())

    def penalty_l2(self) -> torch.Tensor:
        return sum(p.pow(2).sum() for p in self.parameters())


class UnitDelta(MatrixDelta):
    """Only selected hidden units change: rows of ``fc1`` or columns of ``fc2``.

    With a ``projector`` (see ``editors.nullspace``) the change is ``values @ projector``,
    so it stays in the allowed subspace whatever the optimiser does to ``values``.
    """

    def __init__(self, site: FFNSite, which: str, units: torch.Tensor,
                 projector: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight_name = site.fc1_weight if which == "fc1" else site.fc2_weight
        self.which = which
        self.shape = (site.hidden, site.in_features) if which == "fc1" else \
            (site.in_features, site.hidden)
        self.register_buffer("units", units.to(torch.long).sort().values)
        k = int(self.units.numel())
        self.values = nn.Parameter(torch.zeros((k, site.in_features) if which == "fc1"
                                               else (site.in_features, k)))
        self.register_buffer("projector", projector)

    @property
    def change(self) -> torch.Tensor:
        """The rows/columns actually added (the projected values when a projector is set)."""
        return self.values if self.projector is None else self.values @ self.projector

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.units.numel() == 0:
            return out
        if self.which == "fc1":  # selected hidden outputs change
            return out.index_add(-1, self.units, F.linear(x, self.change))
        return out + F.linear(x.index_select(-1, self.units), self.change)

    def dense(self) -> torch.Tensor:
        full = torch.zeros(self.shape, device=self.values.device, dtype=self.values.dtype)
        if self.which == "fc1":
            full[self.units] = self.change
        else:
            full[:, self.units] = self.change
        return full

    def patch_entry(self) -> tuple[str, str, torch.Tensor | None, torch.Tensor]:
        kind = "rows" if self.which == "fc1" else "cols"
        return self.weight_name, kind, self.units.detach(), self.change.detach()


class DenseDelta(MatrixDelta):
    """Every weight of the matrix may change (window fine-tuning, FT-L1, FT-L2)."""

    def __init__(self, site: FFNSite, which: str) -> None:
        super().__init__()
        self.weight_name = site.fc1_weight if which == "fc1" else site.fc2_weight
        self.which = which
        shape = (site.hidden, site.in_features) if which == "fc1" else \
            (site.in_features, site.hidden)
        self.values = nn.Parameter(torch.zeros(shape))

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out + F.linear(x, self.values)

    def dense(self) -> torch.Tensor:
        return self.values


class LoRADelta(MatrixDelta):
    """A rank-r change ``B @ A`` (B starts at zero so the edit starts at the base model)."""

    def __init__(self, site: FFNSite, which: str, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight_name = site.fc1_weight if which == "fc1" else site.fc2_weight
        self.which = which
        out_f, in_f = (site.hidden, site.in_features) if which == "fc1" else \
            (site.in_features, site.hidden)
        self.a = nn.Parameter(torch.randn(rank, in_f, generator=generator) / in_f ** 0.5)
        self.b = nn.Parameter(torch.zeros(out_f, rank))

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out + F.linear(F.linear(x, self.a), self.b)

    def dense(self) -> torch.Tensor:
        return self.b @ self.a


@contextmanager
def hooked(model: nn.Module, window: EditWindow, deltas: Sequence[MatrixDelta]
           ) -> Iterator[None]:
    """While active, the window's fc layers output ``base(x) + delta(x)``."""
    by_name = {d.weight_name: d for d in deltas}
    handles = []
    for site, which in window.matrices:
        name = site.fc1_weight if which == "fc1" else site.fc2_weight
        delta = by_name.get(name)
        if delta is None:
            continue
        module = site.fc1(model) if which == "fc1" else site.fc2(model)
        handles.append(module.register_forward_hook(
            lambda _m, args, out, d=delta: d.add_to(out, args[0])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
