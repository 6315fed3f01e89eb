"""Meta-training the mask hypernetwork (once per base model, before any edit).

For a batch of pseudo edit episodes, free per-episode mask variables are optimised directly
(the authors' decoupling trick): an inner loop of masked gradient steps on the window's FFN
weights tries to make the mixed image predict what the clean image did (KL at temperature T),
and an outer loop trades that KL against the mask's L1 size. The optimised masks then become
BCE targets for the hypernetwork, which learns to predict them from the image alone.

Vectorisation: every episode has its own weight change, kept in factored form (the inputs and
output-gradients of each edited layer, one pair per inner step) instead of a dense delta per
episode. The gradient with respect to an effective weight is ``G^T X``; the masked update is
``-lr * mask * G^T X``; its effect on a new input ``x`` is ``-lr * ((x X^T) G) * mask``, a
pair of batched matmuls over all episodes at once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .editors.base import frozen
from .errors import InvalidInputError
from .episodes import EpisodeBatch, episode_settings, episodes_from_config
from .forward import SplitForward, pooled_embedding
from .hypernet import MASK_SHARPNESS, MaskHypernet, new_hypernet
from .sites import EditWindow, edit_window

CHECKPOINT_NAME = "metatrain-checkpoint.pt"
LOG_NAME = "metatrain-log.jsonl"


@dataclass
class MetaTrainConfig:
    """Meta-training settings; defaults follow the paper except where noted."""

    iterations: int = 500
    batch_size: int = 8
    temperature: float = 5.0
    inner_steps: int = 5
    inner_lr: float = 1e-2       # paper 1e-3; on the reference model 1e-3 barely moves the KL
    outer_steps: int = 10
    outer_lr: float = 0.1
    sparsity: float = 1.0        # lambda of the L1 (mean mask) term
    target_sharpness: float = 10.0
    hypernet_lr: float = 1e-4
    hypernet_steps: int = 1
    second_order: bool = False   # differentiate through the inner gradients (costly)
    vectorized: bool = True
    episodes: str = "cutmix"     # or "pgd" (the paper's Fig. 6a ablation)
    cutmix_min_frac: float = 0.2
    cutmix_max_frac: float = 0.6
    pgd_epsilon: float = 0.1     # L-inf radius in model input units
    pgd_steps: int = 10
    hypernet_width: int | None = None
    hypernet_depth: int = 3
    hypernet_heads: int = 4
    seed: int = 0
    checkpoint_every: int = 50

    def settings(self) -> dict[str, Any]:
        """Every setting but the options of episode kinds not in use, so that adding a kind
        changes neither an existing fingerprint nor a cached hypernetwork's match."""
        return episode_settings(asdict(self), self.episodes)

    def fingerprint(self) -> str:
        """Settings that change results (not bookkeeping) -> checkpoint compatibility."""
        data = {k: v for k, v in self.settings().items() if k not in ("iterations",
                                                                        "checkpoint_every")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EpisodeStats:
    kl_before: float
    kl_after: float
    mask_mean: float


@dataclass
class MetaTrainResult:
    hypernet: MaskHypernet
    log: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0


# -- the factored inner loop ------------------------------------------------------------------
class FactoredDeltas:
    """Per-episode masked weight changes on the window, as sums of (input, grad) factors."""

    def __init__(self, model: nn.Module, window: EditWindow, masks: list[torch.Tensor],
                 lr: float) -> None:
        self.window, self.masks, self.lr = window, masks, lr
        self.factors: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in masks]
        self.inputs: list[torch.Tensor | None] = [None] * len(masks)
        self.outputs: list[torch.Tensor | None] = [None] * len(masks)
        self._handles = []
        for j, (site, which) in enumerate(window.matrices):
            module = site.fc1(model) if which == "fc1" else site.fc2(model)
            self._handles.append(module.register_forward_hook(self._hook(j, which)))

    def _hook(self, j: int, which: str) -> Callable:
        def hook(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            x = args[0]
            if self.factors[j]:
                xs = torch.cat([f[0] for f in self.factors[j]], dim=1)   # (B, T*N, in)
                gs = torch.cat([f[1] for f in self.factors[j]], dim=1)   # (B, T*N, out)
                mask = self.masks[j].unsqueeze(1)                         # (B, 1, H)
                if which == "fc1":   # mask on output units
                    out = out - self.lr * torch.bmm(torch.bmm(x, xs.transpose(1, 2)), gs) * mask
                else:                # mask on input units
                    out = out - self.lr * torch.bmm(torch.bmm(x * mask, xs.transpose(1, 2)), gs)
            if not out.requires_grad:  # first edited layer before any factor: start the graph
                out = out.detach().requires_grad_()
            self.inputs[j], self.outputs[j] = x, out
            return out
        return hook

    def step(self, loss: torch.Tensor, create_graph: bool) -> None:
        """One masked gradient step: record this step's (input, output-grad) factors."""
        grads = torch.autograd.grad(loss, self.outputs, create_graph=create_graph)
        for j, grad in enumerate(grads):
            x = self.inputs[j]
            self.factors[j].append((x if create_graph else x.detach(),
                                    grad if create_graph else grad.detach()))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _kl(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-episode KL(target || model) at temperature T, scaled by T^2."""
    log_p = F.log_softmax(logits / temperature, dim=-1)
    return (target_probs * (target_probs.clamp_min(1e-12).log() - log_p)).sum(-1) \
        * temperature ** 2


def optimise_episode_masks(model: nn.Module, window: EditWindow, split: SplitForward,
                           batch: EpisodeBatch, config: MetaTrainConfig
                           ) -> tuple[list[torch.Tensor], EpisodeStats]:
    """Optimise free mask variables for a batch of episodes; return target masks (B, H_j)."""
    with torch.no_grad():
        target = F.softmax(model(batch.clean) / config.temperature, dim=-1)
        hidden = split.prefix(batch.mixed)
        kl_before = float(_kl(split.suffix(hidden), target, config.temperature).mean())
    sizes = window.mask_sizes
    logits = torch.zeros(len(batch.mixed), sum(sizes), device=hidden.device, requires_grad=True)
    optimizer = torch.optim.RMSprop([logits], lr=config.outer_lr)
    kl_after = kl_before
    for _ in range(config.outer_steps):
        masks = list(torch.sigmoid(config.target_sharpness * logits).split(sizes, dim=1))
        deltas = FactoredDeltas(model, window, masks, config.inner_lr)
        try:
            for _ in range(config.inner_steps):
                loss = _kl(split.suffix(hidden), target, config.temperature).sum()
                deltas.step(loss, create_graph=config.second_order)
            kl = _kl(split.suffix(hidden), target, config.temperature)
        finally:
            deltas.close()
        mask_mean = torch.cat(masks, dim=1).mean(1)
        outer = (kl + config.sparsity * mask_mean).sum()
        optimizer.zero_grad(set_to_none=True)
        outer.backward()
        optimizer.step()
        kl_after = float(kl.detach().mean())
    with torch.no_grad():
        final = torch.sigmoid(config.target_sharpness * logits)
    return (list(final.split(sizes, dim=1)),
            EpisodeStats(kl_before, kl_after, float(final.mean())))


def episode_targets(model: nn.Module, window: EditWindow, split: SplitForward,
                    batch: EpisodeBatch, config: MetaTrainConfig
                    ) -> tuple[list[torch.Tensor], EpisodeStats]:
    """Vectorised over the batch, or one episode at a time (for comparison)."""
    if config.vectorized:
        return optimise_episode_masks(model, window, split, batch, config)
    parts, stats = [], []
    for i in range(len(batch.mixed)):
        one = EpisodeBatch(batch.mixed[i:i + 1], batch.clean[i:i + 1])
        masks, s = optimise_episode_masks(model, window, split, one, config)
        parts.append(masks)
        stats.append(s)
    masks = [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return masks, EpisodeStats(mean([s.kl_before for s in stats]),
                               mean([s.kl_after for s in stats]),
                               mean([s.mask_mean for s in stats]))


# -- the training loop --------------------------------------------------------------------------
def meta_train(model: nn.Module, images: torch.Tensor, config: MetaTrainConfig | None = None,
               window: EditWindow | None = None, out_dir: str | Path | None = None,
               architecture: str = "",
               on_iteration: Callable[[int, int, dict[str, float]], None] | None = None,
               ) -> MetaTrainResult:
    """Meta-train a hypernetwork for ``model`` on unlabeled ``images`` (model inputs).

    With ``out_dir``, a checkpoint is written every ``checkpoint_every`` iterations and a run
    with the same settings resumes from it; the loss log is appended as JSON lines.
    """
    config = config or MetaTrainConfig()
    window = window or edit_window(model)
    device = next(model.parameters()).device
    images = images.to(device)
    torch.manual_seed(config.seed)
    hypernet = new_hypernet(model, window, width=config.hypernet_width,
                            depth=config.hypernet_depth, num_heads=config.hypernet_heads,
                            architecture=architecture).to(device)
    optimizer = torch.optim.RMSprop(hypernet.parameters(), lr=config.hypernet_lr)
    total_updates = max(1, config.iterations * config.hypernet_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_updates)
                                                    / total_updates)))
    generator = torch.Generator().manual_seed(config.seed)
    log: list[dict[str, Any]] = []
    start = 0
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (out / CHECKPOINT_NAME).is_file():
        start, log = _resume(out / CHECKPOINT_NAME, config, hypernet, optimizer, scheduler,
                             generator)
    resumed_from = start

    with frozen(model):
        split = SplitForward(model, window.sites[0].block_path)
        split.verify(images[:2])
        sampler = episodes_from_config(config, model, images)
        for iteration in range(start, config.iterations):
            batch = sampler(config.batch_size, generator)
            batch = EpisodeBatch(batch.mixed.to(device), batch.clean.to(device))
            targets, stats = episode_targets(model, window, split, batch, config)
            with torch.no_grad():
                embedding = pooled_embedding(model, batch.mixed)
            hypernet.train()
            for _ in range(config.hypernet_steps):
                predicted = hypernet(embedding)
                bce = sum(F.binary_cross_entropy_with_logits(MASK_SHARPNESS * p, t)
                          for p, t in zip(predicted, targets)) / len(targets)
                optimizer.zero_grad(set_to_none=True)
                bce.backward()
                optimizer.step()
                scheduler.step()
            entry = {"iteration": iteration + 1, "bce": float(bce.detach()),
                     "kl_before": stats.kl_before, "kl_after": stats.kl_after,
                     "target_mask_mean": stats.mask_mean, "lr": scheduler.get_last_lr()[0]}
            log.append(entry)
            if out is not None:
                _append_log(out / LOG_NAME, entry)
                if (iteration + 1) % config.checkpoint_every == 0 or \
                        iteration + 1 == config.iterations:
                    _checkpoint(out / CHECKPOINT_NAME, config, iteration + 1, hypernet,
                                optimizer, scheduler, generator, log)
            if on_iteration is not None:
                on_iteration(iteration + 1, config.iterations, entry)
    hypernet.eval()
    hypernet.config.training = {**config.settings(), "final": log[-1] if log else {}}
    if out is not None:
        hypernet.save(out)
    return MetaTrainResult(hypernet=hypernet, log=log, resumed_from=resumed_from)


def _append_log(path: Path, entry: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def _checkpoint(path: Path, config: MetaTrainConfig, iteration: int, hypernet: MaskHypernet,
                optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                log: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"config_fingerprint": config.fingerprint(), "iteration": iteration,
                "hypernet": hypernet.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "log": json.dumps(log)}, tmp)
    tmp.replace(path)  # atomic: a kill mid-write leaves the previous checkpoint intact


def _resume(path: Path, config: MetaTrainConfig, hypernet: MaskHypernet,
            optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator
            ) -> tuple[int, list[dict[str, Any]]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config_fingerprint"] != config.fingerprint():
        raise InvalidInputError(f"checkpoint {path} was written with other meta-training "
                                "settings; delete it or use a new output directory")
    hypernet.load_state_dict(state["hypernet"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["iteration"]), json.loads(state["log"])
