"""GRACE (Hartvigsen et al., NeurIPS 2023): a codebook of edits beside one FFN layer.

The codebook sits at the ``fc2`` (the FFN's output layer) of one window block. Its key for
an input is that layer's input (the FFN's hidden activation) averaged over the patch tokens:
the mean is what every ViT and Swin image has alike (Swin has no class token; a ViT's class
token at a mid-depth block has only begun to gather the image), it does not depend on where
in the image the shifted content sits, and it is the FFN's own reading of the image, so the
codebook needs nothing the layer does not already compute. An input whose key lies within
the deferral radius of its nearest codebook key gets that entry's value as the layer's output
at every token (GRACE's replace-all); every other input gets the layer's own output.

Editing follows the paper's rules, one edit image at a time: a key farther than its nearest
entry's radius plus the initial radius becomes a new entry (radius ``epsilon`` times its norm:
relative, so one setting fits models of any activation scale); one within reach of an entry
of the same label grows that entry's radius to cover it; one within reach of an entry of
another label splits them: both radii become half their distance. The values of the new and
grown entries are then trained on cross-entropy to the true labels (the shared loop).

The codebook is a side module (``side``): its states before and after the edit make the
patch, so revert is exact, and edits stack night after night in one codebook.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, PatchConflictError
from ..scope import prefix_tokens
from ..side import (SideModule, SideState, plain_fingerprint, register_side_module, state_of,
                    swapped_in)
from ..sites import EditWindow, FFNSite, edit_window, module_inputs
from .base import (Editor, EditResult, OptimConfig, SideTraining, frozen, optimize_window,
                   register_editor, side_edit_result, validate_edit_inputs)


def token_mean(x: torch.Tensor, prefix: int) -> torch.Tensor:
    """(N, ..., tokens, D) -> (N, D): the mean over the patch tokens (class tokens left out)."""
    return x.flatten(1, -2)[:, prefix:].mean(1)


def codebook_output(x: torch.Tensor, out: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor, radii: torch.Tensor, prefix: int) -> torch.Tensor:
    """The layer's output with the codebook applied: the nearest entry's value at every token
    of an input whose key lies within that entry's radius, the layer's own output elsewhere."""
    query = token_mean(x, prefix)
    distance = (query[:, None] - keys[None]).pow(2).sum(-1).sqrt()
    nearest = distance.argmin(-1)
    best = distance.gather(1, nearest[:, None]).squeeze(1)
    inside = best <= radii[nearest]
    count = out.shape[0]
    broadcast = (count,) + (1,) * (out.ndim - 2) + (out.shape[-1],)
    value = values[nearest].to(out.dtype).view(broadcast)
    return torch.where(inside.view((count,) + (1,) * (out.ndim - 1)), value, out)


@register_side_module("grace")
class GraceCodebook(SideModule):
    """The installed codebook: keys, values, deferral radii and the label of each entry."""

    kind = "grace"
    attribute = "vitedit_grace"

    def __init__(self, layer: str, prefix: int, keys: torch.Tensor, values: torch.Tensor,
                 radii: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.prefix = layer, int(prefix)
        self.register_buffer("keys", keys.detach().float().contiguous())
        self.register_buffer("values", values.detach().float().contiguous())
        self.register_buffer("radii", radii.detach().float().contiguous())
        self.register_buffer("labels", labels.detach().to(torch.long).contiguous())

    def layout(self) -> dict[str, Any]:
        return {"layer": self.layer, "prefix": self.prefix, "entries": int(len(self.keys)),
                "key_width": int(self.keys.shape[1]), "value_width": int(self.values.shape[1])}

    @classmethod
    def empty(cls, layout: dict[str, Any]) -> GraceCodebook:
        n = layout["entries"]
        return cls(layout["layer"], layout["prefix"], torch.zeros(n, layout["key_width"]),
                   torch.zeros(n, layout["value_width"]), torch.zeros(n),
                   torch.zeros(n, dtype=torch.long))

    def hook_points(self) -> list[tuple[str, Callable]]:
        return [(self.layer, self._replace)]

    def _replace(self, _module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return codebook_output(args[0], out, self.keys, self.values, self.radii, self.prefix)

    @staticmethod
    def restack(before: SideState | None, after: SideState, current: SideState | None
                ) -> SideState:
        """The edit ``before`` -> ``after`` on a codebook other edits changed since: the
        entries it added are appended to ``current``'s, and the entries of ``before`` it
        changed (a grown or split radius, retrained values) take their new radius and value,
        provided no other edit changed them too (then which change holds is not decidable:
        refused). ``current`` must extend ``before``: the same layer and the same first
        entries' keys and labels."""
        made = after.tensors
        base_count = int(before.layout["entries"]) if before is not None else 0
        if current is None:
            if base_count:
                raise PatchConflictError("cannot restack grace patch: the model has no "
                                         "codebook, the patch was made on one")
            return after
        onto = current.tensors
        same_site = all(current.layout[k] == after.layout[k]
                        for k in ("layer", "prefix", "key_width", "value_width"))
        if not same_site or int(current.layout["entries"]) < base_count:
            raise PatchConflictError(f"cannot restack grace patch: the model's codebook at "
                                     f"{current.layout['layer']} does not extend the one it "
                                     f"was made on at {after.layout['layer']}")
        if before is not None:
            kept = before.tensors
            if not (torch.equal(onto["keys"][:base_count], kept["keys"])
                    and torch.equal(onto["labels"][:base_count], kept["labels"])):
                raise PatchConflictError("cannot restack grace patch: the model's codebook "
                                         "does not start with the entries it was made on")
        keys, values = onto["keys"].clone(), onto["values"].clone()
        radii, labels = onto["radii"].clone(), onto["labels"].clone()
        for i in range(base_count):
            ours = (not torch.equal(made["radii"][i], kept["radii"][i])
                    or not torch.equal(made["values"][i], kept["values"][i]))
            if not ours:
                continue
            theirs = (not torch.equal(onto["radii"][i], kept["radii"][i])
                      or not torch.equal(onto["values"][i], kept["values"][i]))
            if theirs:
                raise PatchConflictError(f"cannot restack grace patch: codebook entry {i} "
                                         "was changed by another edit too")
            radii[i], values[i] = made["radii"][i], made["values"][i]
        module = GraceCodebook(after.layout["layer"], after.layout["prefix"],
                               torch.cat([keys, made["keys"][base_count:]]),
                               torch.cat([values, made["values"][base_count:]]),
                               torch.cat([radii, made["radii"][base_count:]]),
                               torch.cat([labels, made["labels"][base_count:]]))
        return SideState.of(module)


