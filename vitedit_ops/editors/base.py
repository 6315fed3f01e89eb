"""The common editor interface, the editor registry and the shared optimisation loop.

Every method (localized, random mask, window FT, FT-L1/L2, LoRA, full FT) is an :class:`Editor`
dataclass, registered where it is defined with ``@register_editor("name")``, whose
``edit(model, images, labels)`` returns an :class:`EditResult` holding a revertible
:class:`~vitedit_ops.patch.Patch`. Editors never modify the model they are given: the caller
decides whether to apply the patch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..delta import MatrixDelta, hooked
from ..errors import InvalidInputError
from ..forward import SplitForward
from ..models import fingerprint
from ..patch import Patch
from ..registries import Registry
from ..side import SidePatch, SideState
from ..sites import EditWindow

OPTIMIZERS = ("rmsprop", "adam", "sgd")


@dataclass
class EditResult:
    """What one edit did: the patch, whether it worked, and what it cost."""

    method: str
    patch: Patch
    success: bool
    steps: int
    seconds: float
    loss_history: list[float]
    labels: torch.Tensor
    predictions_before: torch.Tensor
    predictions_after: torch.Tensor
    mask_scores: dict[str, torch.Tensor] | None = None
    kept_units: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def reliability(self) -> float:
        return float((self.predictions_after == self.labels).float().mean())

    @property
    def kept_fraction(self) -> float:
        """Share of the window's hidden units the patch touches (1.0 for dense methods)."""
        return float(self.settings.get("kept_fraction", 1.0))


@dataclass
class OptimConfig:
    """How the edit optimises: the same footing for every method."""

    lr: float = 1e-3
    optimizer: str = "rmsprop"
    max_steps: int = 100
    ce_target: float = 0.01

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"unknown optimizer {self.optimizer!r}; use {OPTIMIZERS}")
        if not self.lr > 0 or self.max_steps < 0:
            raise InvalidInputError("lr must be > 0 and max_steps >= 0")


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr: float
                   ) -> torch.optim.Optimizer:
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


