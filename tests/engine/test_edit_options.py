"""Options of the masked editors: jittered copies of the edit images, null-space confinement."""

from __future__ import annotations

import pytest
import torch

from vitedit_ops.delta import UnitDelta
from vitedit_ops.editors import create_editor
from vitedit_ops.editors.jitter import jittered_batch, jittered_copies
from vitedit_ops.editors.nullspace import (complement_projector, pooled_moments,
                                           preserved_projectors, window_moments)
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.hypernet import new_hypernet
from vitedit_ops.sites import edit_window


def test_complement_projector_removes_the_dominant_subspace_and_keeps_the_rest():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 8))[0]
    scales = torch.tensor([10.0, 5.0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    samples = torch.randn(500, 8) * scales @ basis.T
    projector = complement_projector(samples.T @ samples, energy=0.99)
    assert torch.allclose(projector @ projector, projector, atol=1e-5)  # a projector
    assert projector @ basis[:, 0] == pytest.approx(torch.zeros(8), abs=1e-3)
    assert projector @ basis[:, 1] == pytest.approx(torch.zeros(8), abs=1e-3)
    assert torch.allclose(projector @ basis[:, 5], basis[:, 5], atol=1e-3)
    assert int(torch.linalg.matrix_rank(projector)) == 6


@pytest.mark.parametrize("energy", [0.0, 1.0, -0.5])
def test_complement_projector_rejects_energies_outside_the_open_interval(energy):
    with pytest.raises(InvalidInputError, match="energy"):
        complement_projector(torch.eye(3), energy)


def test_preserved_projectors_fit_the_matrices_they_confine(vit):
    window = edit_window(vit, 1, 2)
    units = [torch.tensor([0, 3, 5]) for _ in window.matrices]
    torch.manual_seed(2)
    projectors = preserved_projectors(vit, window, units, torch.randn(6, 3, 16, 16), 0.9)
    for (site, which), projector in zip(window.matrices, projectors):
        size = site.in_features if which == "fc1" else 3
        assert projector.shape == (size, size)


def test_a_confined_delta_changes_nothing_along_the_preserved_directions(vit):
    site, _ = edit_window(vit, 1, 1).matrices[0]
    direction = torch.zeros(site.in_features)
    direction[0] = 1.0
    projector = torch.eye(site.in_features) - torch.outer(direction, direction)
    delta = UnitDelta(site, "fc1", torch.tensor([1, 2]), projector)
    with torch.no_grad():
        delta.values.normal_()
    assert delta.dense()[:, 0].abs().max() == 0
    _, kind, units, values = delta.patch_entry()
    assert kind == "rows" and values[:, 0].abs().max() == 0 and units.tolist() == [1, 2]


def test_null_space_edit_keeps_preserved_images_closer_than_a_free_edit(vit, batch):
    images, labels = batch
    torch.manual_seed(3)  # preserved images near a 2-image manifold; edit images off it
    anchors = torch.randn(2, 3, 16, 16)
    preserved = anchors[torch.randint(0, 2, (32,))] + 0.05 * torch.randn(32, 3, 16, 16)
    before = vit(preserved).detach()
    drift = {}
    for energy in (0.0, 0.99):
        editor = create_editor("random_mask", window=(1, 2), keep_fraction=0.5, lr=1e-3,
                               max_steps=30, ce_target=1e-6, preserved=preserved,
                               null_space_energy=energy)
        result = editor.edit(vit, images, labels)
        assert result.settings["null_space_energy"] == energy and result.success
        result.patch.apply(vit)
        drift[energy] = float((vit(preserved).detach() - before).abs().mean())
        result.patch.revert(vit)
    assert drift[0.99] < 0.6 * drift[0.0]


def test_protected_fixes_weigh_as_much_as_the_pool_and_their_inputs_are_projected_out(vit):
    """A few earlier fixes off the pool's manifold: averaged into 64 clean images they barely
    count; weighed as a second pool, the projector removes most of their FFN-input energy."""
    torch.manual_seed(5)
    anchors = torch.randn(2, 3, 16, 16)
    preserved = anchors[torch.randint(0, 2, (64,))] + 0.05 * torch.randn(64, 3, 16, 16)
    fixes = torch.randn(3, 3, 16, 16)
    window = edit_window(vit, 1, 2)
    pool, protected = window_moments(vit, window, preserved), window_moments(vit, window, fixes)
    moments = pooled_moments(vit, window, preserved, fixes)
    assert torch.allclose(moments[0], pool[0] / 64 + protected[0] / 3)
    assert pooled_moments(vit, window, preserved, None)[0] is pool[0]
    units = [torch.arange(8) for _ in window.matrices]
    left = {}
    for name, given in (("pool only", None), ("protected", fixes)):
        projector = preserved_projectors(vit, window, units, preserved, 0.99, given)[0].double()
        fix_moment = protected[0]
        left[name] = float(torch.trace(projector @ fix_moment @ projector)
                           / torch.trace(fix_moment))
    assert left["protected"] < 0.5 * left["pool only"]


def test_the_editor_passes_protected_fixes_to_its_confinement(vit, batch):
    images, labels = batch
    torch.manual_seed(6)
    preserved, fixes = torch.randn(16, 3, 16, 16), torch.randn(3, 3, 16, 16)
    settings = {}
    for given in (None, fixes):
        editor = create_editor("random_mask", window=(1, 2), keep_fraction=0.5, max_steps=2,
                               preserved=preserved, protected=given, null_space_energy=0.99)
        settings[given is None] = editor.edit(vit, images, labels).settings
    assert settings[True]["protected_images"] == 0 and settings[False]["protected_images"] == 3
    assert create_editor("grace", protected=fixes).name == "grace"  # not one of its options


def test_jittered_copies_are_seeded_small_variations_with_the_labels_repeated():
    torch.manual_seed(4)
    images = torch.randn(2, 3, 16, 16)
    copies, labels = jittered_batch(images, torch.tensor([3, 4]), copies=5, seed=7)
    again, _ = jittered_batch(images, torch.tensor([3, 4]), copies=5, seed=7)
    assert copies.shape == (10, 3, 16, 16) and labels.tolist() == [3] * 5 + [4] * 5
    assert torch.equal(copies, again)
    assert not torch.allclose(copies[0], images[0])
    assert jittered_batch(images, torch.tensor([3, 4]), copies=0) is None
    identity = jittered_copies(images, 1, torch.Generator().manual_seed(0), degrees=0.0,
                               shift=0.0, scale=(1.0, 1.0))
    assert torch.allclose(identity, images, atol=1e-5)


def test_localized_editor_jitters_single_image_edits_only(vit, batch):
    images, labels = batch
    hypernet = new_hypernet(vit, edit_window(vit))
    single = create_editor("localized", hypernet=hypernet, lr=1e-2, max_steps=60,
                           jitter_copies=4).edit(vit, images[:1], labels[:1])
    assert single.settings["jitter_copies"] == 4
    assert single.success and single.reliability == 1.0
    assert len(single.loss_history) == single.steps + 1  # CE of the edit image only
    group = create_editor("localized", hypernet=hypernet, lr=1e-2, max_steps=5,
                          jitter_copies=4).edit(vit, images, labels)
    assert group.settings["jitter_copies"] == 0  # several images already show the variation
    wide = create_editor("localized", hypernet=hypernet, lr=1e-2, max_steps=5, jitter_copies=4,
                         jitter_max_images=3).edit(vit, images, labels)
    assert wide.settings["jitter_copies"] == 4


def test_pool_moments_are_computed_once_per_model_and_pool(vit):
    from vitedit_ops.editors.nullspace import window_moments

    window = edit_window(vit, 1, 2)
    pool = torch.randn(12, 3, 16, 16)
    calls = []
    handle = vit.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = window_moments(vit, window, pool)
        again = window_moments(vit, window, pool.clone())  # same images, another tensor
        other = window_moments(vit, window, pool[:6])
    finally:
        handle.remove()
    assert len(calls) == 2 and again is first and other is not first
    assert first[1].shape == (window.sites[0].hidden,) * 2  # every unit: sliced per edit
