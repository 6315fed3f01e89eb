"""Scoped patches: outside every scope the model is the base bit for bit (torch and ONNX),
inside its scope an image gets the patch, stacked scopes keep out of each other's images,
and revert, copies, saving and loading are exact."""

from __future__ import annotations

import copy

import pytest
import torch

from vitedit_ops.editors import ScopedEditor, create_editor
from vitedit_ops.errors import InvalidInputError, PatchConflictError, VitEditError
from vitedit_ops.export import export_onnx, load_session, run_session
from vitedit_ops.learned_update import new_updater
from vitedit_ops.models import ModelSpec, fingerprint, load_model, save_model
from vitedit_ops.scope import (Scope, Whitening, fit_nearest_scope, fit_scope, prefix_tokens,
                               window_keys)
from vitedit_ops.scoped import (ScopedPatch, effective_deltas, load_patch, scoped_patches,
                                weights_fingerprint)
from vitedit_ops.sites import edit_window

from .conftest import tiny_vit


def _images(count: int, offset: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 16, 16, generator=generator) * 0.5 + offset


@pytest.fixture
def world(vit):
    """A model, its window, clean images (outside) and two shifted subpopulations."""
    window = edit_window(vit, 1, 2)
    clean = _images(120, 0.0, 1)
    first, second = _images(30, 2.5, 2), _images(30, -2.5, 3)
    return vit, window, clean, first, second


def _scoped(model, window, clean, images, label: int, seed: int = 0, avoid_earlier=True,
            per_key=False):
    inner = create_editor("window_ft", window=(window.start, window.end), lr=1e-2,
                          max_steps=50, ce_target=0.05)
    editor = ScopedEditor(inner=inner, window=window, outside=clean[:80],
                          avoid_earlier=avoid_earlier, per_key=per_key)
    labels = torch.full((len(images),), label, dtype=torch.long)
    return editor.edit(model, images, labels)


@pytest.mark.parametrize("per_key", [False, True])
def test_outside_the_scope_logits_are_the_base_bit_for_bit_in_torch_and_onnx(world, tmp_path,
                                                                              per_key):
    model, window, clean, first, _ = world
    base = model(torch.cat([clean, first]))
    result = _scoped(model, window, clean, first[:20], label=3, per_key=per_key)
    assert isinstance(result.patch, ScopedPatch) and result.settings["outside_scope"] == 0
    assert fingerprint(model) != "" and not scoped_patches(model)  # the editor changed nothing
    edited = copy.deepcopy(model)
    result.patch.apply(edited)
    held_out_clean = clean[80:]  # never seen by the scope's router
    inside = result.patch.scope.covers(window_keys(model, window, held_out_clean))
    assert not inside.all()
    logits = edited(torch.cat([clean, first]))
    outside = torch.cat([~result.patch.scope.covers(window_keys(model, window, clean)),
                         torch.zeros(len(first), dtype=torch.bool)])
    assert torch.equal(logits[outside], base[outside])
    assert (logits[len(clean):len(clean) + 20].argmax(-1) == 3).all()  # fixed inside

    path = export_onnx(edited, (3, 16, 16), tmp_path / "scoped.onnx").path
    onnx_base = export_onnx(model, (3, 16, 16), tmp_path / "base.onnx").path
    batch = torch.cat([clean, first])
    scoped_out = torch.from_numpy(run_session(load_session(path), batch))
    base_out = torch.from_numpy(run_session(load_session(onnx_base), batch))
    assert torch.equal(scoped_out[outside], base_out[outside])
    assert (scoped_out - logits.detach()).abs().max() < 1e-4


def test_stacked_scopes_keep_out_of_each_others_images_and_revert_exactly(world):
    model, window, clean, first, second = world
    original = fingerprint(model)
    before = model(torch.cat([first, second])).detach()
    one = _scoped(model, window, clean, first, label=1).patch
    one.apply(model)
    after_one = model(torch.cat([first, second])).detach()
    two = _scoped(model, window, clean, second, label=2).patch  # made on the stacked model
    assert not two.scope.covers(window_keys(model, window, first)).any()
    two.apply(model)
    after_two = model(torch.cat([first, second])).detach()
    assert torch.equal(after_two[:len(first)], after_one[:len(first)])  # one's images untouched
    assert (after_two[len(first):].argmax(-1) == 2).all()
    with pytest.raises(PatchConflictError, match="not the last"):
        one.revert(model)
    two.revert(model)
    one.revert(model)
    assert fingerprint(model) == original and not hasattr(model, "vitedit_scopes")
    assert torch.equal(model(torch.cat([first, second])).detach(), before)