class Editor:
    """Base class: subclasses build their deltas; the loop and bookkeeping are shared."""

    name = "editor"
    needs_preserved = ""  # why it refuses to edit without a preserved pool ("": it does not)

    def edit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             ) -> EditResult:
        raise NotImplementedError

    def checked_inputs(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``validate_edit_inputs``, and the preserved pool this editor cannot work without."""
        pool = getattr(self, "preserved", None)
        if self.needs_preserved and (pool is None or len(pool) == 0):
            raise InvalidInputError(f"{self.name} needs a preserved pool "
                                    f"({self.needs_preserved})")
        return validate_edit_inputs(model, images, labels)


EDITORS: Registry[type[Editor]] = Registry("editor")
register_editor = EDITORS.register


def validate_edit_inputs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clear errors for unusable edit batches; returns them on the model's device."""
    num_classes = getattr(model, "num_classes", None)
    if images.ndim != 4:
        raise InvalidInputError(f"edit images must be (N, C, H, W), got {tuple(images.shape)}")
    labels = torch.as_tensor(labels).reshape(-1).long()
    if len(images) == 0 or len(images) != len(labels):
        raise InvalidInputError(f"{len(images)} edit images but {len(labels)} labels")
    if num_classes is not None and ((labels < 0) | (labels >= num_classes)).any():
        raise InvalidInputError(f"label out of range 0..{num_classes - 1}: {labels.tolist()}")
    if not torch.isfinite(images).all():
        raise InvalidInputError("edit images contain NaN or Inf")
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise InvalidInputError(f"model weight {name} holds NaN or Inf")
    device = next(model.parameters()).device
    return images.to(device), labels.to(device)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No gradients for base weights (only deltas train), eval mode; restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def side_edit_result(editor: Editor, before_state: SideState | None, after_state: SideState,
                     base_fingerprint: str, *, where: dict[str, str], window: EditWindow,
                     start: float, steps: int, history: list[float], labels: torch.Tensor,
                     before: torch.Tensor, after: torch.Tensor, **settings: Any) -> EditResult:
    """A side-module edit's patch and result (GRACE, T-Patcher, SERAC): ``where`` names the
    modules it sits in (patch metadata and settings); ``settings`` adds the method's own after
    the optimiser's and the window's."""
    optim = editor.optim
    patch = SidePatch(before_state, after_state, base_fingerprint,
                      metadata={"method": editor.name, **where})
    labels_cpu = labels.cpu()
    return EditResult(
        method=editor.name, patch=patch, success=bool((after == labels_cpu).all()),
        steps=steps, seconds=time.perf_counter() - start, loss_history=history,
        labels=labels_cpu, predictions_before=before, predictions_after=after,
        settings={"lr": optim.lr, "optimizer": optim.optimizer, "max_steps": optim.max_steps,
                  "ce_target": optim.ce_target, "window": [window.start, window.end], **where,
                  **settings, "kept_fraction": 0.0})


class SideTraining(nn.Module):
    """A side module while an edit fits it: its trainable parameters and its hooks."""

    def hooked(self, model: nn.Module) -> AbstractContextManager[None]:
        """While active, ``model`` runs with this candidate instead of its installed side
        module of the same kind."""
        raise NotImplementedError


@dataclass
class Replay:
    """Images whose predictions the edit should keep: a KL(original || edited) term."""

    inputs: torch.Tensor
    weight: float = 1.0


REPLAY_SCOPES = ("confusable", "all")


def select_replay(model: nn.Module, pool: torch.Tensor | None, before: torch.Tensor,
                  labels: torch.Tensor, scope: str, weight: float) -> Replay | None:
    """The replay images for one edit.

    ``confusable`` keeps only pool images the unedited model assigns to a class this edit
    moves predictions between (the true class and the wrongly predicted ones): those are the
    predictions a fix of "t predicted as p" endangers, so the locality constraint is spent
    where the damage would happen instead of on unrelated images.
    """
    if pool is None or weight <= 0 or len(pool) == 0:
        return None
    if scope not in REPLAY_SCOPES:
        raise InvalidInputError(f"unknown replay scope {scope!r}; use {REPLAY_SCOPES}")
    device = labels.device
    if scope == "all":
        return Replay(pool.to(device), weight)
    with torch.no_grad():
        predicted = model(pool.to(device)).argmax(-1)
    classes = torch.unique(torch.cat([labels, before.to(device)]))
    chosen = torch.isin(predicted, classes)
    return Replay(pool.to(device)[chosen], weight) if chosen.any() else None


def optimize_window(model: nn.Module, window: EditWindow, deltas: Sequence[MatrixDelta],
                    images: torch.Tensor, labels: torch.Tensor, config: OptimConfig,
                    penalty: Callable[[], torch.Tensor] | None = None,
                    replay: Replay | None = None,
                    augmented: tuple[torch.Tensor, torch.Tensor] | None = None,
                    side: SideTraining | None = None,
                    ) -> tuple[int, list[float], torch.Tensor]:
    """Fine-tune only ``deltas`` (and ``side``'s parameters) until every edit image is right
    and CE <= target.

    The blocks before the window run once (for the edit, augmented and replay images alike);
    each step runs only the window onward. ``augmented`` (images, labels) adds its own CE term
    to the loss but not to the stopping rule, which stays the same for every method.
    ``side`` is a side module being fitted (GRACE's codebook, T-Patcher's neurons): its hooks
    are active while the loop runs.
    Returns (optimizer steps taken, CE of the edit images per step, their predictions).
    """
    split = SplitForward(model, window.sites[0].block_path)
    split.verify(images[:2])
    hidden = split.prefix(images)
    count = len(images)
    extra_labels = None
    if augmented is not None and len(augmented[0]):
        hidden = torch.cat([hidden, split.prefix(augmented[0].to(images.device))])
        extra_labels = augmented[1].to(labels.device)
    trained = len(hidden)
    if replay is not None and len(replay.inputs):
        replay_hidden = split.prefix(replay.inputs.to(images.device))
        with torch.no_grad():
            original = F.log_softmax(split.suffix(replay_hidden), dim=-1)
        hidden = torch.cat([hidden, replay_hidden])
    params = [p for d in deltas for p in d.parameters()]
    params += list(side.parameters()) if side is not None else []
    optimizer = make_optimizer(config.optimizer, params, config.lr)
    history: list[float] = []
    steps = 0
    with hooked(model, window, deltas), (side.hooked(model) if side is not None
                                         else nullcontext()):
        while True:
            all_logits = split.suffix(hidden)
            logits = all_logits[:count]
            ce = F.cross_entropy(logits, labels)
            history.append(float(ce.detach()))
            right = bool((logits.argmax(-1) == labels).all())
            if (right and history[-1] <= config.ce_target) or steps >= config.max_steps:
                break
            loss = ce
            if extra_labels is not None:
                loss = loss + F.cross_entropy(all_logits[count:trained], extra_labels)
            if penalty is not None:
                loss = loss + penalty()
            if len(all_logits) > trained:
                edited = F.log_softmax(all_logits[trained:], dim=-1)
                loss = loss + replay.weight * F.kl_div(edited, original, log_target=True,
                                                       reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for delta in deltas:
                    delta.project_()
            steps += 1
    return steps, history, logits.argmax(-1).detach().cpu()


def window_edit(method: str, model: nn.Module, window: EditWindow,
                deltas: Sequence[MatrixDelta], images: torch.Tensor, labels: torch.Tensor,
                config: OptimConfig, settings: dict[str, Any],
                penalty: Callable[[], torch.Tensor] | None = None,
                mask_scores: dict[str, torch.Tensor] | None = None,
                kept_units: dict[str, torch.Tensor] | None = None,
                replay: Replay | None = None,
                augmented: tuple[torch.Tensor, torch.Tensor] | None = None) -> EditResult:
    """Run the shared loop for window deltas and package the outcome as an EditResult."""
    start = time.perf_counter()
    base_fp = fingerprint(model)
    with frozen(model):
        with torch.no_grad():
            before = model(images).argmax(-1).cpu()
        for d in deltas:
            d.to(images.device)
        steps, history, after = optimize_window(model, window, deltas, images, labels, config,
                                                penalty=penalty, replay=replay,
                                                augmented=augmented)
    patch = Patch.from_deltas(model, [d.patch_entry() for d in deltas], base_fp,
                              metadata={"method": method, "window": f"{window.start}-{window.end}"})
    labels_cpu = labels.cpu()
    return EditResult(
        method=method, patch=patch, success=bool((after == labels_cpu).all()), steps=steps,
        seconds=time.perf_counter() - start, loss_history=history, labels=labels_cpu,
        predictions_before=before, predictions_after=after, mask_scores=mask_scores,
        kept_units=kept_units or {},
        settings={"lr": config.lr, "optimizer": config.optimizer, "max_steps": config.max_steps,
                  "ce_target": config.ce_target, "window": [window.start, window.end],
                  **settings})
