"""The localized editor fixes real errors of the trained reference model (not a toy)."""

from __future__ import annotations

import pytest
import torch

from vitedit_ops.editors import PRODUCT
from vitedit_ops.metrics import predict_logits
from vitedit_ops.models import fingerprint
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.reference import shifted_error_groups


@pytest.mark.slow
def test_localized_editor_fixes_a_real_error_group_and_generalizes(trained_reference):
    reference, _directory, hypernet = trained_reference
    model, spec, data = reference.model, reference.spec, reference.data
    pre = Preprocessor(spec)
    group = shifted_error_groups(model, spec, data.shift, "rotate", min_size=8).groups[0]
    inputs = pre.normalize(group.images.pixels)
    edit, heldout = inputs[:4], inputs[4:]
    labels = torch.full((4,), group.true_class)
    locality = pre.normalize(data.locality.pixels)
    before_locality = predict_logits(model, locality).argmax(-1)
    base = fingerprint(model)

    result = PRODUCT.create(hypernet=hypernet,  # what the nightly flow runs
                            preserved=pre.normalize(data.preserved.pixels)).edit(model, edit,
                                                                                labels)
    assert result.success and result.reliability == 1.0
    assert (result.predictions_before != labels).all()  # these were real errors
    assert result.settings["null_space_energy"] > 0  # confined against the pool
    result.patch.apply(model)
    try:
        fixed_heldout = (predict_logits(model, heldout).argmax(-1) == group.true_class)
        unchanged = (predict_logits(model, locality).argmax(-1) == before_locality)
        assert fixed_heldout.float().mean() > 0.3  # generalizes beyond the edit images
        assert unchanged.float().mean() > 0.85
    finally:
        result.patch.revert(model)
    assert fingerprint(model) == base


BASELINE_SETTINGS = {"grace": {"lr": 3e-2}, "t_patcher": {"lr": 1e-2}, "rome": {"lr": 1e-2},
                     "rome_lora": {"lr": 1e-3}, "kn": {"lr": 1e-3}, "serac": {"lr": 1e-2}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BASELINE_SETTINGS))
def test_every_baseline_fixes_real_errors_of_the_reference_model(trained_reference, name):
    from vitedit_ops.editors import create_editor

    reference, _directory, _hypernet = trained_reference
    model, spec, data = reference.model, reference.spec, reference.data
    pre = Preprocessor(spec)
    group = shifted_error_groups(model, spec, data.shift, "thicken", min_size=8).groups[0]
    edit = pre.normalize(group.images.pixels)[:2]
    labels = torch.full((2,), group.true_class)
    locality = pre.normalize(data.locality.pixels)
    before_locality = predict_logits(model, locality).argmax(-1)
    base = fingerprint(model)
    editor = create_editor(name, preserved=pre.normalize(data.preserved.pixels),
                           **BASELINE_SETTINGS[name])
    result = editor.edit(model, edit, labels)
    assert fingerprint(model) == base
    assert (result.predictions_before != labels).all() and result.success
    result.patch.apply(model)
    try:
        assert (predict_logits(model, edit).argmax(-1) == labels).all()
        unchanged = predict_logits(model, locality).argmax(-1) == before_locality
        assert unchanged.float().mean() > 0.8
    finally:
        result.patch.revert(model)
    assert fingerprint(model) == base
