"""Error groups of a model on shifted reference images: the benchmark's and the demo's input.

A shift is applied to a pool (the ``shift`` pool by default), the model classifies the shifted
images, and its mistakes are grouped by (true class, predicted class), as the production
collector groups real misclassifications.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..metrics import predict_logits
from ..models import ModelSpec
from ..preprocess import Preprocessor
from .data import LabeledImages
from .shifts import apply_shift

DEFAULT_MIN_GROUP_SIZE = 8


@dataclass
class ShiftedErrorGroup:
    """Shifted images of one true class that the model assigns to one wrong class.

    ``images.ids`` are the ids of the unshifted source images, so overlap with any other pool
    can be checked with :func:`~vitedit_ops.reference.data.assert_disjoint`.
    """

    shift: str
    true_class: int
    predicted_class: int
    images: LabeledImages
    seed: int

    @property
    def name(self) -> str:
        return f"{self.shift}:{self.true_class}->{self.predicted_class}"

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class ShiftOutcome:
    """What one shift does to a model: accuracy on the shifted pool and its error groups."""

    shift: str
    seed: int
    accuracy: float
    errors: int
    groups: list[ShiftedErrorGroup]

    def summary(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "errors": self.errors,
                "groups": {g.name.split(":", 1)[1]: len(g) for g in self.groups}}


def shifted_error_groups(model: nn.Module, spec: ModelSpec, pool: LabeledImages, shift: str,
                         seed: int = 0, min_size: int = DEFAULT_MIN_GROUP_SIZE,
                         **params: Any) -> ShiftOutcome:
    """Apply ``shift`` to ``pool``, classify, and keep error groups of >= ``min_size`` images,
    largest first (ties by class pair)."""
    shifted = apply_shift(shift, pool.pixels, seed=seed, **params)
    predictions = predict_logits(model, Preprocessor(spec).normalize(shifted)).argmax(-1)
    wrong = predictions != pool.labels
    members: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in torch.nonzero(wrong).flatten().tolist():
        members[(int(pool.labels[i]), int(predictions[i]))].append(i)
    groups = [ShiftedErrorGroup(shift, true, pred,
                                LabeledImages(shifted[idx], pool.labels[idx],
                                              [pool.ids[i] for i in idx]), seed)
              for (true, pred), idx in members.items() if len(idx) >= min_size]
    groups.sort(key=lambda g: (-len(g), g.true_class, g.predicted_class))
    accuracy = float((~wrong).float().mean()) if len(pool) else float("nan")
    return ShiftOutcome(shift, seed, accuracy, int(wrong.sum()), groups)
