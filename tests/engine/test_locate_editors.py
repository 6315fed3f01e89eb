"""The locate-then-edit baselines: ROME's rank-one update writes its value for its key, KN's
attributions are integrated gradients, and both refuse what they cannot use."""

from __future__ import annotations

import pytest
import torch

from vitedit_ops.editors import create_editor, list_editors, needs_preserved
from vitedit_ops.editors.grace import token_mean
from vitedit_ops.editors.kn import site_attribution
from vitedit_ops.editors.rome import fc2_inputs, rome_direction
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.forward import SplitForward
from vitedit_ops.sites import edit_window


def _images(count: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 16, 16, generator=generator) * 0.5 + offset


def test_rome_writes_its_value_for_its_key_and_little_elsewhere(vit):
    pool, images = _images(40, 1), _images(3, 2, offset=2.0)
    result = create_editor("rome", preserved=pool, lr=3e-2, max_steps=20).edit(
        vit, images, torch.tensor([0, 0, 0]))
    (entry,) = result.patch.entries
    site = edit_window(vit).sites[result.settings["site"] - edit_window(vit).start]
    assert entry.param == site.fc2_weight and entry.kind == "dense"
    change = entry.after - entry.before
    assert torch.linalg.matrix_rank(change) == 1
    key = token_mean(fc2_inputs(vit, site, images), 1).mean(0)
    pool_keys = fc2_inputs(vit, site, pool).flatten(0, -2)
    direction = rome_direction(key, pool_keys, result.settings["ridge"])
    assert float(direction @ key) == pytest.approx(1.0, abs=1e-4)
    # the value lands on the key; pool keys, which the covariance weighs, move far less
    written = (change @ key).norm()
    assert written > 0 and (change @ pool_keys.T).norm(dim=0).mean() < 0.5 * written


def test_rome_clamps_the_value_norm_relative_to_the_keys_current_value(vit):
    """ROME's compute_v projection: ||lam|| <= factor * ||W k* + b||, the paper's factor 4
    by default; without the clamp the same edit writes a larger value."""
    pool, images, labels = _images(40, 1), _images(3, 2, offset=2.0), torch.tensor([0, 0, 0])
    assert create_editor("rome").clamp_norm_factor == 4.0
    written = {}
    for factor in (0.05, float("inf")):
        result = create_editor("rome", preserved=pool, lr=3e-2, max_steps=20,
                               clamp_norm_factor=factor).edit(vit, images, labels)
        site = edit_window(vit).sites[result.settings["site"] - edit_window(vit).start]
        key = token_mean(fc2_inputs(vit, site, images), 1).mean(0)
        with torch.no_grad():
            current = site.fc2(vit)(key).norm()
        (entry,) = result.patch.entries
        written[factor] = float(((entry.after - entry.before) @ key).norm() / current)
        assert result.settings["value_norm_limit"] == pytest.approx(factor * float(current),
                                                                    rel=1e-4)
    assert written[0.05] <= 0.05 * (1 + 1e-3)
    assert written[float("inf")] > 2 * 0.05
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidInputError, match="clamp_norm_factor"):
            create_editor("rome", preserved=pool, clamp_norm_factor=bad).edit(vit, images,
                                                                              labels)


def test_every_editor_that_needs_a_preserved_pool_refuses_to_edit_without_one(vit):
    images, labels = _images(2, 3), torch.tensor([0, 1])
    needing = [name for name in list_editors() if needs_preserved(name)]
    assert {"rome", "t_patcher", "serac"} <= set(needing)
    for name in needing:
        for pool in (None, torch.empty(0, *images.shape[1:])):
            with pytest.raises(InvalidInputError, match=f"{name} needs a preserved pool"):
                create_editor(name, preserved=pool).edit(vit, images, labels)


def test_kn_attributions_are_integrated_gradients(vit):
    """Completeness: a site's attributions sum to the probability change from zeroing its
    activation (up to the Riemann error, small at many steps)."""
    window = edit_window(vit)
    site = window.sites[1]
    split = SplitForward(vit, window.sites[0].block_path)
    hidden = split.prefix(_images(1, 4))
    label = 2
    attribution = site_attribution(vit, split, hidden, label, site, steps=200)
    with torch.no_grad():
        full = split.suffix(hidden).softmax(-1)[0, label]
    handle = site.fc2(vit).register_forward_pre_hook(lambda _m, args: (args[0] * 0,))
    try:
        with torch.no_grad():
            zeroed = split.suffix(hidden).softmax(-1)[0, label]
    finally:
        handle.remove()
    assert float(attribution.sum()) == pytest.approx(float(full - zeroed), abs=2e-3)


def test_kn_edits_the_units_it_attributes_most(vit):
    images, labels = _images(2, 5), torch.tensor([1, 1])
    result = create_editor("kn", keep_fraction=0.05, lr=1e-2, max_steps=5).edit(
        vit, images, labels)
    kept, left = [], []
    for name, units in result.kept_units.items():
        scores = result.mask_scores[name]
        chosen = torch.zeros(len(scores), dtype=torch.bool)
        chosen[units] = True
        kept.append(scores[chosen])
        left.append(scores[~chosen])
    assert torch.cat(kept).min() >= torch.cat(left).max()  # the top units, jointly
    assert result.kept_fraction == pytest.approx(0.05, abs=0.01)
    with pytest.raises(InvalidInputError, match="step"):
        create_editor("kn", ig_steps=0)