class TrainableCodebook(SideTraining):
    """A codebook being edited: the values of the new and grown entries are parameters."""

    def __init__(self, layer: str, prefix: int, keys: torch.Tensor, values: torch.Tensor,
                 radii: torch.Tensor, labels: torch.Tensor, trained: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.prefix = layer, prefix
        self.register_buffer("keys", keys)
        self.register_buffer("fixed", values.clone())
        self.register_buffer("radii", radii)
        self.register_buffer("labels", labels)
        self.register_buffer("trained", trained)
        self.trainable = nn.Parameter(values[trained].clone())

    @property
    def values(self) -> torch.Tensor:
        return self.fixed.index_put((self.trained,), self.trainable)

    @contextmanager
    def hooked(self, model: nn.Module) -> Iterator[None]:
        def replace(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            return codebook_output(args[0], out, self.keys, self.values, self.radii,
                                   self.prefix)

        with swapped_in(model, GraceCodebook.kind, [(self.layer, replace)]):
            yield

    def state(self) -> SideState:
        return SideState.of(GraceCodebook(self.layer, self.prefix, self.keys.cpu(),
                                          self.values.detach().cpu(), self.radii.cpu(),
                                          self.labels.cpu()))


@torch.no_grad()
def layer_reading(model: nn.Module, site: FFNSite, images: torch.Tensor, prefix: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, outputs) of ``fc2`` for each image, token-averaged, from the plain layer."""
    fc2 = site.fc2(model)
    hidden = module_inputs(model, fc2, images)
    return token_mean(hidden, prefix), token_mean(F.linear(hidden, fc2.weight, fc2.bias), prefix)


@dataclass
class CodebookUpdate:
    """The codebook after GRACE's rules for the edit keys, and what changed."""

    keys: torch.Tensor
    values: torch.Tensor
    radii: torch.Tensor
    labels: torch.Tensor
    trained: list[int]
    added: int = 0
    grown: int = 0
    split: int = 0


def update_codebook(state: SideState | None, keys: torch.Tensor, outputs: torch.Tensor,
                    labels: torch.Tensor, epsilon: float) -> CodebookUpdate:
    """GRACE's rules, one edit key at a time (new entry, grown radius, or split)."""
    if state is None:
        width = keys.shape[1]
        update = CodebookUpdate(torch.zeros(0, width), torch.zeros(0, outputs.shape[1]),
                                torch.zeros(0), torch.zeros(0, dtype=torch.long), [])
    else:
        t = state.tensors
        update = CodebookUpdate(t["keys"].clone(), t["values"].clone(), t["radii"].clone(),
                                t["labels"].clone(), [])
    trained: set[int] = set()
    for key, output, label in zip(keys, outputs, labels):
        initial = epsilon * float(key.norm())

        def add(radius: float) -> None:
            update.keys = torch.cat([update.keys, key[None]])
            update.values = torch.cat([update.values, output[None]])
            update.radii = torch.cat([update.radii, torch.tensor([radius])])
            update.labels = torch.cat([update.labels, label.view(1)])
            trained.add(len(update.keys) - 1)
            update.added += 1

        if not len(update.keys):
            add(initial)
            continue
        distances = (update.keys - key).norm(dim=-1)
        nearest = int(distances.argmin())
        distance = float(distances[nearest])
        if distance > float(update.radii[nearest]) + initial:
            add(initial)
        elif int(update.labels[nearest]) != int(label):
            update.radii[nearest] = distance / 2
            add(distance / 2)
            update.split += 1
        else:
            if distance > float(update.radii[nearest]):
                update.radii[nearest] = distance
                update.grown += 1
            trained.add(nearest)
    update.trained = sorted(trained)
    return update


@register_editor("grace")
@dataclass(kw_only=True)
class GraceEditor(Editor):
    """GRACE's codebook at ``fc2`` of window block ``site`` (default: the window's last)."""

    window: tuple[int, int] | None = None
    site: int = -1  # position in the window
    epsilon: float = 0.5  # initial deferral radius, relative to the key's norm
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2))
    name: str = "grace"

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise InvalidInputError(f"GRACE's initial radius must be > 0, got {self.epsilon}")

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = validate_edit_inputs(model, images, labels)
        start = time.perf_counter()
        window = edit_window(model, *(self.window or (None, None)))
        site = pick_site(window, self.site)
        layer = f"{site.block_path}.mlp.fc2"
        prefix = prefix_tokens(model)
        base = plain_fingerprint(model)
        before_state = state_of(model, GraceCodebook.kind)
        if before_state is not None and before_state.layout["layer"] != layer:
            raise InvalidInputError(f"the model's GRACE codebook sits at "
                                    f"{before_state.layout['layer']}, not {layer}")
        with frozen(model):
            with torch.no_grad():
                before = model(images).argmax(-1).cpu()
            keys, outputs = layer_reading(model, site, images, prefix)
            update = update_codebook(before_state, keys.cpu(), outputs.cpu(), labels.cpu(),
                                     self.epsilon)
            device = images.device
            candidate = TrainableCodebook(
                layer, prefix, update.keys.to(device), update.values.to(device),
                update.radii.to(device), update.labels.to(device),
                torch.tensor(update.trained, dtype=torch.long, device=device))
            steps, history, after = optimize_window(model, EditWindow((site,)), [], images,
                                                    labels, self.optim, side=candidate)
        return side_edit_result(
            self, before_state, candidate.state(), base, where={"layer": layer}, window=window,
            start=start, steps=steps, history=history, labels=labels, before=before,
            after=after, epsilon=self.epsilon, entries=len(update.keys), added=update.added,
            grown=update.grown, split=update.split)


def pick_site(window: EditWindow, position: int) -> FFNSite:
    """The window block at ``position`` (negative counts from the end)."""
    if not -len(window.sites) <= position < len(window.sites):
        raise InvalidInputError(f"site {position} is outside the window {window.describe()}")
    return window.sites[position]
