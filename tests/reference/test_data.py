"""The digits pools: sizes, disjointness, stratification, stability."""

from __future__ import annotations

import pytest
import torch

from vitedit_ops.reference import (POOL_SIZES, POOLS, LabeledImages, PoolOverlapError,
                                   assert_disjoint, load_reference_data)

# Pinned so an accidental change of the split (which would silently change every benchmark
# and gate figure) fails here; update deliberately, with the recipe version.
PINNED_SPLIT_HASHES = {
    "locality": "7f23eb0374d50862d8c6fdef559eca3cea48a23ec1229b65ab4bcaa0a6a0dd78",
    "train": "8f4dc9cca39e44c3cf8b732a9fc67fdc181f5c5f999d807811b151e3d1d06066",
}


def test_pools_cover_the_digits_once(data):
    sizes = data.sizes()
    assert set(sizes) == set(POOLS)
    assert sum(sizes.values()) == 1797
    assert {name: sizes[name] for name in POOL_SIZES} == POOL_SIZES
    assert sizes["train"] == 1797 - sum(POOL_SIZES.values())
    assert_disjoint(data.pools())
    all_ids = [i for pool in data.pools().values() for i in pool.ids]
    assert len(set(all_ids)) == 1797


def test_pixels_are_32x32_rgb_in_unit_range(data):
    for pool in data.pools().values():
        assert pool.pixels.shape[1:] == (3, 32, 32)
        assert pool.pixels.dtype == torch.float32
        assert 0.0 <= float(pool.pixels.min()) and float(pool.pixels.max()) <= 1.0
        assert torch.equal(pool.pixels[:, 0], pool.pixels[:, 2])
        assert pool.labels.dtype == torch.long


def test_pools_are_stratified(data):
    for name, pool in data.pools().items():
        counts = torch.bincount(pool.labels, minlength=10).float()
        expected = len(pool) / 10
        assert counts.min() >= expected * 0.85 - 1 and counts.max() <= expected * 1.15 + 1, name


def test_split_is_stable(data):
    again = load_reference_data()
    assert again.split_hashes() == data.split_hashes()
    for name in POOLS:
        assert again.pools()[name].ids == data.pools()[name].ids
        assert torch.equal(again.pools()[name].pixels, data.pools()[name].pixels)
    for name, digest in PINNED_SPLIT_HASHES.items():
        assert data.split_hashes()[name] == digest


def test_split_seed_changes_pools(data):
    other = load_reference_data(split_seed=1)
    assert other.split_hashes()["locality"] != data.split_hashes()["locality"]
    assert_disjoint(other.pools())


def test_ids_are_stable_source_indices(data):
    from sklearn.datasets import load_digits

    digits = load_digits()
    pool = data.locality
    for k in (0, len(pool) // 2, len(pool) - 1):
        index = int(pool.ids[k].removeprefix("digits-"))
        assert int(pool.labels[k]) == int(digits.target[index])


def test_assert_disjoint_names_the_overlap(data):
    leaked = data.train.ids[:2]
    with pytest.raises(PoolOverlapError, match="edit and locality share 2 images"):
        assert_disjoint({"edit": leaked, "locality": data.locality.ids + leaked})
    assert_disjoint({"edit": data.shift.ids[:4], "locality": data.locality})


def test_labeled_images_validate():
    pixels, labels = torch.zeros(2, 3, 32, 32), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="unique"):
        LabeledImages(pixels, labels, ["a", "a"])
    with pytest.raises(ValueError, match="must match"):
        LabeledImages(pixels, labels, ["a"])
    images = LabeledImages(pixels, labels, ["a", "b"])
    assert images.subset([1]).ids == ["b"]
    assert images.ids_hash() == LabeledImages(pixels.flip(0), labels.flip(0), ["b", "a"]).ids_hash()
