from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitedit_ops.errors import PatchConflictError
from vitedit_ops.models import fingerprint
from vitedit_ops.patch import Patch, apply_stack, revert_stack

from .conftest import tiny_vit

MODEL = tiny_vit()
FC1, FC2 = "blocks.2.mlp.fc1.weight", "blocks.2.mlp.fc2.weight"  # (128, 32), (32, 128)


def _patch(model, rows, cols, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.tensor(sorted(rows)), torch.tensor(sorted(cols))
    return Patch.from_deltas(model, [
        (FC1, "rows", rows, scale * torch.randn(len(rows), 32, generator=g)),
        (FC2, "cols", cols, scale * torch.randn(32, len(cols), generator=g)),
    ], fingerprint(model))


units = st.sets(st.integers(0, 127), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(rows=units, cols=units, scale=st.floats(1e-8, 1e3))
def test_apply_then_revert_is_bit_identical(rows, cols, scale):
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    patch = _patch(MODEL, rows, cols, scale)
    patch.apply(MODEL)
    patch.revert(MODEL)
    for name, value in MODEL.state_dict().items():
        assert torch.equal(value, before[name]), name


@settings(max_examples=40, deadline=None)
@given(rows=units, cols=units)
def test_weights_outside_the_touched_units_are_exactly_unchanged(rows, cols):
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    patch = _patch(MODEL, rows, cols, 1.0)
    patch.apply(MODEL)
    try:
        after = MODEL.state_dict()
        untouched_rows = [r for r in range(128) if r not in rows]
        untouched_cols = [c for c in range(128) if c not in cols]
        assert torch.equal(after[FC1][untouched_rows], before[FC1][untouched_rows])
        assert torch.equal(after[FC2][:, untouched_cols], before[FC2][:, untouched_cols])
        assert not torch.equal(after[FC1][sorted(rows)], before[FC1][sorted(rows)])
        for name in after:
            if name not in (FC1, FC2):
                assert torch.equal(after[name], before[name]), name
    finally:
        patch.revert(MODEL)


def test_save_load_keeps_content_hash(tmp_path):
    patch = _patch(MODEL, {1, 5}, {7}, 0.1)
    patch.save(tmp_path / "p.safetensors")
    loaded = Patch.load(tmp_path / "p.safetensors")
    assert loaded.sha256() == patch.sha256()
    assert loaded.base_fingerprint == fingerprint(MODEL)


def test_patch_refuses_a_model_that_does_not_hold_its_base_values():
    other = tiny_vit(seed=3)
    patch = _patch(MODEL, {1}, {2}, 0.1)
    before = fingerprint(other)
    with pytest.raises(PatchConflictError):
        patch.apply(other)
    assert fingerprint(other) == before  # nothing half-applied


def test_stacked_patches_apply_in_order_and_revert_in_reverse():
    model = tiny_vit()
    base = fingerprint(model)
    first = _patch(model, {1, 2}, {3}, 0.5, seed=1)
    first.apply(model)
    second = _patch(model, {2, 9}, {3, 4}, 0.5, seed=2)  # overlaps the first
    first.revert(model)
    apply_stack(model, [first, second])
    with pytest.raises(PatchConflictError):
        first.revert(model)  # out of order: the second changed row 2 again
    revert_stack(model, [first, second])
    assert fingerprint(model) == base


def test_failed_stack_leaves_the_model_as_it_was():
    model = tiny_vit()
    base = fingerprint(model)
    good = _patch(model, {1}, {1}, 0.5, seed=1)
    foreign = _patch(tiny_vit(seed=5), {4}, {4}, 0.5)
    with pytest.raises(PatchConflictError):
        apply_stack(model, [good, foreign])
    assert fingerprint(model) == base
