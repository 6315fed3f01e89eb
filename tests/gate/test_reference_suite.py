"""The gate on the reference setup: `suite build` defaults to the reference model and its
locality pool, the other reference pools are disjoint from it by pixel hash, and a harmless
patch of the reference model passes on that suite."""

from __future__ import annotations

import copy

import pytest

from vitedit_ops import reference
from vitedit_ops.gate import image_hashes, load_suite, run_gate
from vitedit_ops.metrics import predict_logits

from ..cli_run import run


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """The reference recipe trained for a few steps: real architecture, pools and files."""
    config = reference.TrainConfig(seed=0, max_steps=20, batch_size=32)
    return reference.build_reference(config, reference_dir=tmp_path_factory.mktemp("ref"),
                                     device="cpu", progress=False)


@pytest.mark.slow
def test_reference_suite_is_disjoint_and_gates_a_harmless_patch(tiny_reference, tmp_path,
                                                                 monkeypatch, capsys,
                                                                 tiny_patch):
    monkeypatch.setattr(reference, "load_reference", lambda: tiny_reference)
    code, out = run(["suite", "build", "--out", tmp_path / "suite"], capsys)
    assert code == 0, out
    suite = load_suite(tmp_path / "suite")
    data = tiny_reference.data
    assert suite.base_fingerprint == tiny_reference.card.fingerprint
    assert len(suite.pixels) == int(suite.labelled.sum()) == len(data.locality)
    assert list(suite.ids) == list(data.locality.ids)
    for name, pool in data.pools().items():
        if name != "locality":
            suite.assert_disjoint(image_hashes(pool.pixels), what=f"{name} pool")

    model = tiny_reference.model
    candidate = copy.deepcopy(model)
    patch = tiny_patch(candidate)
    patch.apply(candidate)
    shift = data.shift
    right = (predict_logits(model, suite.inputs(shift.pixels)).argmax(-1) == shift.labels)
    right = right.nonzero().flatten()
    edit, heldout = shift.subset(right[:4]), shift.subset(right[4:20])
    report = run_gate(model, candidate, suite, edit_images=edit.pixels,
                      edit_labels=edit.labels, heldout_images=heldout.pixels,
                      heldout_labels=heldout.labels, edited_params=patch.params,
                      preserved_hashes=image_hashes(data.preserved.pixels))
    assert report.passed, report.to_markdown()
    assert report.check("onnx_max_abs_diff").details["images"] == len(suite.pixels) + 20
