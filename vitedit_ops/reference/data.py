"""The reference data: scikit-learn's real handwritten digits, split into disjoint pools.

The digits ship inside scikit-learn (no download). Each 8x8 image is upsampled to 32x32 with 3
channels, floats in [0, 1]. A fixed, seeded, class-stratified split assigns every image to
exactly one pool, so nothing used to train or edit a model is ever used to evaluate it:

==============  =====  ================================================================
pool            size   used for
==============  =====  ================================================================
``locality``      400  the evaluation locality set (gate suite, benchmark LR)
``shift``         510  source images of shifted error groups (edit + generalization)
``validation``    100  window search and early checks
``preserved``     100  held-out images whose predictions edits must keep (an editor may
                       use them beyond the edit images)
``train``         687  training the reference model; unlabeled meta-training images
==============  =====  ================================================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from ..errors import VitEditError

IMAGE_SIZE = 32
CHANNELS = 3
NUM_CLASSES = 10
DEFAULT_SPLIT_SEED = 0
# Held-out pools, in the order they are cut from the stratified ordering; train takes the rest.
POOL_SIZES: dict[str, int] = {"locality": 400, "shift": 510, "validation": 100,
                               "preserved": 100}
POOLS: tuple[str, ...] = ("train", *POOL_SIZES)
ID_PREFIX = "digits-"


class PoolOverlapError(VitEditError):
    """Two image sets that must not share an image do (training/editing data leaks into eval)."""


@dataclass
class LabeledImages:
    """Images as (N, 3, 32, 32) floats in [0, 1], their classes and stable source ids."""

    pixels: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    def __post_init__(self) -> None:
        if not (len(self.pixels) == len(self.labels) == len(self.ids)):
            raise ValueError(f"{len(self.pixels)} images, {len(self.labels)} labels and "
                             f"{len(self.ids)} ids: they must match")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("image ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Iterable[int] | torch.Tensor) -> LabeledImages:
        index = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor)
                                else indices, dtype=torch.long)
        return LabeledImages(self.pixels[index], self.labels[index],
                             [self.ids[i] for i in index.tolist()])

    def ids_hash(self) -> str:
        """sha256 of the sorted ids: identifies the set of images, whatever their order."""
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()


@dataclass
class ReferenceData:
    """The five disjoint pools of the reference digits and the seed that cut them."""

    train: LabeledImages
    validation: LabeledImages
    locality: LabeledImages
    preserved: LabeledImages
    shift: LabeledImages
    split_seed: int = DEFAULT_SPLIT_SEED

    def pools(self) -> dict[str, LabeledImages]:
        return {name: getattr(self, name) for name in POOLS}

    def sizes(self) -> dict[str, int]:
        return {name: len(pool) for name, pool in self.pools().items()}

    def split_hashes(self) -> dict[str, str]:
        """sha256 of each pool's ids: recorded in model cards so a changed split is detected."""
        return {name: pool.ids_hash() for name, pool in self.pools().items()}


def assert_disjoint(sets: Mapping[str, LabeledImages | Iterable[str]]) -> None:
    """Raise :class:`PoolOverlapError` if any two named image sets share an id."""
    named = {name: set(s.ids if isinstance(s, LabeledImages) else s) for name, s in sets.items()}
    names = list(named)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = named[a] & named[b]
            if shared:
                example = ", ".join(sorted(shared)[:3])
                raise PoolOverlapError(f"{a} and {b} share {len(shared)} images (e.g. {example})")


def digits_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 3, 32, 32) floats in [0, 1] and their labels.

    Bilinear upsampling keeps values in range and gives smooth strokes several pixels wide, so
    8-pixel patches see partial strokes, as a ViT on real photos does.
    """
    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    big = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                        align_corners=False).clamp(0.0, 1.0)
    return big.expand(-1, CHANNELS, -1, -1).contiguous(), torch.from_numpy(digits.target).long()


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded ordering of indices in which every prefix has nearly the class proportions.

    Each class is shuffled, and its i-th member is placed at relative position (i + u) / n_c
    (u uniform in [0, 1)): cutting consecutive slices then gives stratified pools.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        shuffled = rng.permutation(members)
        keys[shuffled] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")


def load_reference_data(split_seed: int = DEFAULT_SPLIT_SEED) -> ReferenceData:
    """The digits split into the reference pools; same seed, same pools, on every machine."""
    pixels, labels = digits_pixels()
    ids = [f"{ID_PREFIX}{i}" for i in range(len(labels))]
    everything = LabeledImages(pixels, labels, ids)
    order = stratified_order(labels.numpy(), split_seed)
    if sum(POOL_SIZES.values()) >= len(order):
        raise ValueError(f"held-out pools ({sum(POOL_SIZES.values())}) leave no training images")
    pools: dict[str, LabeledImages] = {}
    start = 0
    for name, size in POOL_SIZES.items():
        pools[name] = everything.subset(np.sort(order[start:start + size]))
        start += size
    pools["train"] = everything.subset(np.sort(order[start:]))
    data = ReferenceData(**pools, split_seed=split_seed)
    assert_disjoint(data.pools())
    return data
