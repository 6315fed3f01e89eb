"""Clustering a night's off-manifold errors into units: a large loose cluster is split into
tighter parts when ``max_unit_errors`` asks for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitedit_ops.scope import Whitening
from vitedit_ops.subpopulations import split_large


def _blobs(centres: list[float], n: int, seed: int = 0) -> torch.Tensor:
    """``n`` keys around each centre (along the first of 8 axes), tight around it."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, 8, generator=g) * 0.05 + torch.tensor([c] + [0.0] * 7)
                      for c in centres])


def test_a_cluster_over_the_limit_is_split_along_its_own_structure():
    keys = _blobs([0.0, 3.0, 6.0], 20)              # one label given to three tight blobs
    whitening = Whitening.fit(_blobs([0.0], 50, seed=1))
    labels = np.zeros(len(keys), dtype=int)
    counted = np.ones(len(keys), dtype=bool)
    split = split_large(keys, whitening, labels, counted, max_count=20)
    assert len(np.unique(split)) == 3
    for blob in range(3):                           # every part is one blob, whole
        assert len(np.unique(split[blob * 20:(blob + 1) * 20])) == 1


def test_only_counted_keys_decide_and_small_clusters_are_left_alone():
    keys = torch.cat([_blobs([0.0, 3.0], 10), _blobs([9.0], 5, seed=2)])
    whitening = Whitening.fit(_blobs([0.0], 50, seed=1))
    labels = np.array([0] * 20 + [1] * 5)
    counted = np.zeros(len(keys), dtype=bool)
    counted[:12] = True                              # 12 errors in cluster 0, none in 1
    assert (split_large(keys, whitening, labels, counted, max_count=12) == labels).all()
    split = split_large(keys, whitening, labels, counted, max_count=6)
    assert len(np.unique(split[:20])) == 2 and (split[20:] == 1).all()
    assert set(np.unique(split[:20])).isdisjoint({1})  # a new part takes a new label


def test_a_bad_limit_is_refused():
    keys, whitening = _blobs([0.0], 4), Whitening.fit(_blobs([0.0], 50, seed=1))
    with pytest.raises(ValueError, match="max_count"):
        split_large(keys, whitening, np.zeros(4, dtype=int), np.ones(4, bool), 0)

