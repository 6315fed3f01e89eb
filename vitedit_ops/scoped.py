"""Scoped patches: edits that apply only to inputs inside their scope, stacked night on night.

A :class:`ScopedPatch` holds the change to some of the edit window's FFN matrices (rows of
``fc1`` / columns of ``fc2``, or whole matrices) and a :class:`~vitedit_ops.scope.Scope`.
Applying it never writes a weight: it joins the model's :class:`ScopeStack`, a submodule
(``vitedit_scopes``) whose hooks compute every patch's scope once per forward, at the first
window block's input, and add a patch's change to a window matrix's output only for the inputs
inside that patch's scope (``torch.where``, so every other input gets the unedited output bit
for bit). The stack's tensors are part of the model's state dict, so the fingerprint, the
saved weights, ``copy.deepcopy`` and the ONNX export all carry the scopes; reverting the last
patch removes it exactly, and an empty stack uninstalls itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import IncompatibleBaseError, PatchConflictError, VitEditError
from .patch import read_patch_file
from .scope import Scope

SCOPED_FORMAT = "vitedit-scoped-patch/1"
STACK = "vitedit_scopes"
LAYOUT_KEY = "vitedit.scopes"  # safetensors metadata of saved weights: the stack's layout
KINDS = ("rows", "cols", "dense")


class ScopedDelta(nn.Module):
    """The change to one window matrix: selected ``rows`` (fc1), ``cols`` (fc2) or ``dense``."""

    def __init__(self, weight_name: str, kind: str, values: torch.Tensor,
                 index: torch.Tensor | None, shape: Sequence[int]) -> None:
        super().__init__()
        if kind not in KINDS:
            raise VitEditError(f"unknown scoped delta kind {kind!r}")
        self.weight_name, self.kind, self.shape = weight_name, kind, tuple(int(s) for s in shape)
        self.register_buffer("values", values.detach().float().contiguous())
        index = torch.empty(0, dtype=torch.long) if index is None else index.to(torch.long)
        self.register_buffer("index", index.contiguous())
        if kind == "rows":  # (out, k): scatters the k changed outputs into their rows
            self.register_buffer("scatter", F.one_hot(index, self.shape[0]).T.float())

    def contribution(self, x: torch.Tensor) -> torch.Tensor:
        """What this change adds to the matrix's output for input ``x``."""
        if self.kind == "rows":
            return F.linear(F.linear(x, self.values), self.scatter)
        if self.kind == "cols":
            return F.linear(x.index_select(-1, self.index), self.values)
        return F.linear(x, self.values)

    def dense(self) -> torch.Tensor:
        full = torch.zeros(self.shape)
        if self.kind == "rows":
            full[self.index] = self.values
        elif self.kind == "cols":
            full[:, self.index] = self.values
        else:
            full = self.values.clone()
        return full

    def layout(self) -> dict[str, Any]:
        return {"weight": self.weight_name, "kind": self.kind, "shape": list(self.shape),
                "values": list(self.values.shape), "index": int(self.index.numel())}

    @classmethod
    def empty(cls, layout: dict[str, Any]) -> ScopedDelta:
        index = torch.zeros(layout["index"], dtype=torch.long) if layout["kind"] != "dense" \
            else None
        return cls(layout["weight"], layout["kind"], torch.zeros(layout["values"]), index,
                   layout["shape"])


