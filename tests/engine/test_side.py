"""Side modules (GRACE's codebook, T-Patcher's neurons, SERAC's memory): edits that add parameters beside the
weights. Patches stack edit after edit and revert exactly in reverse order; the model carries
its side module through copies, saving and loading and the ONNX export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vitedit_ops.editors import create_editor
from vitedit_ops.editors.grace import update_codebook
from vitedit_ops.errors import PatchConflictError
from vitedit_ops.export import export_onnx, load_session, run_session
from vitedit_ops.hypernet import new_hypernet
from vitedit_ops.models import ModelSpec, fingerprint, load_model, save_model
from vitedit_ops.side import SidePatch, SideState, installed
from vitedit_ops.sites import edit_window

from .conftest import tiny_vit

SIDE_EDITORS = ["grace", "t_patcher", "serac"]


def _images(count: int, offset: float, seed: int, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=generator) * 0.5 + offset


def _pool() -> torch.Tensor:
    return _images(40, 0.0, 9)


def _edit(name, model, images, label, **options):
    labels = torch.full((len(images),), label, dtype=torch.long)
    editor = create_editor(name, preserved=_pool(), lr=3e-2, max_steps=80, **options)
    return editor.edit(model, images, labels)


def _wrong_label(model, images) -> int:
    """A label the model does not predict for any of ``images`` (a real error to fix)."""
    predicted = set(model(images).argmax(-1).tolist())
    return next(c for c in range(model.num_classes) if c not in predicted)


@pytest.mark.parametrize("name", SIDE_EDITORS)
def test_side_patches_stack_edit_after_edit_and_revert_exactly(name, vit):
    base = fingerprint(vit)
    first_images, second_images = _images(3, 2.0, 1), _images(3, -2.0, 2)
    first = _edit(name, vit, first_images, _wrong_label(vit, first_images))
    assert first.success
    first.patch.apply(vit)
    after_first = fingerprint(vit)
    second = _edit(name, vit, second_images, _wrong_label(vit, second_images))
    assert second.success and fingerprint(vit) == after_first  # editing never mutates
    second.patch.apply(vit)
    assert installed(vit, second.patch.kind).layout()["entries"] > \
        first.patch.after.layout["entries"]
    # both edits hold at once: the second did not undo the first
    assert torch.equal(vit(first_images).argmax(-1), first.predictions_after)
    assert torch.equal(vit(second_images).argmax(-1), second.predictions_after)
    with pytest.raises(PatchConflictError, match="stack order"):
        first.patch.revert(vit)  # not the last one applied
    assert fingerprint(vit) != after_first  # the refused revert changed nothing
    second.patch.revert(vit)
    assert fingerprint(vit) == after_first
    first.patch.revert(vit)
    assert fingerprint(vit) == base and installed(vit, first.patch.kind) is None


@pytest.mark.parametrize("name", SIDE_EDITORS)
def test_copies_saved_models_and_patch_files_carry_the_side_module(name, vit, tmp_path):
    images = _images(3, 2.0, 1)
    result = _edit(name, vit, images, _wrong_label(vit, images))
    edited = copy.deepcopy(vit)
    result.patch.apply(edited)
    probe = torch.cat([images, _pool()[:8]])
    expected = edited(probe)
    twin = copy.deepcopy(edited)  # hooks bound to the copy's own side module
    torch.testing.assert_close(twin(probe), expected, rtol=0, atol=0)
    spec = ModelSpec.for_timm_model("vit_tiny_patch16_224", num_classes=5, img_size=16,
                                    patch_size=4, embed_dim=32, depth=4, num_heads=2)
    loaded, _ = load_model(save_model(edited, spec, tmp_path / "edited"))
    torch.testing.assert_close(loaded(probe), expected, rtol=0, atol=0)
    assert fingerprint(loaded) == fingerprint(edited)
    result.patch.revert(loaded)  # the loaded model holds exactly the patch's after-state
    assert fingerprint(loaded) == fingerprint(vit)
    path = result.patch.save(tmp_path / "side.safetensors")
    reread = SidePatch.load(path)
    assert reread.sha256() == result.patch.sha256()
    reread.apply(loaded)
    torch.testing.assert_close(loaded(probe), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", SIDE_EDITORS)
def test_the_onnx_export_carries_the_side_module(name, vit, tmp_path):
    images = _images(3, 2.0, 1)
    result = _edit(name, vit, images, _wrong_label(vit, images))
    edited = copy.deepcopy(vit)
    result.patch.apply(edited)
    probe = torch.cat([images, _pool()[:13]])
    session = load_session(export_onnx(edited, (3, 16, 16), tmp_path / "side.onnx").path)
    onnx_logits = run_session(session, probe)
    np.testing.assert_allclose(onnx_logits, edited(probe).detach().numpy(), atol=1e-4)
    assert (onnx_logits[:3].argmax(-1) == result.predictions_after.numpy()).all()


@pytest.mark.parametrize("name", SIDE_EDITORS)
def test_a_side_patch_applies_only_on_the_weights_it_was_made_on(name, vit):
    images = _images(3, 2.0, 1)
    result = _edit(name, vit, images, _wrong_label(vit, images))
    other = tiny_vit(seed=5)
    with pytest.raises(PatchConflictError, match="made on weights"):
        result.patch.apply(other)
    assert installed(other, result.patch.kind) is None


@pytest.mark.parametrize("name", SIDE_EDITORS)
def test_a_model_carrying_a_side_module_stays_a_descendant_for_the_hypernetwork(name, vit):
    hypernet = new_hypernet(vit, edit_window(vit))
    images = _images(3, 2.0, 1)
    _edit(name, vit, images, _wrong_label(vit, images)).patch.apply(vit)
    lineage = hypernet.check_base(vit)
    assert lineage.relation == "descendant"
    assert installed(vit, name).attribute in lineage.changed_tensors


def _codebook(keys, labels, radii) -> SideState:
    keys = torch.tensor(keys, dtype=torch.float)
    return SideState("grace", {}, {"keys": keys, "values": torch.zeros(len(keys), 2),
                                   "radii": torch.tensor(radii, dtype=torch.float),
                                   "labels": torch.tensor(labels)})


def test_grace_adds_far_keys_grows_radii_for_the_same_label_and_splits_conflicts():
    state = _codebook([[10.0, 0.0]], [1], [1.0])  # one entry: key (10, 0), radius 1, label 1
    outputs = torch.zeros(1, 2)
    far = update_codebook(state, torch.tensor([[0.0, 10.0]]), outputs, torch.tensor([1]), 0.1)
    assert (far.added, len(far.keys), far.radii.tolist()) == (1, 2, [1.0, 1.0])
    # within radius + initial radius (1 + 0.1 * ~11.6), same label: the radius grows to reach it
    grown = update_codebook(state, torch.tensor([[11.5, 0.0]]), outputs, torch.tensor([1]), 0.1)
    assert (grown.added, grown.grown, grown.trained) == (0, 1, [0])
    assert grown.radii.tolist() == pytest.approx([1.5])
    # the same place with another label: both radii become half the distance
    split = update_codebook(state, torch.tensor([[11.5, 0.0]]), outputs, torch.tensor([2]), 0.1)
    assert (split.added, split.split) == (1, 1)
    assert split.radii.tolist() == pytest.approx([0.75, 0.75])
    assert split.labels.tolist() == [1, 2] and split.trained == [1]


@pytest.mark.parametrize("name", ["grace", "t_patcher"])  # SERAC's: tests/engine/test_serac.py
def test_edits_made_on_one_champion_restack_and_both_hold(name, vit):
    # the nightly edits every unit on its own copy of the champion, then stacks them (SERAC's
    # scopes must be fitted to avoid each other's images for both to hold: its own test)
    first_images, second_images = _images(3, 2.0, 1), _images(3, -2.0, 2)
    first = _edit(name, vit, first_images, _wrong_label(vit, first_images))
    second = _edit(name, vit, second_images, _wrong_label(vit, second_images))
    assert first.success and second.success
    base = fingerprint(vit)
    first.patch.apply(vit)
    with pytest.raises(PatchConflictError):
        second.patch.apply(vit)  # made on the champion, not on the champion plus the first
    restacked = second.patch.rebased(vit)
    restacked.apply(vit)
    entries = installed(vit, name).layout()["entries"]
    assert entries == first.patch.after.layout["entries"] + \
        second.patch.after.layout["entries"] - (second.patch.before.layout["entries"]
                                                if second.patch.before else 0)
    assert torch.equal(vit(first_images).argmax(-1), first.predictions_after)
    assert torch.equal(vit(second_images).argmax(-1), second.predictions_after)
    restacked.revert(vit)
    first.patch.revert(vit)
    assert fingerprint(vit) == base


def test_a_grace_entry_changed_by_two_edits_is_refused_when_restacking():
    from vitedit_ops.editors.grace import GraceCodebook

    def state(radii, entries=2):
        keys = torch.eye(2)[:entries]
        return SideState.of(GraceCodebook("blocks.3.mlp.fc2", 1, keys, torch.zeros(entries, 2),
                                          torch.tensor(radii[:entries]),
                                          torch.arange(entries)))

    before = state([0.5, 0.5])
    one = state([0.7, 0.5])  # another edit grew entry 0
    with pytest.raises(PatchConflictError, match="entry 0 was changed by another edit"):
        GraceCodebook.restack(before, state([0.9, 0.5]), one)
    # this edit grew entry 1 only: both changes hold
    merged = GraceCodebook.restack(before, state([0.5, 0.8]), one).tensors
    assert merged["radii"].tolist() == pytest.approx([0.7, 0.8])
    with pytest.raises(PatchConflictError, match="does not extend"):
        GraceCodebook.restack(before, state([0.5, 0.8]), state([0.5], entries=1))
