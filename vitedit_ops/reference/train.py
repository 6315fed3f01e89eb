"""Train the reference timm ViT on the train pool: seeded, and bit-reproducible on CPU.

Recipe (tuned on the held-out pools, docs/reference-model.md): AdamW, batch 32, peak lr 1e-3 with linear warmup and cosine
decay, weight decay 0.05, 40 epochs, random translations of up to 2 pixels, one CPU thread.
Every random draw (initialisation, shuffling, augmentation) comes from the config's seed, and
the caller's global RNG state and thread count are left untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from torch import nn

from ..device import resolve_device
from ..models import ModelSpec
from ..preprocess import Preprocessor
from .data import CHANNELS, IMAGE_SIZE, NUM_CLASSES, LabeledImages
from .shifts import translate_pixels

ARCHITECTURE = "vit_tiny_patch16_224"
MODEL_KWARGS: dict[str, Any] = {"img_size": IMAGE_SIZE, "patch_size": 8, "embed_dim": 128,
                                "depth": 6, "num_heads": 4, "mlp_ratio": 4.0}
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def reference_spec() -> ModelSpec:
    """The reference ViT: timm's VisionTransformer at 32x32, patch 8, width 128, depth 6."""
    return ModelSpec(architecture=ARCHITECTURE, num_classes=NUM_CLASSES,
                     model_kwargs=dict(MODEL_KWARGS), input_size=(CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
                     mean=MEAN, std=STD, interpolation="bilinear", crop_pct=1.0,
                     class_names=[str(c) for c in range(NUM_CLASSES)])


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (with the data split and the spec)."""

    seed: int = 0
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    max_translate: int = 2       # augmentation; 0 disables it
    max_steps: int | None = None  # cut training short (tests, smoke runs)
    # CPU threads while training. Matmul results depend on the thread count in their last
    # bits, so a fixed count makes the fingerprint independent of the machine's cores; this
    # model is too small to gain from a second thread (and loses badly on a busy machine).
    threads: int | None = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainStats:
    steps: int
    epochs: float
    seconds: float
    cpu_seconds: float
    final_loss: float
    device: str
    threads: int


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_reference(images: LabeledImages, config: TrainConfig | None = None,
                    device: str | torch.device | None = "auto", progress: bool = True
                    ) -> tuple[nn.Module, ModelSpec, TrainStats]:
    """Train a fresh reference ViT on ``images`` (the train pool); returns it in eval mode."""
    config = config or TrainConfig()
    device = resolve_device(device)
    with pinned_threads(config.threads, device):
        return _train(images, config, device, progress)


@contextmanager
def pinned_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run CPU work on exactly ``threads`` threads (None: as is), then restore the count."""
    previous = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(images: LabeledImages, config: TrainConfig, device: torch.device, progress: bool
           ) -> tuple[nn.Module, ModelSpec, TrainStats]:
    spec = reference_spec()
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = spec.build()
    model.to(device).train()

    preprocess = Preprocessor(spec)
    n = len(images)
    per_epoch = math.ceil(n / config.batch_size)
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = max(1, int(config.warmup_fraction * total))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total, warmup))

    columns = (TextColumn("[bold]training reference ViT"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    start, cpu_start = time.perf_counter(), time.process_time()
    step, loss_value = 0, float("nan")
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=total, loss=float("nan"))
        while step < total:
            order = torch.randperm(n, generator=generator)
            for begin in range(0, n, config.batch_size):
                if step >= total:
                    break
                batch = order[begin:begin + config.batch_size]
                x = images.pixels[batch]
                if config.max_translate:
                    offsets = torch.randint(-config.max_translate, config.max_translate + 1,
                                            (len(batch), 2), generator=generator)
                    x = translate_pixels(x, offsets)
                logits = model(preprocess.normalize(x).to(device))
                loss = F.cross_entropy(logits, images.labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                loss_value = float(loss.detach())
                bar.update(task, advance=1, loss=loss_value)
    model.eval()
    stats = TrainStats(steps=step, epochs=round(step / per_epoch, 3),
                       seconds=time.perf_counter() - start,
                       cpu_seconds=time.process_time() - cpu_start, final_loss=loss_value,
                       device=str(device), threads=torch.get_num_threads())
    return model, spec, stats
