"""Subpopulations among a night's errors: the edit units that match real shifts.

A shift of production images (a new camera, a thicker pen) splits into dozens of (true,
predicted) pairs of 2-8 images each, but at the edit window's input its images sit together,
away from the clean images. Two stages find them:

1. An error is *off-manifold* when its whitened key is farther from every clean reference
   image than any reference image is from its own nearest neighbour. Clean errors (hard
   digits) stay on-manifold: no scope can tell them from the clean images they resemble.
2. Off-manifold errors are clustered (average linkage, cut at ``scale`` times their median
   nearest-neighbour distance): a shift becomes a few large multi-class clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .scope import Whitening, nearest_other

CLUSTER_SCALE = 2.0


@dataclass(frozen=True)
class Manifold:
    """Where clean images live, in whitened key space."""

    whitening: Whitening
    reference: torch.Tensor   # whitened reference keys
    radius: float             # the largest nearest-neighbour distance within the reference

    @classmethod
    def fit(cls, reference_keys: torch.Tensor) -> Manifold:
        whitening = Whitening.fit(reference_keys)
        z = whitening(reference_keys)
        return cls(whitening, z, float(nearest_other(z).max()))

    def distance(self, keys: torch.Tensor) -> torch.Tensor:
        """Whitened distance of each key to its nearest reference image."""
        if len(keys) == 0:
            return torch.empty(0)
        return torch.cdist(self.whitening(keys), self.reference).min(1).values

    def off(self, keys: torch.Tensor) -> torch.Tensor:
        """Which keys lie off the clean manifold (bool)."""
        return self.distance(keys) > self.radius


def cluster(keys: torch.Tensor, whitening: Whitening, scale: float = CLUSTER_SCALE
            ) -> np.ndarray:
    """A cluster label per key (average linkage in whitened space, cut at ``scale`` x the
    median nearest-neighbour distance); a single key is its own cluster."""
    from sklearn.cluster import AgglomerativeClustering

    if len(keys) < 2:
        return np.zeros(len(keys), dtype=int)
    z = whitening(keys)
    cut = scale * float(nearest_other(z).median())
    return AgglomerativeClustering(n_clusters=None, distance_threshold=max(cut, 1e-9),
                                   linkage="average").fit_predict(z.double().numpy())


def split_large(keys: torch.Tensor, whitening: Whitening, labels: np.ndarray,
                counted: np.ndarray, max_count: int) -> np.ndarray:
    """``labels`` with every cluster holding more than ``max_count`` counted keys (errors)
    split into ``ceil(count / max_count)`` tighter parts (Ward linkage: parts of similar size).

    Why: a loose cluster (the lookback gathers several nights' leftovers into one) gets one
    scope whose ratio is set by the clean image nearest to any of its edges, so the scope
    shrinks to balls around its edit images and misses its own held-out ones; tighter parts
    each get a scope of their own.
    """
    from sklearn.cluster import AgglomerativeClustering

    if max_count < 1:
        raise ValueError(f"max_count must be at least 1, got {max_count}")
    out = labels.copy()
    z = whitening(keys).double().numpy()
    next_label = int(labels.max()) + 1 if len(labels) else 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        parts = -(-int(counted[members].sum()) // max_count)
        if parts < 2 or len(members) < parts:
            continue
        split = AgglomerativeClustering(n_clusters=parts, linkage="ward").fit_predict(
            z[members])
        for part in range(1, parts):  # part 0 keeps the cluster's label
            out[members[split == part]] = next_label
            next_label += 1
    return out
