"""The preserved pool: images whose predictions every edit of the night must keep.

Built per night, for editors that take one: production images whose predictions feedback
confirmed correct (newest first), plus the lineage's held-out preserved pool registered with
the base. An image of the gate suite never enters it (the gate must measure images the edit
never saw): such images are dropped by hash, and the result is checked with the suite's own
``assert_disjoint``; the gate checks it once more from the hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import torch

from monitoring.collector import Collector
from monitoring.images import ImageStore
from monitoring.store import MonitoringStore
from vitedit_ops.gate import image_hashes
from vitedit_ops.gate.suite import UNKNOWN_LABEL
from vitedit_ops.preprocess import Preprocessor

from .lineage import ChampionContext


@dataclass(frozen=True)
class PreservedPool:
    """Pixels in [0, 1] with their hashes and true classes (``UNKNOWN_LABEL`` for the base's
    pool); the first ``from_production`` images came from production."""

    pixels: torch.Tensor
    hashes: tuple[str, ...]
    from_production: int
    labels: torch.Tensor


def build_preserved_pool(context: ChampionContext, store: MonitoringStore, images: ImageStore,
                         since: datetime, limit: int,
                         exclude: frozenset[str] = frozenset()) -> PreservedPool:
    """Confirmed-correct production images + the base's held-out pool, minus the suite and
    minus the ``exclude`` images (by stored sha256: the night's errors; an image served
    wrong once and right later is an error to edit and a held-out image the gate measures,
    never a preserved one)."""
    confirmed = [c for c in Collector(store, images).confirmed_correct(since, context.ref.name,
                                                                       limit=limit)
                 if c.image.sha256 not in exclude]
    preprocessor = Preprocessor(context.spec)
    parts = [torch.stack([preprocessor.pixels_from_pil(images.load_image(c.image.sha256))
                          for c in confirmed])] if confirmed else []
    if context.base_preserved is not None:
        parts.append(context.base_preserved)
    if not parts:
        return PreservedPool(torch.empty(0, *context.spec.input_size), (), 0,
                             torch.empty(0, dtype=torch.long))
    pixels = torch.cat(parts)
    labels = torch.cat([torch.tensor([c.true_class for c in confirmed], dtype=torch.long),
                        torch.full((len(pixels) - len(confirmed),), UNKNOWN_LABEL)])
    excluded = set(context.suite.hashes) | set(context.suite.retention_hashes)
    keep, hashes = [], []
    for i, digest in enumerate(image_hashes(pixels)):
        if digest not in excluded:
            excluded.add(digest)  # also drops duplicates
            keep.append(i)
            hashes.append(digest)
    context.suite.assert_disjoint(hashes, what="preserved pool")
    return PreservedPool(pixels[keep], tuple(hashes),
                         sum(1 for i in keep if i < len(confirmed)), labels[keep])
