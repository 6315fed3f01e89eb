"""Side modules: edits that add parameters beside the model's weights instead of changing them.

GRACE's codebook and T-Patcher's added neurons are side modules. A side module is a submodule
of the model (``model.<attribute>``, one per kind) whose forward hooks on one FFN layer change
that layer's output. Its tensors are buffers, so the state dict, the fingerprint, the saved
weights (:func:`layout_metadata` / :func:`prepare` carry its shapes in the safetensors
metadata), ``copy.deepcopy`` (the hooks are bound methods) and the ONNX export all carry it.

An edit yields a :class:`SidePatch`: the side module's whole state before and after the edit
(before None: not installed yet). ``apply`` and ``revert`` swap the two states and refuse,
changing nothing, when the model does not hold the state they expect, so revert is exact by
construction and patches stack in order, as :class:`~vitedit_ops.patch.Patch` does for weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import PatchConflictError
from .patch import read_patch_file
from .registries import Registry

SIDE_FORMAT = "vitedit-side-patch/1"
LAYOUT_KEY = "vitedit.side"  # safetensors metadata of saved weights: installed side modules


class SideModule(nn.Module):
    """Parameters an edit added beside the model, applied through hooks on one layer.

    Subclasses hold only buffers, say their shapes in :meth:`layout`, rebuild an empty
    module of that shape in :meth:`empty`, and name the hooks in :meth:`hook_points`.
    """

    kind: ClassVar[str]
    attribute: ClassVar[str]  # the submodule name on the model

    def layout(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def empty(cls, layout: dict[str, Any]) -> SideModule:
        raise NotImplementedError

    def hook_points(self) -> list[tuple[str, Callable]]:
        """(module path in the model, forward hook) pairs; hooks are bound methods of self."""
        raise NotImplementedError

    def attach(self, model: nn.Module) -> None:
        for path, hook in self.hook_points():
            model.get_submodule(path).register_forward_hook(hook)

    @staticmethod
    def restack(before: SideState | None, after: SideState, current: SideState | None
                ) -> SideState:
        """The state an edit made as ``before`` -> ``after`` gives on a module that holds
        ``current`` instead (other edits stacked since): only kinds whose entries are
        independent of each other can say."""
        raise PatchConflictError("this side module's edits cannot be restacked: apply them "
                                 "in the order they were made")

    def detach(self, model: nn.Module) -> None:
        for module in model.modules():
            hooks = module._forward_hooks
            for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is self]:
                del hooks[key]


SIDE_MODULES: Registry[type[SideModule]] = Registry("side module")
register_side_module = SIDE_MODULES.register


def side_kinds() -> list[str]:
    """Every side module kind (they register where their editors are defined)."""
    from . import editors  # noqa: F401 - registration

    return SIDE_MODULES.names()


def side_class(kind: str) -> type[SideModule]:
    from . import editors  # noqa: F401 - registration

    return SIDE_MODULES.get(kind)


def side_prefixes() -> tuple[str, ...]:
    """State-dict prefixes of every side module kind (what is not a plain weight)."""
    return tuple(f"{side_class(k).attribute}." for k in side_kinds())


def plain_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the model's own weights: side modules and scoped patches left out."""
    from .models import fingerprint_state
    from .scoped import STACK

    skipped = side_prefixes() + (f"{STACK}.",)
    return fingerprint_state({k: v for k, v in model.state_dict().items()
                              if not k.startswith(skipped)})


