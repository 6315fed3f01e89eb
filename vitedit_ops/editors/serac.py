"""SERAC (Mitchell et al., ICML 2022): a scope classifier and a counterfactual model beside the
base, applied to ViT features.

Each edit adds one memory entry. Its scope is read at the edit window's input (the mean of the
patch tokens there, ``scope.window_keys``): the blocks before the window are never edited, so
the key costs nothing at inference. It is calibrated as the scoped patches' are
(``scope.fit_nearest_scope`` by default, ``scope.fit_scope`` for a logistic router): the
preserved pool and the images earlier entries were made for stay outside, the edit images
inside. Its counterfactual model is a copy of the model's classifier (its last ``Linear``)
fine-tuned on the pre-logits features of the unit's images: the errors to fix and the
confirmed-correct images to keep. For an input inside an entry's scope, that entry's
classifier replaces the base's logits (``torch.where``: every other input gets the base's
logits bit for bit); where scopes overlap, the newest entry answers.

The memory is a side module (``side``): each edit's patch holds the memory before and after,
revert is exact, it travels in copies, saved weights and the ONNX graph, and entries stack
night after night (units edited alongside each other on one champion are restacked, each
keeping its own scope and classifier, by :meth:`SeracMemory.restack`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, PatchConflictError
from ..forward import SplitForward
from ..scope import Scope, fit_nearest_scope, fit_scope, prefix_tokens, window_keys
from ..side import (SideModule, SidePatch, SideState, plain_fingerprint, register_side_module,
                    state_of, swapped_in)
from ..sites import edit_window, module_inputs
from .base import (Editor, EditResult, OptimConfig, frozen, make_optimizer, register_editor,
                   side_edit_result)

RULES = ("nearest", "router")


class CounterfactualEntry(nn.Module):
    """One edit: its scope, its classifier (weight (C, D), bias (C,)) and the keys of the
    images it was made for (later scopes keep out of them)."""

    def __init__(self, scope: Scope, weight: torch.Tensor, bias: torch.Tensor,
                 inside_keys: torch.Tensor) -> None:
        super().__init__()
        self.scope = scope
        self.register_buffer("weight", weight.detach().float().contiguous())
        self.register_buffer("bias", bias.detach().float().contiguous())
        self.register_buffer("inside_keys", inside_keys.detach().float().contiguous())

    def layout(self) -> dict[str, Any]:
        return {"scope": self.scope.layout(), "weight": list(self.weight.shape),
                "inside": list(self.inside_keys.shape)}

    @classmethod
    def empty(cls, layout: dict[str, Any]) -> CounterfactualEntry:
        return cls(Scope.empty(layout["scope"]), torch.zeros(layout["weight"]),
                   torch.zeros(layout["weight"][0]), torch.zeros(layout["inside"]))


def classifier_path(model: nn.Module) -> str:
    """Module path of the model's final classifier (``head`` for ViT, ``head.fc`` for Swin)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Linear):
        raise InvalidInputError("SERAC needs a model whose classifier is one Linear layer "
                                f"(got {type(classifier).__name__})")
    return next(name for name, module in model.named_modules() if module is classifier)


