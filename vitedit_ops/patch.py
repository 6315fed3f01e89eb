"""Sparse, revertible edit patches.

An edit never rewrites a model in place behind the caller's back: it yields a :class:`Patch`
that records, for every touched weight, the touched rows/columns (or the whole tensor) with
their values *before* and *after*. Applying writes the after-values, reverting writes the
before-values back, so revert is bit-identical by construction, and both refuse to run when the
current values are not the ones the patch expects (wrong base, wrong order of stacking).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import IncompatibleBaseError, PatchConflictError, VitEditError

PATCH_FORMAT = "vitedit-patch/1"
Kind = Literal["rows", "cols", "dense"]


@dataclass
class PatchEntry:
    """The change to one parameter: selected rows, selected columns, or the whole tensor."""

    param: str
    kind: Kind
    before: torch.Tensor
    after: torch.Tensor
    index: torch.Tensor | None = None

    def _view(self, weight: torch.Tensor) -> torch.Tensor:
        if self.kind == "rows":
            return weight[self.index]
        if self.kind == "cols":
            return weight[:, self.index]
        return weight

    def _write(self, weight: torch.Tensor, values: torch.Tensor) -> None:
        values = values.to(weight.device, weight.dtype)
        if self.kind == "rows":
            weight[self.index] = values
        elif self.kind == "cols":
            weight[:, self.index] = values
        else:
            weight.copy_(values)

    @property
    def num_values(self) -> int:
        return self.after.numel()

    @property
    def units(self) -> int:
        """Touched rows/columns (dense: all rows)."""
        return int(self.index.numel()) if self.index is not None else int(self.after.shape[0])


@dataclass
class Patch:
    """A set of :class:`PatchEntry` plus the fingerprint of the weights it applies to."""

    entries: list[PatchEntry]
    base_fingerprint: str
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_deltas(cls, model: nn.Module, deltas: Iterable[tuple[str, Kind, torch.Tensor | None,
                                                               torch.Tensor]],
                    base_fingerprint: str, metadata: dict[str, str] | None = None) -> Patch:
        """Build a patch from ``(param, kind, index, delta)``; after = before + delta."""
        params = dict(model.named_parameters())
        entries = []
        for name, kind, index, delta in deltas:
            index = None if index is None else index.detach().to("cpu", torch.long).clone()
            entry = PatchEntry(name, kind, before=torch.empty(0), after=torch.empty(0),
                               index=index)
            entry.before = entry._view(params[name].detach().to("cpu")).clone().contiguous()
            entry.after = (entry.before + delta.detach().to("cpu", entry.before.dtype)).contiguous()
            entries.append(entry)
        return cls(entries, base_fingerprint, dict(metadata or {}))

    # -- applying ---------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> None:
        """Write the after-values; refuses (changing nothing) if any before-value differs."""
        self._swap(model, expect="before", write="after")

    def revert(self, model: nn.Module) -> None:
        """Write the before-values back; refuses if the model does not hold this patch."""
        self._swap(model, expect="after", write="before")

    def _swap(self, model: nn.Module, expect: str, write: str) -> None:
        params = dict(model.named_parameters())
        for entry in self.entries:
            if entry.param not in params:
                raise IncompatibleBaseError(
                    f"patch touches {entry.param}, which {type(model).__name__} does not have")
            current = entry._view(params[entry.param].detach())
            wanted = getattr(entry, expect)
            if current.shape != wanted.shape or not torch.equal(current.cpu(), wanted):
                verb = "apply" if write == "after" else "revert"
                raise PatchConflictError(
                    f"cannot {verb} patch: {entry.param} does not hold the values the patch "
                    f"expects (patch made for base {self.base_fingerprint[:12]})")
        with torch.no_grad():
            for entry in self.entries:
                entry._write(params[entry.param].data, getattr(entry, write))

    # -- describing -------------------------------------------------------------------------
    @property
    def params(self) -> list[str]:
        return [e.param for e in self.entries]

    @property
    def num_values(self) -> int:
        return sum(e.num_values for e in self.entries)

    def units_per_param(self) -> dict[str, int]:
        return {e.param: e.units for e in self.entries}

    # -- persistence ------------------------------------------------------------------------
    def _tensors_and_header(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors: dict[str, torch.Tensor] = {}
        layout = []
        for i, e in enumerate(self.entries):
            tensors[f"{i}.before"] = e.before.contiguous()
            tensors[f"{i}.after"] = e.after.contiguous()
            if e.index is not None:
                tensors[f"{i}.index"] = e.index.contiguous()
            layout.append({"param": e.param, "kind": e.kind})
        header = {"format": PATCH_FORMAT, "base_fingerprint": self.base_fingerprint,
                  "entries": json.dumps(layout), "metadata": json.dumps(self.metadata,
                                                                        sort_keys=True)}
        return tensors, header

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, header = self._tensors_and_header()
        save_file(tensors, str(path), metadata=header)
        return path

    def sha256(self) -> str:
        """Content hash independent of file layout: entries, indices, values, base."""
        h = hashlib.sha256(f"{PATCH_FORMAT}|{self.base_fingerprint}|".encode())
        for e in self.entries:
            h.update(f"{e.param}|{e.kind}|".encode())
            for t in (e.index, e.before, e.after):
                if t is not None:
                    h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Patch:
        path = Path(path)
        header, tensors = read_patch_file(path, PATCH_FORMAT, "vitedit patch")
        entries = [PatchEntry(param=spec["param"], kind=spec["kind"],
                              before=tensors[f"{i}.before"], after=tensors[f"{i}.after"],
                              index=tensors.get(f"{i}.index"))
                   for i, spec in enumerate(json.loads(header["entries"]))]
        return cls(entries, header["base_fingerprint"], json.loads(header.get("metadata", "{}")))


def apply_stack(model: nn.Module, patches: Sequence[Patch]) -> None:
    """Apply patches in order (sequential edits); on a conflict, undo the ones applied."""
    applied: list[Patch] = []
    try:
        for patch in patches:
            patch.apply(model)
            applied.append(patch)
    except VitEditError:
        revert_stack(model, applied)
        raise


def revert_stack(model: nn.Module, patches: Sequence[Patch]) -> None:
    """Revert patches in reverse order of application."""
    for patch in reversed(list(patches)):
        patch.revert(model)


def read_patch_file(path: Path, expected_format: str, what: str
                    ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header and tensors of a patch file of ``expected_format`` (plain, scoped and side
    patches share this): one clear error for an unreadable file or another format."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise VitEditError(f"{what} {path} is unreadable: {exc}") from exc
    if header.get("format") != expected_format:
        raise VitEditError(f"{path} is not a {what} (format {header.get('format')!r})")
    return header, tensors