@dataclass
class SideState:
    """A side module's full state: its kind, its shapes and its tensors (on CPU)."""

    kind: str
    layout: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def of(cls, module: SideModule) -> SideState:
        return cls(module.kind, module.layout(),
                   {k: v.detach().cpu().clone().contiguous()
                    for k, v in module.state_dict().items()})

    def build(self) -> SideModule:
        module = side_class(self.kind).empty(self.layout)
        module.load_state_dict(self.tensors, strict=True)
        return module

    def same_as(self, other: SideState | None) -> bool:
        return other is not None and self.digest() == other.digest()

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.kind}|{json.dumps(self.layout, sort_keys=True)}|".encode())
        for name, tensor in sorted(self.tensors.items()):
            h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            if tensor.numel():
                h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    @property
    def num_values(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def installed(model: nn.Module, kind: str) -> SideModule | None:
    module = getattr(model, side_class(kind).attribute, None)
    return module if isinstance(module, SideModule) else None


def state_of(model: nn.Module, kind: str) -> SideState | None:
    """The model's current side module of ``kind`` (None when it has none)."""
    module = installed(model, kind)
    return None if module is None else SideState.of(module)


def install(model: nn.Module, kind: str, state: SideState | None) -> None:
    """Replace the model's side module of ``kind`` by one holding ``state`` (None: remove)."""
    current = installed(model, kind)
    attribute = side_class(kind).attribute
    if current is not None:
        current.detach(model)
        delattr(model, attribute)
    if state is None:
        return
    device = next(model.parameters()).device
    module = state.build().to(device)
    model.add_module(attribute, module)
    module.attach(model)


@contextmanager
def swapped_in(model: nn.Module, kind: str, hook_points: Sequence[tuple[str, Callable]]
               ) -> Iterator[None]:
    """While active, ``hook_points`` (a candidate being fitted) stand in for the model's
    installed side module of ``kind``, whose hooks are off."""
    current = installed(model, kind)
    if current is not None:
        current.detach(model)
    handles = [model.get_submodule(path).register_forward_hook(hook)
               for path, hook in hook_points]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if current is not None:
            current.attach(model)


@dataclass
class SidePatch:
    """One edit of a side module: its state before (None: absent) and after.

    ``base_fingerprint`` is the plain weights the edit was made on (:func:`plain_fingerprint`):
    the side module's values were fitted for them, so applying elsewhere is refused.
    """

    before: SideState | None
    after: SideState
    base_fingerprint: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.after.kind

    def apply(self, model: nn.Module) -> None:
        """Install the after-state; refuses if the model holds another side state or weights."""
        current = plain_fingerprint(model)
        if current != self.base_fingerprint:
            raise PatchConflictError(
                f"cannot apply {self.kind} patch: it was made on weights "
                f"{self.base_fingerprint[:12]}, the model holds {current[:12]}")
        self._swap(model, expect=self.before, write=self.after, verb="apply")

    def rebased(self, model: nn.Module) -> SidePatch:
        """The same edit for ``model``'s current side module (other edits made on the same
        weights were applied since this one was made); the weights must still match."""
        current = state_of(model, self.kind)
        after = side_class(self.kind).restack(self.before, self.after, current)
        return SidePatch(current, after, self.base_fingerprint, dict(self.metadata))

    def revert(self, model: nn.Module) -> None:
        """Restore the before-state; refuses unless the model holds exactly the after-state."""
        self._swap(model, expect=self.after, write=self.before, verb="revert")

    def _swap(self, model: nn.Module, expect: SideState | None, write: SideState | None,
              verb: str) -> None:
        current = state_of(model, self.kind)
        matches = current is None if expect is None else expect.same_as(current)
        if not matches:
            raise PatchConflictError(
                f"cannot {verb} {self.kind} patch: the model's {self.kind} side module is not "
                "the one the patch expects (apply and revert patches in stack order)")
        install(model, self.kind, write)

    # -- describing (the Patch interface) ---------------------------------------------------
    @property
    def params(self) -> list[str]:
        attribute = side_class(self.kind).attribute
        return [f"{attribute}.{name}" for name in sorted(self.after.tensors)]

    @property
    def num_values(self) -> int:
        """Values the side module gained with this edit."""
        return self.after.num_values - (self.before.num_values if self.before else 0)

    def units_per_param(self) -> dict[str, int]:
        """Entries (codebook keys, added neurons) the side module holds after this edit."""
        return {side_class(self.kind).attribute: int(self.after.layout["entries"])}

    def sha256(self) -> str:
        h = hashlib.sha256(f"{SIDE_FORMAT}|{self.base_fingerprint}|".encode())
        h.update((self.before.digest() if self.before else "-").encode())
        h.update(self.after.digest().encode())
        return h.hexdigest()

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"after.{k}": v for k, v in self.after.tensors.items()}
        if self.before is not None:
            tensors.update({f"before.{k}": v for k, v in self.before.tensors.items()})
        header = {"format": SIDE_FORMAT, "kind": self.kind,
                  "base_fingerprint": self.base_fingerprint,
                  "after": json.dumps(self.after.layout),
                  "before": json.dumps(self.before.layout if self.before else None),
                  "metadata": json.dumps(self.metadata, sort_keys=True)}
        save_file(tensors, str(path), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SidePatch:
        path = Path(path)
        header, tensors = read_patch_file(path, SIDE_FORMAT, "side patch")
        kind = header["kind"]

        def state(prefix: str, layout: dict[str, Any] | None) -> SideState | None:
            if layout is None:
                return None
            return SideState(kind, layout, {k.removeprefix(prefix): v for k, v in tensors.items()
                                            if k.startswith(prefix)})

        return cls(state("before.", json.loads(header["before"])),
                   state("after.", json.loads(header["after"])), header["base_fingerprint"],
                   json.loads(header.get("metadata", "{}")))


def layout_metadata(model: nn.Module) -> dict[str, str]:
    """Safetensors metadata that lets :func:`prepare` rebuild the side modules before loading."""
    layouts = {kind: installed(model, kind).layout() for kind in side_kinds()
               if installed(model, kind) is not None}
    return {LAYOUT_KEY: json.dumps(layouts)} if layouts else {}


def prepare(model: nn.Module, metadata: dict[str, str]) -> None:
    """Install empty side modules shaped as saved, so a strict state-dict load fills them."""
    if LAYOUT_KEY not in metadata:
        return
    for kind, layout in json.loads(metadata[LAYOUT_KEY]).items():
        module = side_class(kind).empty(layout)
        model.add_module(module.attribute, module)
        module.attach(model)
