"""Stacking the night's accepted units: a unit whose change cannot be re-expressed on the
stack is left out with its reason, and the night goes on with the others."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from flows.combine import combine
from flows.config import EditSettings
from flows.edits import GroupOutcome
from registry.record import ACCEPTED, LEFT_OUT, GroupEdit
from vitedit_ops.editors import create_editor
from vitedit_ops.models import fingerprint

from ..engine.conftest import tiny_vit


def _images(count: int, offset: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 16, 16, generator=generator) * 0.5 + offset


def _grace(model, images, label):
    editor = create_editor("grace", lr=3e-2, max_steps=60)
    return editor.edit(model, images, torch.full((len(images),), label, dtype=torch.long))


def _outcome(key, result, images, label):
    edit = GroupEdit(key=key, num_edit_images=len(images), num_heldout_images=0,
                     patch=result.patch, outcome=ACCEPTED, success=result.success,
                     after={"reliability": result.reliability})
    return GroupOutcome(edit, SimpleNamespace(
        edit_pixels=images, edit_labels=torch.full((len(images),), label, dtype=torch.long)))


def test_a_unit_that_cannot_be_restacked_is_left_out_and_the_others_ship():
    champion = tiny_vit()
    shifted = _images(3, 2.0, 1)
    label = int((champion(shifted).argmax(-1)[0] + 1) % champion.num_classes)
    _grace(champion, shifted, label).patch.apply(champion)  # an earlier night's codebook
    # two units of tonight whose images sit in the same codebook entry: each edit retrains
    # that entry's value, so the second cannot be stacked on the first
    first = _grace(champion, shifted + 0.01, label)
    second = _grace(champion, shifted - 0.01, label)
    far = _images(3, -2.0, 2)
    far_label = int((champion(far).argmax(-1)[0] + 1) % champion.num_classes)
    third = _grace(champion, far, far_label)  # a new entry of its own: restacks
    suite = _images(40, 0.0, 9)
    context = SimpleNamespace(
        model=champion, suite_predictions=champion(suite).argmax(-1),
        suite=SimpleNamespace(inputs=lambda x: x, pixels=suite,
                              retention_pixels=torch.empty(0, 3, 16, 16)))
    base = fingerprint(champion)
    outcomes = [_outcome("a", first, shifted + 0.01, label),
                _outcome("b", second, shifted - 0.01, label),
                _outcome("c", third, far, far_label)]
    result = combine(context, outcomes, EditSettings(group_locality_min=0.0))
    by_key = {o.key: o.edit for o in result.outcomes}
    assert by_key["b"].outcome == LEFT_OUT and by_key["b"].patch is None
    note = by_key["b"].note
    assert "cannot be stacked" in note and "changed by another edit" in note
    assert [o.key for o, _ in result.applied] == ["a", "c"]
    assert fingerprint(champion) == base  # stacking works on a copy
    model = copy.deepcopy(result.model)
    assert torch.equal(model(far).argmax(-1), third.predictions_after)
