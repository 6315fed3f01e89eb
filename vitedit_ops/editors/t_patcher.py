"""T-Patcher (Huang et al., ICLR 2023): a few neurons added to the window's last FFN.

Each edit adds ``neurons`` hidden units beside the last window block's FFN: a key and a bias
(the new units' ``fc1`` rows) and a value (their ``fc2`` columns), applied at every token with
the FFN's own activation, ``mlp(x) + act(x k + b) v``. They are trained to fire only on the
edit images: besides the cross-entropy to the true label, an activation loss pushes the
units' pre-activation on the edit images above ``margin``, and the memory loss keeps it
below ``silent_below`` on every token of the preserved pool and below the edit images' by
``margin`` (the paper's two memory terms). ``silent_below`` defaults to -3, where GELU is
within 0.004 of zero (at -1 it is still -0.16: below zero is not silent under GELU).

The edit images' activation is read at the token the classifier reads: a ViT's class token,
the mean over tokens for average-pooled models such as Swin. It is the counterpart of the
paper's last token, and when the window ends at the last block the only token whose change
reaches the logits. Keys start on the direction that separates the edit images from the
pool, values at zero, so the edit starts at the base model.

The neurons are a side module (``side``): each edit's patch holds the neuron set before and
after, revert is exact, and patches stack night after night.
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
                   register_editor, side_edit_result)
from .grace import token_mean

MEMORY_IMAGES = 128  # preserved images whose tokens the memory loss reads


def with_neurons(mlp: nn.Module, x: torch.Tensor, out: torch.Tensor, keys: torch.Tensor,
                 bias: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The FFN's output plus the added neurons' contribution, with the FFN's activation."""
    return out + F.linear(mlp.act(F.linear(x, keys, bias)), values)


@register_side_module("t_patcher")
class AddedNeurons(SideModule):
    """The installed neurons of one FFN: keys (K, D), biases (K,), values (D, K)."""

    kind = "t_patcher"
    attribute = "vitedit_tpatcher"

    def __init__(self, mlp: str, keys: torch.Tensor, bias: torch.Tensor,
                 values: torch.Tensor) -> None:
        super().__init__()
        self.mlp = mlp
        self.register_buffer("keys", keys.detach().float().contiguous())
        self.register_buffer("bias", bias.detach().float().contiguous())
        self.register_buffer("values", values.detach().float().contiguous())

    def layout(self) -> dict[str, Any]:
        return {"mlp": self.mlp, "entries": int(len(self.keys)), "width": int(self.keys.shape[1])}

    @classmethod
    def empty(cls, layout: dict[str, Any]) -> AddedNeurons:
        n, width = layout["entries"], layout["width"]
        return cls(layout["mlp"], torch.zeros(n, width), torch.zeros(n), torch.zeros(width, n))

    def hook_points(self) -> list[tuple[str, Callable]]:
        return [(self.mlp, self._add)]

    def _add(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return with_neurons(module, args[0], out, self.keys, self.bias, self.values)

    @staticmethod
    def restack(before: SideState | None, after: SideState, current: SideState | None
                ) -> SideState:
        """The edit ``before`` -> ``after`` on neurons other edits added to since: an edit
        only appends neurons (earlier ones stay fixed), so its new neurons are appended to
        ``current``'s. ``current`` must extend ``before``: the same FFN and the same first
        neurons."""
        count = int(before.layout["entries"]) if before is not None else 0
        made = after.tensors
        if current is None:
            if count:
                raise PatchConflictError("cannot restack t_patcher patch: the model has no "
                                         "added neurons, the patch was made on some")
            return after
        onto = current.tensors
        extends = (current.layout["mlp"] == after.layout["mlp"]
                   and current.layout["width"] == after.layout["width"]
                   and int(current.layout["entries"]) >= count
                   and (before is None or all(torch.equal(onto[k][:count] if k != "values"
                                                          else onto[k][:, :count], v)
                                              for k, v in before.tensors.items())))
        if not extends:
            raise PatchConflictError(f"cannot restack t_patcher patch: the model's neurons at "
                                     f"{current.layout['mlp']} do not extend those it was made "
                                     f"on at {after.layout['mlp']}")
        return SideState.of(AddedNeurons(
            after.layout["mlp"], torch.cat([onto["keys"], made["keys"][count:]]),
            torch.cat([onto["bias"], made["bias"][count:]]),
            torch.cat([onto["values"], made["values"][:, count:]], dim=1)))


class TrainableNeurons(SideTraining):
    """The earlier neurons (fixed) and this edit's new ones (trained)."""

    def __init__(self, mlp: str, earlier: SideState | None, keys: torch.Tensor,
                 bias: torch.Tensor) -> None:
        super().__init__()
        self.mlp = mlp
        width = keys.shape[1]
        t = earlier.tensors if earlier is not None else {
            "keys": torch.zeros(0, width), "bias": torch.zeros(0), "values": torch.zeros(width, 0)}
        self.register_buffer("old_keys", t["keys"].to(keys.device))
        self.register_buffer("old_bias", t["bias"].to(keys.device))
        self.register_buffer("old_values", t["values"].to(keys.device))
        self.keys = nn.Parameter(keys.clone())
        self.bias = nn.Parameter(bias.clone())
        self.values = nn.Parameter(torch.zeros(width, len(keys), device=keys.device))

    def all_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.cat([self.old_keys, self.keys]), torch.cat([self.old_bias, self.bias]),
                torch.cat([self.old_values, self.values], dim=1))

    def activation(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the new neurons for FFN inputs (..., D)."""
        return F.linear(inputs, self.keys, self.bias)

    @contextmanager
    def hooked(self, model: nn.Module) -> Iterator[None]:
        def add(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            return with_neurons(module, args[0], out, *self.all_tensors())

        with swapped_in(model, AddedNeurons.kind, [(self.mlp, add)]):
            yield

    def state(self) -> SideState:
        keys, bias, values = (t.detach().cpu() for t in self.all_tensors())
        return SideState.of(AddedNeurons(self.mlp, keys, bias, values))


def classifier_token(hidden: torch.Tensor, model: nn.Module, prefix: int) -> torch.Tensor:
    """(N, ..., tokens, D) -> (N, D) at the token the classifier reads: the class token of a
    token-pooled model, the mean over the patch tokens otherwise (Swin, average-pooled ViTs)."""
    if getattr(model, "global_pool", None) == "token" and prefix > 0:
        return hidden.flatten(1, -2)[:, 0]
    return token_mean(hidden, prefix)


def ffn_inputs(model: nn.Module, site: FFNSite, images: torch.Tensor, batch_size: int = 128
               ) -> torch.Tensor:
    """The FFN input of every token of ``images``: (N, ..., tokens, D)."""
    return module_inputs(model, model.get_submodule(f"{site.block_path}.mlp"), images,
                         batch_size)


def initial_neurons(edit_keys: torch.Tensor, memory: torch.Tensor, count: int, margin: float,
                    silent: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys along the direction from the pool's mean token to the edit images' mean key,
    scaled and biased so the edit images sit at ``margin`` and the pool's highest token at
    ``silent`` when they separate along it; a little seeded noise tells the neurons apart."""
    direction = edit_keys.mean(0) - memory.mean(0)
    direction = direction / direction.norm().clamp_min(1e-12)
    edit, highest = float((edit_keys @ direction).mean()), float((memory @ direction).max())
    scale = (margin - silent) / (edit - highest) if edit > highest else 1.0
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, len(direction), generator=generator).to(direction.device)
    keys = scale * direction + 0.01 * scale * noise
    bias = margin - edit_keys.mean(0) @ keys.T
    return keys, bias