@pytest.mark.parametrize("kind", ["ke", "mend"])
def test_a_learned_update_is_scoped_like_any_edit_and_only_for_the_scopes_window(world, kind):
    """KE/MEND inside a scope (the continual benchmark's "scopes, KE inside"): the images it
    covers get the network's edit exactly, every input outside is the base bit for bit; a
    network of another window is refused (the scope gates only its own window's matrices)."""
    model, window, clean, first, _ = world
    updater = new_updater(kind, model, window)  # untrained, but its steps are real edits
    inner = create_editor(kind, updater=updater, lr=50.0, max_steps=2)
    labels = torch.full((20,), 3, dtype=torch.long)
    scoped = ScopedEditor(inner=inner, window=window, outside=clean[:80]).edit(
        model, first[:20], labels)
    assert isinstance(scoped.patch, ScopedPatch) and scoped.method == f"{kind}+scope"
    assert scoped.settings["outside_scope"] == 0
    plain = inner.edit(model, first[:20], labels).patch
    edited, unscoped = copy.deepcopy(model), copy.deepcopy(model)
    scoped.patch.apply(edited)
    plain.apply(unscoped)
    with torch.no_grad():
        inside = edited(first[:20])
        assert not torch.allclose(inside, model(first[:20]), atol=1e-4)  # it edited
        assert torch.allclose(inside, unscoped(first[:20]), atol=1e-5)
        outside = ~scoped.patch.scope.covers(window_keys(model, window, clean))
        assert outside.any()
        assert torch.equal(edited(clean[outside]), model(clean[outside]))

    elsewhere = new_updater(kind, model, edit_window(model, 2, 3))
    editor = ScopedEditor(inner=create_editor(kind, updater=elsewhere), window=window,
                          outside=clean[:80])
    with pytest.raises(InvalidInputError, match="outside the scope.s window blocks 1-2"):
        editor.edit(model, first[:20], labels)


def test_copies_saved_models_and_patch_files_carry_the_scopes(world, tmp_path):
    model, window, clean, first, _ = world
    patch = _scoped(model, window, clean, first, label=4).patch
    patch.apply(model)
    spec = ModelSpec(architecture="vit_tiny_patch16_224", num_classes=5,
                     model_kwargs={"img_size": 16, "patch_size": 4, "embed_dim": 32,
                                   "depth": 4, "num_heads": 2}, input_size=(3, 16, 16))
    copied = copy.deepcopy(model)
    images = torch.cat([clean[:10], first[:10]])
    assert torch.equal(copied(images), model(images))
    scoped_patches(copied)[0].revert(copied)  # the copy's stack is its own
    assert len(scoped_patches(model)) == 1 and not scoped_patches(copied)

    loaded, _ = load_model(save_model(model, spec, tmp_path / "m.safetensors"))
    assert fingerprint(loaded) == fingerprint(model)
    assert torch.equal(loaded(images), model(images))
    again = load_patch(patch.save(tmp_path / "p.safetensors"))
    assert isinstance(again, ScopedPatch) and again.sha256() == patch.sha256()


def test_a_scoped_patch_applies_only_on_the_weights_it_was_made_on(world):
    model, window, clean, first, _ = world
    patch = _scoped(model, window, clean, first, label=0).patch
    other = tiny_vit(seed=5)
    with pytest.raises(PatchConflictError, match="made on weights"):
        patch.apply(other)
    assert weights_fingerprint(model) == patch.weights
    rebased = patch.rebased(other)
    rebased.apply(other)
    assert len(scoped_patches(other)) == 1


def test_the_scoped_change_counts_in_the_effective_deltas(world):
    model, window, clean, first, _ = world
    patch = _scoped(model, window, clean, first, label=0).patch
    patch.apply(model)
    deltas = effective_deltas(model)
    assert set(deltas) == set(patch.params) and all(d.abs().sum() > 0 for d in deltas.values())


def test_a_scope_refuses_too_few_images_and_never_covers_an_outside_image():
    torch.manual_seed(0)
    inside, outside = torch.randn(20, 8) + 3, torch.randn(200, 8)
    fit = fit_scope(inside, outside, outside, prefix=0)
    assert not fit.scope.covers(outside).any()  # threshold above every out-of-fold score
    assert fit.coverage > 0.9
    earlier = torch.randn(10, 8) - 3
    nearest = fit_nearest_scope(inside, outside, prefix=0, avoid=earlier)
    assert not nearest.scope.covers(torch.cat([outside, earlier])).any()
    assert nearest.coverage == 1.0
    unseen_clean, unseen_shifted = torch.randn(200, 8), torch.randn(50, 8) + 3
    assert nearest.scope.covers(unseen_clean).float().mean() < 0.02
    assert nearest.scope.covers(unseen_shifted).float().mean() > 0.8
    with pytest.raises(InvalidInputError, match="at least 2 inside"):
        fit_scope(inside[:1], outside, outside, prefix=0)
    with pytest.raises(InvalidInputError, match="reference images"):
        Whitening.fit(outside[:3])