class ScopedPatch(nn.Module):
    """A change to the edit window that applies only inside ``scope``.

    ``block`` is the first window block (where the scope reads its input); ``weights`` the
    fingerprint of the plain weights the change was made on: it composes with any stack of
    other scoped patches on those same weights. ``inside_keys`` are the keys of the images it
    was made for (later scopes keep out of them).
    """

    def __init__(self, scope: Scope, deltas: Sequence[ScopedDelta], block: str, weights: str,
                 inside_keys: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
        super().__init__()
        self.scope = scope
        self.deltas = nn.ModuleList(deltas)
        self.block, self.weights = block, weights
        self.register_buffer("inside_keys", inside_keys.detach().float().contiguous())
        self.metadata = dict(metadata or {})
        self._by_name = {d.weight_name: d for d in self.deltas}

    @classmethod
    def from_patch(cls, patch: Any, model: nn.Module, scope: Scope, block: str,
                   inside_keys: torch.Tensor) -> ScopedPatch:
        """The change of a plain :class:`~vitedit_ops.patch.Patch` (after - before), scoped."""
        params = dict(model.named_parameters())
        deltas = [ScopedDelta(e.param, e.kind, (e.after - e.before).float(), e.index,
                              params[e.param].shape) for e in patch.entries]
        scoped = cls(scope, deltas, block, weights_fingerprint(model), inside_keys,
                     {**patch.metadata, "scoped": "true"})
        scoped.check_targets(model)
        return scoped

    def check_targets(self, model: nn.Module) -> None:
        """Refuse changes the stack could not apply inside the scope: the stack adds a change
        to the output of an FFN matrix (``*.mlp.fc1.weight`` / ``*.mlp.fc2.weight``) that runs
        at or after ``block``, where the scope reads its input. A bias, an attention weight or a
        matrix of an earlier block would be dropped, or gated by the previous input's scope."""
        names = [name for name, _ in model.named_modules()]
        if self.block not in names:
            raise IncompatibleBaseError(f"scoped patch reads block {self.block!r}, which the "
                                        "model does not have")
        first = names.index(self.block)
        for delta in self.deltas:
            module, _, leaf = delta.weight_name.rpartition(".")
            if leaf != "weight" or not (module.endswith(".mlp.fc1")
                                        or module.endswith(".mlp.fc2")):
                raise VitEditError(f"scoped patch changes {delta.weight_name}: a scope can only "
                                   "gate the weight matrices of FFNs (mlp.fc1 / mlp.fc2)")
            if module not in names or names.index(module) < first:
                raise VitEditError(f"scoped patch changes {delta.weight_name}, which runs before "
                                   f"{self.block}, where its scope reads the input")

    # -- the Patch interface ------------------------------------------------------------
    @property
    def params(self) -> list[str]:
        return [d.weight_name for d in self.deltas]

    @property
    def num_values(self) -> int:
        return sum(d.values.numel() for d in self.deltas)

    @property
    def base_fingerprint(self) -> str:
        return self.weights

    def units_per_param(self) -> dict[str, int]:
        return {d.weight_name: int(d.index.numel()) if d.kind != "dense" else d.shape[0]
                for d in self.deltas}

    def delta_for(self, weight_name: str) -> ScopedDelta | None:
        return self._by_name.get(weight_name)

    def apply(self, model: nn.Module) -> None:
        """Join ``model``'s scope stack (installing it if needed)."""
        current = weights_fingerprint(model)
        if current != self.weights:
            raise PatchConflictError(
                f"cannot apply scoped patch: it was made on weights {self.weights[:12]}, the "
                f"model holds {current[:12]}")
        self.check_targets(model)
        ScopeStack.installed(model, self.block, create=True).push(self)

    def rebased(self, model: nn.Module) -> ScopedPatch:
        """The same change and scope, for ``model``'s current plain weights (another patch
        changed them since this one was made)."""
        copy_ = ScopedPatch(self.scope, [ScopedDelta(d.weight_name, d.kind, d.values,
                                                     d.index if d.kind != "dense" else None,
                                                     d.shape) for d in self.deltas],
                            self.block, weights_fingerprint(model), self.inside_keys,
                            self.metadata)
        return copy_

    def revert(self, model: nn.Module) -> None:
        """Leave ``model``'s scope stack; only the patch applied last can."""
        stack = ScopeStack.installed(model)
        if stack is None or not stack.patches or stack.patches[-1] is not self:
            raise PatchConflictError("cannot revert scoped patch: it is not the last one "
                                     "applied to this model")
        stack.pop(model)

    def sha256(self) -> str:
        h = hashlib.sha256(f"{SCOPED_FORMAT}|{json.dumps(self.layout(), sort_keys=True)}|"
                           .encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                     .numpy().tobytes())
        return h.hexdigest()

    def layout(self) -> dict[str, Any]:
        return {"block": self.block, "weights": self.weights, "scope": self.scope.layout(),
                "inside": list(self.inside_keys.shape),
                "deltas": [d.layout() for d in self.deltas], "metadata": self.metadata}

    @classmethod
    def empty(cls, layout: dict[str, Any]) -> ScopedPatch:
        return cls(Scope.empty(layout["scope"]), [ScopedDelta.empty(d) for d in layout["deltas"]],
                   layout["block"], layout["weights"], torch.zeros(layout["inside"]),
                   layout["metadata"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"format": SCOPED_FORMAT,
                                                "layout": json.dumps(self.layout())})
        return path

    @classmethod
    def load(cls, path: str | Path) -> ScopedPatch:
        path = Path(path)
        header, tensors = read_patch_file(path, SCOPED_FORMAT, "scoped patch")
        try:
            patch = cls.empty(json.loads(header["layout"]))
            patch.load_state_dict(tensors, strict=True)
        except Exception as exc:
            raise VitEditError(f"scoped patch {path} is unreadable: {exc}") from exc
        return patch


class ScopeStack(nn.Module):
    """The scoped patches of a model, in application order, and the hooks that apply them."""

    def __init__(self, block: str) -> None:
        super().__init__()
        self.block = block
        self.patches = nn.ModuleList()
        # the gates of the forward pass under way, set by the block's pre-hook: kept in a plain
        # dict, not a tensor attribute (ONNX export warns on a tensor attribute set in forward)
        self._forward: dict[str, torch.Tensor | None] = {"gates": None}

    @staticmethod
    def installed(model: nn.Module, block: str | None = None, create: bool = False
                  ) -> ScopeStack | None:
        stack = getattr(model, STACK, None)
        if stack is None and create:
            stack = ScopeStack(block)
            model.add_module(STACK, stack)
        elif stack is not None and block is not None and stack.block != block:
            raise IncompatibleBaseError(f"the model's scoped patches read block {stack.block}, "
                                        f"this one reads {block}")
        if stack is not None:
            stack._hook(model)
        return stack

    def push(self, patch: ScopedPatch) -> None:
        self.patches.append(patch)

    def pop(self, model: nn.Module) -> None:
        del self.patches[len(self.patches) - 1]
        if not len(self.patches):
            self._unhook(model)
            delattr(model, STACK)

    # -- hooks ----------------------------------------------------------------------------
    def _hook(self, model: nn.Module) -> None:
        """Register the hooks on ``model`` once. They are bound methods of this stack, so a
        ``copy.deepcopy`` of the model carries hooks bound to the copy's own stack."""
        block = model.get_submodule(self.block)
        if any(getattr(h, "__self__", None) is self
               for h in block._forward_pre_hooks.values()):
            return
        block.register_forward_pre_hook(self._compute_gates)
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and (name.endswith(".mlp.fc1")
                                                  or name.endswith(".mlp.fc2")):
                module._vitedit_weight = f"{name}.weight"
                module.register_forward_hook(self._add_changes)

    def _unhook(self, model: nn.Module) -> None:
        for module in model.modules():
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is self]:
                    del hooks[key]

    def _compute_gates(self, _module: nn.Module, args: tuple) -> None:
        hidden = args[0]
        self._forward["gates"] = torch.stack([p.scope(hidden) for p in self.patches]) \
            if len(self.patches) else None

    def _add_changes(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        gates = self._forward["gates"]
        if gates is None:
            return out
        name = module._vitedit_weight
        x = args[0]
        total, anywhere = None, None
        shape = (-1,) + (1,) * (out.ndim - 1)
        for gate, patch in zip(gates, self.patches):
            delta = patch.delta_for(name)
            if delta is None:
                continue
            inside = gate.view(shape)
            term = torch.where(inside, delta.contribution(x), torch.zeros((), dtype=out.dtype))
            total = term if total is None else total + term
            anywhere = inside if anywhere is None else anywhere | inside
        return out if total is None else torch.where(anywhere, out + total, out)

    def layout(self) -> dict[str, Any]:
        return {"block": self.block, "patches": [p.layout() for p in self.patches]}


def weights_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the plain weights only (scoped patches left out)."""
    from .models import fingerprint_state

    return fingerprint_state({k: v for k, v in model.state_dict().items()
                              if not k.startswith(f"{STACK}.")})


def scoped_patches(model: nn.Module) -> list[ScopedPatch]:
    stack = ScopeStack.installed(model)
    return list(stack.patches) if stack is not None else []


def layout_metadata(model: nn.Module) -> dict[str, str]:
    """Safetensors metadata that lets :func:`prepare` rebuild the stack before loading."""
    stack = ScopeStack.installed(model)
    return {LAYOUT_KEY: json.dumps(stack.layout())} if stack is not None else {}


def prepare(model: nn.Module, metadata: dict[str, str]) -> None:
    """Install an empty stack shaped as saved, so a strict state-dict load fills it."""
    if LAYOUT_KEY not in metadata:
        return
    layout = json.loads(metadata[LAYOUT_KEY])
    stack = ScopeStack.installed(model, layout["block"], create=True)
    for patch in layout["patches"]:
        stack.push(ScopedPatch.empty(patch))


def saved_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a weights file (empty for other formats)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable files are reported by the state-dict read
        return {}


def effective_deltas(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per window matrix, the sum of every scoped patch's change: what an input inside all
    scopes at once would see (the worst case the gate's norm check judges)."""
    out: dict[str, torch.Tensor] = {}
    for patch in scoped_patches(model):
        for delta in patch.deltas:
            dense = delta.dense()
            out[delta.weight_name] = out.get(delta.weight_name, 0) + dense
    return out


def load_patch(path: str | Path) -> Any:
    """A plain, a scoped or a side patch file, whichever ``path`` holds."""
    from .patch import Patch
    from .side import SIDE_FORMAT, SidePatch

    header = saved_metadata(path)
    if header.get("format") == SCOPED_FORMAT:
        return ScopedPatch.load(path)
    return SidePatch.load(path) if header.get("format") == SIDE_FORMAT else Patch.load(path)


def all_keys(patches: Iterable[ScopedPatch]) -> torch.Tensor | None:
    keys = [p.inside_keys for p in patches if len(p.inside_keys)]
    return torch.cat(keys) if keys else None