@register_side_module("serac")
class SeracMemory(SideModule):
    """The installed memory: entries read their scopes at ``block``'s input and answer at
    ``classifier``'s output."""

    kind = "serac"
    attribute = "vitedit_serac"

    def __init__(self, block: str, classifier: str, entries: list[CounterfactualEntry]) -> None:
        super().__init__()
        self.block, self.classifier = block, classifier
        self.entries = nn.ModuleList(entries)
        # the gates of the forward pass under way (a plain dict, as the scope stack keeps them:
        # ONNX export warns on a tensor attribute set in forward)
        self._forward: dict[str, torch.Tensor | None] = {"gates": None}

    def layout(self) -> dict[str, Any]:
        return {"block": self.block, "classifier": self.classifier,
                "entries": len(self.entries), "each": [e.layout() for e in self.entries]}

    @classmethod
    def empty(cls, layout: dict[str, Any]) -> SeracMemory:
        return cls(layout["block"], layout["classifier"],
                   [CounterfactualEntry.empty(e) for e in layout["each"]])

    def hook_points(self) -> list[tuple[str, Callable]]:
        return [(self.block, self._gate), (self.classifier, self._answer)]

    def _gate(self, _module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
        self._forward["gates"] = torch.stack([e.scope(args[0]) for e in self.entries]) \
            if len(self.entries) else None

    def _answer(self, _module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        gates = self._forward["gates"]
        if gates is None:
            return out
        for gate, entry in zip(gates, self.entries):  # the newest entry inside answers
            out = torch.where(gate[:, None], F.linear(args[0], entry.weight, entry.bias), out)
        return out

    @staticmethod
    def restack(before: SideState | None, after: SideState, current: SideState | None
                ) -> SideState:
        """``current``'s entries plus those this edit added (``after`` beyond ``before``):
        the same edit, stacked on a memory other edits changed since it was made."""
        made = after.build()
        added = list(made.entries)[int(before.layout["entries"]) if before else 0:]
        if current is None:
            return SideState.of(SeracMemory(made.block, made.classifier, added))
        onto = current.build()
        if (onto.block, onto.classifier) != (made.block, made.classifier):
            raise PatchConflictError(f"cannot restack serac patch: the model's memory reads "
                                     f"{onto.block} -> {onto.classifier}, the patch "
                                     f"{made.block} -> {made.classifier}")
        return SideState.of(SeracMemory(made.block, made.classifier,
                                        list(onto.entries) + added))


def newest_scope_covers(patch: SidePatch, model: nn.Module, inputs: torch.Tensor
                        ) -> torch.Tensor:
    """Whether model ``inputs`` fall inside the scope of the entry ``patch`` added last."""
    memory = patch.after.build()
    split = SplitForward(model, memory.block)
    with torch.no_grad():
        hidden = split.prefix(inputs.to(next(model.parameters()).device))
        return memory.entries[-1].to(hidden.device).scope(hidden).cpu()


@register_editor("serac")
@dataclass(kw_only=True)
class SeracEditor(Editor):
    """SERAC: a scope at the window's input (``rule`` nearest or router, ``margin`` as in
    ``editors/scoped.py``) and a fine-tuned copy of the classifier answering inside it.

    ``preserved`` are the images that must stay outside (required); ``avoid`` images of
    other edits made alongside this one, kept outside too; ``avoid_earlier`` keeps the images
    of the model's earlier entries outside. ``anchor`` weighs an L2 pull of the
    counterfactual classifier toward the base's.
    """

    window: tuple[int, int] | None = None
    rule: str = "nearest"
    margin: float | None = None
    anchor: float = 0.0
    avoid_earlier: bool = True
    preserved: torch.Tensor | None = None
    avoid: torch.Tensor | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2, max_steps=200,
                                                                   ce_target=0.05))
    name: str = "serac"
    needs_preserved = "its scope is calibrated so those images stay outside"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise InvalidInputError(f"unknown SERAC scope rule {self.rule!r}; use {RULES}")
        if self.anchor < 0:
            raise InvalidInputError(f"SERAC's anchor weight must be >= 0, got {self.anchor}")

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> EditResult:
        images, labels = self.checked_inputs(model, images, labels)
        start = time.perf_counter()
        window = edit_window(model, *(self.window or (None, None)))
        block, head = window.sites[0].block_path, classifier_path(model)
        base = plain_fingerprint(model)
        earlier = state_of(model, SeracMemory.kind)
        earlier_memory = earlier.build() if earlier is not None else None
        if earlier_memory is not None and (earlier_memory.block, earlier_memory.classifier) \
                != (block, head):
            raise InvalidInputError(f"the model's SERAC memory reads {earlier_memory.block}, "
                                    f"not {block}")
        device = images.device
        with frozen(model):
            with torch.no_grad():
                before = model(images).argmax(-1).cpu()
            inside = window_keys(model, window, images)
            outside = window_keys(model, window, self.preserved)
            avoid = [e.inside_keys for e in earlier_memory.entries] \
                if earlier_memory is not None and self.avoid_earlier else []
            if self.avoid is not None and len(self.avoid):
                avoid.append(window_keys(model, window, self.avoid))
            avoided = torch.cat(avoid) if avoid else None
            if self.rule == "nearest":
                fit = fit_nearest_scope(inside, outside, prefix_tokens(model),
                                        margin=0.8 if self.margin is None else self.margin,
                                        avoid=avoided)
            else:
                fit = fit_scope(inside, outside, outside, prefix_tokens(model),
                                margin=self.margin or 0.0, avoid=avoided)
            covered = fit.inside_covered.cpu()
            if not covered.any():
                raise InvalidInputError("the fitted scope covers none of the edit images")
            classifier = model.get_submodule(head)
            with torch.no_grad():
                features = module_inputs(model, classifier, images[covered.to(device)])
            weight, bias, steps, history = fit_counterfactual(
                features, labels[covered.to(device)], classifier.weight.detach(),
                classifier.bias.detach(), self.optim, self.anchor)
            entry = CounterfactualEntry(fit.scope, weight.cpu(), bias.cpu(), inside[covered])
            entries = list(earlier_memory.entries) if earlier_memory is not None else []
            after_state = SideState.of(SeracMemory(block, head, entries + [entry]))
            after = predictions_with(model, after_state, images)
        return side_edit_result(
            self, earlier, after_state, base, where={"block": block, "classifier": head},
            window=window, start=start, steps=steps, history=history, labels=labels,
            before=before, after=after, anchor=self.anchor, scoped=True,
            covered=covered.tolist(), outside_scope=int((~covered).sum()), scope_rule=self.rule,
            scope_threshold=fit.threshold, scope_outside=len(outside),
            scope_avoided=0 if avoided is None else len(avoided), entries=len(entries) + 1)


def fit_counterfactual(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, config: OptimConfig, anchor: float
                       ) -> tuple[torch.Tensor, torch.Tensor, int, list[float]]:
    """Fine-tune a copy of the classifier (``weight``, ``bias``) on pre-logits ``features``
    until every image is right and CE <= target (the shared loop's stopping rule)."""
    w = nn.Parameter(weight.clone().float())
    b = nn.Parameter(bias.clone().float())
    optimizer = make_optimizer(config.optimizer, [w, b], config.lr)
    history: list[float] = []
    steps = 0
    while True:
        logits = F.linear(features, w, b)
        ce = F.cross_entropy(logits, labels)
        history.append(float(ce.detach()))
        right = bool((logits.argmax(-1) == labels).all())
        if (right and history[-1] <= config.ce_target) or steps >= config.max_steps:
            break
        loss = ce + anchor * ((w - weight).pow(2).sum() + (b - bias).pow(2).sum())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return w.detach(), b.detach(), steps, history


@torch.no_grad()
def predictions_with(model: nn.Module, state: SideState, images: torch.Tensor) -> torch.Tensor:
    """The model's predictions for ``images`` with the memory ``state`` in place of its own."""
    memory = state.build().to(images.device)
    with swapped_in(model, SeracMemory.kind, memory.hook_points()):
        return model(images).argmax(-1).cpu()
