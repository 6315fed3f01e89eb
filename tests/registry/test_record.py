"""The edit run record refuses inconsistent input before anything is logged."""

from dataclasses import replace

import pytest
import torch

from registry.record import GroupEdit, slug
from vitedit_ops.errors import InvalidInputError


def test_valid_record_returns_the_candidate_fingerprint(good_edit):
    assert good_edit.record.validate() == good_edit.record.gate_report.candidate_fingerprint


def test_gate_must_have_judged_exactly_these_weights(good_edit, bad_edit):
    swapped = replace(good_edit.record, model=bad_edit.record.model)
    with pytest.raises(InvalidInputError, match="gate report judged weights"):
        swapped.validate()


def test_gate_base_must_be_the_parent(good_edit):
    with pytest.raises(InvalidInputError, match="is not the parent"):
        replace(good_edit.record, parent_fingerprint="0" * 64).validate()


def test_duplicate_groups_and_empty_edits_are_refused(good_edit):
    groups = good_edit.record.groups
    with pytest.raises(InvalidInputError, match="duplicate error groups"):
        replace(good_edit.record, groups=[groups[0], groups[0]]).validate()
    with pytest.raises(InvalidInputError, match="no accepted group"):
        replace(good_edit.record, groups=[replace(g, patch=None) for g in groups]).validate()


def test_default_idempotency_key_is_content_addressed(good_edit):
    record = good_edit.record
    assert record.key == replace(record).key
    assert record.key != replace(record, groups=record.groups[:1]).key
    assert replace(record, idempotency_key="night-2026-11-24").key == "night-2026-11-24"


def test_slug_makes_group_keys_file_and_metric_safe():
    assert slug("3->8") == "3to8"
    assert slug("cat->dog walking") == "cattodog_walking"


def test_group_from_an_editor_result(base_model):
    from vitedit_ops.editors import create_editor

    torch.manual_seed(0)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 3])
    result = create_editor("random_mask", keep_fraction=0.1, lr=1e-3, max_steps=3).edit(
        base_model, images, labels)
    group = GroupEdit.from_result("3->8", result, 9, {"generalization": 0.0},
                                  {"generalization": 0.5})
    assert group.patch is result.patch and group.num_edit_images == 2
    assert group.steps == result.steps and group.kept_units.keys() == result.kept_units.keys()
    assert GroupEdit.from_result("3->8", result, 9, {}, {}, accepted=False).patch is None