@register_editor("t_patcher")
@dataclass(kw_only=True)
class TPatcherEditor(Editor):
    """T-Patcher: ``neurons`` added units in the window's last FFN, fitted to fire only on the
    edit images (needs a preserved pool for its memory loss)."""

    window: tuple[int, int] | None = None
    neurons: int = 1  # "one mistake worth one neuron"
    margin: float = 1.0
    silent_below: float = -3.0
    activation_weight: float = 1.0
    memory_weight: float = 1.0
    seed: int = 0
    preserved: torch.Tensor | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2))
    name: str = "t_patcher"
    needs_preserved = "its memory loss keeps the new neurons silent on those images"

    def __post_init__(self) -> None:
        if self.neurons < 1:
            raise InvalidInputError(f"T-Patcher adds at least one neuron, got {self.neurons}")

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = self.checked_inputs(model, images, labels)
        start = time.perf_counter()
        window = edit_window(model, *(self.window or (None, None)))
        site = window.sites[-1]
        mlp = f"{site.block_path}.mlp"
        base = plain_fingerprint(model)
        earlier = state_of(model, AddedNeurons.kind)
        if earlier is not None and earlier.layout["mlp"] != mlp:
            raise InvalidInputError(f"the model's T-Patcher neurons sit at "
                                    f"{earlier.layout['mlp']}, not {mlp}")
        prefix = prefix_tokens(model)
        with frozen(model):
            with torch.no_grad():
                before = model(images).argmax(-1).cpu()
            edit_keys = classifier_token(ffn_inputs(model, site, images), model, prefix)
            pool = self.preserved[:MEMORY_IMAGES].to(images.device)
            memory = ffn_inputs(model, site, pool).flatten(0, -2)
            keys, bias = initial_neurons(edit_keys, memory, self.neurons, self.margin,
                                         self.silent_below, self.seed)
            candidate = TrainableNeurons(mlp, earlier, keys, bias)

            def penalty() -> torch.Tensor:
                edit = candidate.activation(edit_keys)
                kept = candidate.activation(memory)
                activation = F.relu(self.margin - edit).mean()
                silent = F.relu(kept - self.silent_below).mean()
                below = F.relu(kept.max(0).values + self.margin - edit.min(0).values).mean()
                return self.activation_weight * activation + self.memory_weight * (silent + below)

            steps, history, after = optimize_window(model, EditWindow((site,)), [], images,
                                                    labels, self.optim, penalty=penalty,
                                                    side=candidate)
            with torch.no_grad():
                fires = float((candidate.activation(memory) > self.silent_below).float().mean())
        state = candidate.state()
        return side_edit_result(
            self, earlier, state, base, where={"mlp": mlp}, window=window, start=start,
            steps=steps, history=history, labels=labels, before=before, after=after,
            neurons=self.neurons, margin=self.margin, entries=state.layout["entries"],
            pool_tokens_not_silent=fires)