def test_a_radius_keeps_a_later_far_shift_outside_and_the_subpopulation_inside():
    """The ratio rule alone covers inputs far from every clean image (a new shift on another
    side); the radius bounds the scope to the subpopulation's own spread. The bound travels
    in the state dict, and a scope saved without one loads as before."""
    torch.manual_seed(0)
    inside, outside = torch.randn(30, 8) + 3, torch.randn(200, 8)
    unseen_shifted = torch.randn(50, 8) + 3
    other_shift = torch.randn(50, 8) + torch.tensor([3.0, 3, 3, 3, -9, -9, -9, -9])
    ratio_only = fit_nearest_scope(inside, outside, prefix=0).scope
    bounded = fit_nearest_scope(inside, outside, prefix=0, radius_scale=1.5).scope
    assert ratio_only.covers(other_shift).float().mean() > 0.5  # what the radius is for
    assert bounded.covers(other_shift).float().mean() < 0.05
    assert bounded.covers(unseen_shifted).float().mean() > 0.8
    assert not bounded.covers(outside).any() and bounded.covers(inside).all()
    copy = Scope.empty(bounded.layout())
    copy.load_state_dict(bounded.state_dict())
    assert torch.equal(copy.covers(other_shift), bounded.covers(other_shift))
    legacy = Scope.empty(ratio_only.layout())
    legacy.load_state_dict(ratio_only.state_dict())
    assert torch.equal(legacy.covers(other_shift), ratio_only.covers(other_shift))
    with pytest.raises(InvalidInputError, match="radius scale"):
        fit_nearest_scope(inside, outside, prefix=0, radius_scale=0.0)


def test_a_ratio_per_key_keeps_a_loose_subpopulation_covered_past_one_near_clean_image():
    """One clean image near one edge of a large, loose subpopulation sets the shared ratio
    for every key, and the subpopulation's unseen images fall outside; with a ratio per key
    only the keys near that image are held tight. No outside image is inside either way."""
    torch.manual_seed(0)
    spread = torch.tensor([4.0] + [1.0] * 7)
    cluster = torch.randn(90, 8) * spread + torch.tensor([6.0] + [0.0] * 7)
    inside, unseen = cluster[:60], cluster[60:]
    near = inside[inside[:, 0].argmin()] + 0.05 * torch.randn(8)  # by the cluster's edge
    outside = torch.cat([torch.randn(200, 8), near[None]])
    shared = fit_nearest_scope(inside, outside, prefix=0, radius_scale=1.5).scope
    per_key = fit_nearest_scope(inside, outside, prefix=0, radius_scale=1.5,
                                per_key=True).scope
    assert per_key.alpha.shape == (60,) and shared.alpha.dim() == 0
    assert float(per_key.alpha.min()) == pytest.approx(float(shared.alpha))
    assert per_key.covers(unseen).float().mean() > shared.covers(unseen).float().mean() + 0.3
    for scope in (shared, per_key):
        assert not scope.covers(outside).any() and scope.covers(inside).all()
    # the price: fresh clean images near the looser keys can fall inside (0.7-2.5% over three
    # seeds of this set-up, none with the shared ratio); the gate's suite measures it
    fresh_clean = torch.randn(3000, 8)
    assert not shared.covers(fresh_clean).any()
    assert per_key.covers(fresh_clean).float().mean() < 0.05
    copy = Scope.empty(per_key.layout())
    copy.load_state_dict(per_key.state_dict())
    assert torch.equal(copy.covers(unseen), per_key.covers(unseen))


def test_keys_are_read_at_the_window_input_for_vit_and_swin(vit, swin):
    images = torch.randn(4, 3, 16, 16)
    keys = window_keys(vit, edit_window(vit, 1, 2), images)
    assert keys.shape == (4, 32) and prefix_tokens(vit) == 1
    swin_keys = window_keys(swin, edit_window(swin), torch.randn(4, 3, 32, 32))
    assert swin_keys.shape[0] == 4 and prefix_tokens(swin) == 0


def test_a_change_no_scope_can_gate_is_refused_by_name(world):
    model, window, clean, first, _ = world
    patch = _scoped(model, window, clean, first, label=0).patch
    delta = patch.deltas[0]
    cases = {
        # a matrix of a block before the window: it runs before the scope reads its input
        "blocks.0.mlp.fc2.weight": "runs before blocks.1",
        "blocks.1.mlp.fc2.bias": "weight matrices of FFNs",    # a bias: the stack adds none
        "blocks.1.attn.qkv.weight": "weight matrices of FFNs",  # not an FFN
    }
    for name, message in cases.items():
        wrong = ScopedPatch(patch.scope, [type(delta)(name, "dense", torch.zeros(1, 1), None,
                                                      (1, 1))],
                            patch.block, patch.weights, patch.inside_keys)
        with pytest.raises(VitEditError, match=message):
            wrong.apply(model)
        assert not scoped_patches(model)  # nothing joined the stack
    elsewhere = ScopedPatch(patch.scope, list(patch.deltas), "blocks.9", patch.weights,
                            patch.inside_keys)
    with pytest.raises(VitEditError, match="does not have"):
        elsewhere.apply(model)
    patch.apply(model)  # the editor's own patch targets the window's FFN matrices
    assert len(scoped_patches(model)) == 1
