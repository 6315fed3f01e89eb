"""SERAC's memory: outside every scope the model is the base bit for bit (torch and ONNX),
inside its scope an image gets its entry's counterfactual classifier, stacked entries keep out
of each other's images, units edited on one champion restack, and bad input is refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vitedit_ops.editors import create_editor
from vitedit_ops.editors.serac import SeracMemory, newest_scope_covers
from vitedit_ops.errors import InvalidInputError, PatchConflictError
from vitedit_ops.export import export_onnx, load_session, run_session
from vitedit_ops.models import fingerprint
from vitedit_ops.scope import window_keys
from vitedit_ops.scoped import load_patch
from vitedit_ops.side import SidePatch, installed
from vitedit_ops.sites import edit_window, module_inputs


def _images(count: int, offset: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 16, 16, generator=generator) * 0.5 + offset


@pytest.fixture
def world(vit):
    """A model, clean images (80 preserved, 40 never shown) and two shifted subpopulations."""
    return vit, _images(120, 0.0, 1), _images(30, 2.5, 2), _images(30, -2.5, 3)


def _serac(model, clean, images, label: int, **options):
    labels = torch.full((len(images),), label, dtype=torch.long)
    editor = create_editor("serac", preserved=clean[:80], lr=3e-2, max_steps=100, **options)
    return editor.edit(model, images, labels)


def _memory(model) -> SeracMemory:
    memory = installed(model, "serac")
    assert isinstance(memory, SeracMemory)
    return memory


def test_outside_every_scope_the_logits_are_the_base_bit_for_bit_in_torch_and_onnx(world,
                                                                                  tmp_path):
    model, clean, first, _ = world
    batch = torch.cat([clean, first])
    base = model(batch).detach()
    result = _serac(model, clean, first[:20], label=3)
    assert result.success and result.settings["outside_scope"] == 0
    assert installed(model, "serac") is None  # the editor changed nothing
    edited = copy.deepcopy(model)
    result.patch.apply(edited)
    entry = _memory(edited).entries[-1]
    inside = entry.scope.covers(window_keys(model, edit_window(model), batch))
    assert not inside[:80].any()  # the preserved pool stays outside
    assert not inside[80:120].all()  # unseen clean images are not all swallowed
    logits = edited(batch).detach()
    assert torch.equal(logits[~inside], base[~inside])
    # inside: the entry's classifier on the base's pre-logits features, nothing else
    features = module_inputs(model, model.get_classifier(), batch[inside])
    torch.testing.assert_close(logits[inside], F.linear(features, entry.weight, entry.bias),
                               rtol=0, atol=0)
    assert (logits[120:140].argmax(-1) == 3).all()  # the edit images are fixed

    path = export_onnx(edited, (3, 16, 16), tmp_path / "serac.onnx").path
    onnx_base = export_onnx(model, (3, 16, 16), tmp_path / "base.onnx").path
    serac_out = torch.from_numpy(run_session(load_session(path), batch))
    base_out = torch.from_numpy(run_session(load_session(onnx_base), batch))
    assert torch.equal(serac_out[~inside], base_out[~inside])
    assert (serac_out - logits).abs().max() < 1e-4


def test_stacked_entries_keep_out_of_each_others_images_and_revert_exactly(world):
    model, clean, first, second = world
    original = fingerprint(model)
    both = torch.cat([first, second])
    before = model(both).detach()
    one = _serac(model, clean, first, label=1).patch
    one.apply(model)
    after_one = model(both).detach()
    two_result = _serac(model, clean, second, label=2)  # made on the model holding one
    assert two_result.settings["scope_avoided"] == len(first)
    two = two_result.patch
    two.apply(model)
    assert _memory(model).layout()["entries"] == 2
    second_scope = _memory(model).entries[-1].scope
    assert not second_scope.covers(window_keys(model, edit_window(model), first)).any()
    after_two = model(both).detach()
    assert torch.equal(after_two[:len(first)], after_one[:len(first)])  # one's images untouched
    assert (after_two[:len(first)].argmax(-1) == 1).all()
    assert (after_two[len(first):].argmax(-1) == 2).all()
    with pytest.raises(PatchConflictError, match="stack order"):
        one.revert(model)
    two.revert(model)
    one.revert(model)
    assert fingerprint(model) == original and installed(model, "serac") is None
    assert torch.equal(model(both).detach(), before)


def test_units_edited_on_one_champion_restack_each_with_its_own_scope(world, tmp_path):
    model, clean, first, second = world
    one = _serac(model, clean, first, label=1, avoid=second).patch
    two = _serac(model, clean, second, label=2, avoid=first).patch  # both on the champion
    edited = copy.deepcopy(model)
    one.apply(edited)
    with pytest.raises(PatchConflictError, match="not the one the patch expects"):
        two.apply(edited)
    restacked = two.rebased(edited)
    restacked.apply(edited)
    assert _memory(edited).layout()["entries"] == 2
    assert (edited(first).argmax(-1) == 1).all() and (edited(second).argmax(-1) == 2).all()
    assert torch.equal(edited(clean[:80]), model(clean[:80]))
    assert newest_scope_covers(restacked, model, second).all()
    assert not newest_scope_covers(restacked, model, first).any()
    # the patch file reads back as the same side patch (promotion's check reads it so)
    reread = load_patch(restacked.save(tmp_path / "01.safetensors"))
    assert isinstance(reread, SidePatch) and reread.sha256() == restacked.sha256()
    restacked.revert(edited)
    one.revert(edited)
    assert fingerprint(edited) == fingerprint(model)


def test_a_serac_patch_on_other_weights_is_refused_even_when_restacked(world):
    model, clean, first, _ = world
    patch = _serac(model, clean, first, label=1).patch
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[0].mlp.fc1.weight.mul_(1.01)
    with pytest.raises(PatchConflictError, match="made on weights"):
        patch.rebased(other).apply(other)
    assert installed(other, "serac") is None


@pytest.mark.parametrize("options,match", [({"rule": "radius"}, "unknown SERAC scope rule"),
                                           ({"anchor": -1.0}, "anchor weight")])
def test_bad_options_are_named(options, match):
    with pytest.raises(InvalidInputError, match=match):
        create_editor("serac", **options)


def test_serac_refuses_to_edit_without_a_preserved_pool_or_with_too_few(world):
    model, clean, first, _ = world
    labels = torch.ones(len(first), dtype=torch.long)
    with pytest.raises(InvalidInputError, match="preserved pool"):
        create_editor("serac").edit(model, first, labels)
    with pytest.raises(InvalidInputError, match="outside images"):
        create_editor("serac", preserved=clean[:5]).edit(model, first, labels)
    assert installed(model, "serac") is None
