"""Meta-training an update network (KE, MEND) on the mask hypernetwork's pseudo edits.

Each iteration draws a batch of one-image edit episodes (a disturbed image, the clean image's
class as its target; CutMix or PGD, with the hypernetwork's episode options), edits each with
its own predicted update, and trains on that edit's cross-entropy plus the KL of the edited
model from the base on other images (MEND's ``c_edit * L_e + L_loc``). Every episode's edited
forward runs at once: the updates are per-episode dense deltas applied by batched matmuls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .editors.base import frozen
from .episodes import episode_settings, episodes_from_config
from .errors import InvalidInputError
from .forward import SplitForward, pooled_embedding
from .learned_update import (EditInputs, UpdateNet, episode_deltas, matrix_weights,
                             new_updater, window_factors)
from .sites import EditWindow, edit_window


@dataclass
class UpdaterTrainConfig:
    """Meta-training settings of an update network; the episode options are the mask
    hypernetwork's (``MetaTrainConfig``), so both learn from the same pseudo edits."""

    kind: str = "mend"
    iterations: int = 300
    batch_size: int = 8           # episodes per iteration, each its own one-image edit
    locality_images: int = 8      # other images whose predictions the edits must keep
    lr: float = 1e-3
    edit_weight: float = 0.1      # MEND's published c_edit: L = c_edit * L_e + L_loc
    episodes: str = "cutmix"
    cutmix_min_frac: float = 0.2
    cutmix_max_frac: float = 0.6
    pgd_epsilon: float = 0.1
    pgd_steps: int = 10
    rank: int | None = None       # MEND: the editor MLP's rank
    hidden: int | None = None     # KE: the conditioning MLP's width
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.batch_size < 1 or self.locality_images < 0:
            raise InvalidInputError("iterations >= 0, batch_size >= 1 and "
                                    "locality_images >= 0 are required")
        if not self.lr > 0 or self.edit_weight < 0:
            raise InvalidInputError("lr must be > 0 and edit_weight >= 0")

    def settings(self) -> dict[str, Any]:
        """Every setting but the options of episode kinds not in use."""
        return episode_settings(asdict(self), self.episodes)


@dataclass
class UpdaterTrainResult:
    updater: UpdateNet
    log: list[dict[str, float]]
    seconds: float


def meta_train_updater(model: nn.Module, images: torch.Tensor,
                       config: UpdaterTrainConfig | None = None,
                       window: EditWindow | None = None, architecture: str = "",
                       on_iteration: Callable[[int, int, dict[str, float]], None] | None = None,
                       ) -> UpdaterTrainResult:
    """Meta-train a ``config.kind`` update network for ``model`` on unlabeled ``images``
    (model inputs). Each iteration: a batch of one-image edit episodes (disturbed image,
    the clean image's class as the target), each edited with its own predicted update, and
    ``locality_images`` other images every edit must leave alone."""
    config = config or UpdaterTrainConfig()
    window = window or edit_window(model)
    device = next(model.parameters()).device
    images = images.to(device)
    if len(images) < 2 + config.locality_images:
        raise InvalidInputError(f"meta-training an update network needs at least "
                                f"{2 + config.locality_images} images, got {len(images)}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    updater = new_updater(config.kind, model, window, architecture, rank=config.rank,
                          hidden=config.hidden).to(device)
    optimizer = torch.optim.Adam(updater.parameters(), lr=config.lr)
    log: list[dict[str, float]] = []
    started = time.perf_counter()
    with frozen(model):
        split = SplitForward(model, window.sites[0].block_path)
        split.verify(images[:2])
        sampler = episodes_from_config(config, model, images.cpu())
        weights = matrix_weights(model, window)
        for iteration in range(config.iterations):
            entry = _meta_step(model, window, split, updater, optimizer, sampler, generator,
                               images, weights, config, calibrate=iteration == 0)
            log.append({"iteration": iteration + 1, **entry})
            if on_iteration is not None:
                on_iteration(iteration + 1, config.iterations, log[-1])
    updater.eval()
    updater.config.training = {**config.settings(), "final": log[-1] if log else {}}
    return UpdaterTrainResult(updater, log, time.perf_counter() - started)


def _meta_step(model: nn.Module, window: EditWindow, split: SplitForward, updater: UpdateNet,
               optimizer: torch.optim.Optimizer, sampler: Callable, generator: torch.Generator,
               images: torch.Tensor, weights: list[torch.Tensor], config: UpdaterTrainConfig,
               calibrate: bool) -> dict[str, float]:
    device = images.device
    batch = sampler(config.batch_size, generator)
    mixed, clean = batch.mixed.to(device), batch.clean.to(device)
    count = len(mixed)
    local = images[torch.randint(len(images), (config.locality_images,), generator=generator)
                   .to(device)]
    with torch.no_grad():
        targets = model(clean).argmax(-1)
        edit_hidden = split.prefix(mixed)
        local_hidden = split.prefix(local) if len(local) else edit_hidden[:0]
        base_local = F.log_softmax(split.suffix(local_hidden), -1) if len(local) else None
        inputs = EditInputs(pooled_embedding(model, mixed),
                            F.one_hot(targets, int(model.num_classes)).float())
    logits, factors = window_factors(model, window, split, edit_hidden, targets, count)
    updater.train()
    updater.observe(factors)
    if calibrate:
        updater.calibrate_(factors, inputs, weights)
    deltas = updater.updates(factors, inputs)
    # every episode's edited model on its own image, then on the shared locality images
    rows = [edit_hidden.unsqueeze(1)]
    if base_local is not None:
        rows.append(local_hidden.unsqueeze(0).expand(count, *local_hidden.shape))
    hidden = torch.cat(rows, dim=1).flatten(0, 1)
    with episode_deltas(model, window, deltas):
        edited = split.suffix(hidden).view(count, -1, logits.shape[-1])
    edit_loss = F.cross_entropy(edited[:, 0], targets)
    loc_loss = torch.zeros((), device=device)
    if base_local is not None:
        loc_loss = F.kl_div(F.log_softmax(edited[:, 1:], -1).flatten(0, 1),
                            base_local.repeat(count, 1), log_target=True,
                            reduction="batchmean")
    loss = config.edit_weight * edit_loss + loc_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        success = float((edited[:, 0].argmax(-1) == targets).float().mean())
        unchanged = float((edited[:, 1:].argmax(-1) == base_local.argmax(-1)).float().mean()) \
            if base_local is not None else 1.0
        before = float((logits.argmax(-1) == targets).float().mean())
    return {"loss": float(loss.detach()), "edit_ce": float(edit_loss.detach()),
            "locality_kl": float(loc_loss.detach()), "right_before": before,
            "edit_success": success, "locality_kept": unchanged}
