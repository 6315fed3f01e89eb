"""Named shifts: registered, deterministic, extensible; error groups from a shifted pool."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.reference import (apply_shift, assert_disjoint, get_shift, list_shifts,
                                   reference_spec, register_shift, shifted_error_groups)
from vitedit_ops.reference import shifts as shifts_module
from vitedit_ops.reference.shifts import translate_pixels

BUILTIN = ("rotate", "thicken", "translate", "shear", "shrink", "thin", "blur", "strike", "noise",
           "dim")


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch):
    """User registrations made by a test vanish after it."""
    monkeypatch.setattr(shifts_module.SHIFTS, "_builders", dict(shifts_module.SHIFTS._builders))


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return reference_spec().build().eval()


def test_builtin_shifts_are_registered():
    assert set(BUILTIN) <= set(list_shifts())
    with pytest.raises(InvalidInputError, match="unknown shift 'nope'.*rotate"):
        get_shift("nope")


@pytest.mark.parametrize("name", BUILTIN)
def test_shifts_are_deterministic_and_in_range(data, name):
    pixels = data.shift.pixels[:24]
    first = apply_shift(name, pixels, seed=3)
    assert torch.equal(first, apply_shift(name, pixels, seed=3))
    assert not torch.equal(first, pixels)
    assert first.shape == pixels.shape
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(pixels, data.shift.pixels[:24])  # input untouched
    if name != "thicken":  # thickening has no randomness at a fixed width range
        assert not torch.equal(first, apply_shift(name, pixels, seed=4))


def test_thicken_only_grows_strokes(data):
    pixels = data.shift.pixels[:8]
    thick = apply_shift("thicken", pixels, min_width=3, max_width=3)
    assert (thick >= pixels).all()
    assert thick.mean() > pixels.mean()


def test_translate_moves_content_whole_pixels():
    image = torch.zeros(1, 3, 8, 8)
    image[0, :, 2, 3] = 1.0
    moved = translate_pixels(image, torch.tensor([[1, -2]]))
    assert moved[0, 0].nonzero().tolist() == [[3, 1]]
    fixed = apply_shift("translate", torch.rand(5, 3, 32, 32), seed=0, direction_degrees=0.0,
                        jitter_degrees=0.0, min_pixels=6, max_pixels=6)
    assert (fixed[..., :6] == 0).all()  # moved right by 6: zero-filled left strip


def test_user_registered_shift(data, clean_registry, random_model):
    @register_shift("invert")
    def invert(pixels: torch.Tensor, rng: np.random.Generator, amount: float = 1.0):
        return amount - pixels

    assert "invert" in list_shifts()
    pixels = data.shift.pixels[:4]
    assert torch.allclose(apply_shift("invert", pixels), 1.0 - pixels)
    with pytest.raises(InvalidInputError, match="already registered"):
        register_shift("invert")(invert)
    register_shift("invert", overwrite=True)(lambda p, rng: p.flip(-1))
    assert torch.equal(apply_shift("invert", pixels), pixels.flip(-1))
    outcome = shifted_error_groups(random_model, reference_spec(), data.shift, "invert",
                                   min_size=1)
    assert outcome.shift == "invert" and outcome.groups


def test_shift_must_keep_shape(clean_registry):
    register_shift("crop")(lambda p, rng: p[..., :16, :16])
    with pytest.raises(InvalidInputError, match="changed the shape"):
        apply_shift("crop", torch.zeros(2, 3, 32, 32))


def test_error_groups_are_consistent(data, random_model):
    spec = reference_spec()
    outcome = shifted_error_groups(random_model, spec, data.shift, "rotate", seed=1, min_size=5)
    again = shifted_error_groups(random_model, spec, data.shift, "rotate", seed=1, min_size=5)
    assert [g.name for g in outcome.groups] == [g.name for g in again.groups]
    assert outcome.groups, "an untrained model makes plenty of errors"
    sizes = [len(g) for g in outcome.groups]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 5
    assert sum(sizes) <= outcome.errors
    shifted = apply_shift("rotate", data.shift.pixels, seed=1)
    position = {image_id: i for i, image_id in enumerate(data.shift.ids)}
    for group in outcome.groups:
        assert group.true_class != group.predicted_class
        assert group.name == f"rotate:{group.true_class}->{group.predicted_class}"
        assert (group.images.labels == group.true_class).all()
        rows = [position[i] for i in group.images.ids]
        assert torch.equal(group.images.pixels, shifted[rows])
        assert_disjoint({"group": group.images, "locality": data.locality})
    summary = outcome.summary()
    assert sum(summary["groups"].values()) == sum(sizes)
    assert summary["accuracy"] == pytest.approx(1 - outcome.errors / len(data.shift))
