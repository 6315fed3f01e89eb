"""The gate passes a harmless change and fails, naming the right check, for each kind of harm."""

from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from vitedit_ops.errors import IncompatibleBaseError
from vitedit_ops.gate import GateConfig, GateReport, run_gate, validate_report
from vitedit_ops.models import fingerprint
from vitedit_ops.preprocess import Preprocessor

ONNX_CHECKS = {"onnx_max_abs_diff", "onnx_top1_agreement"}


@pytest.fixture
def edit_sets(right_and_wrong):
    """Edit and held-out images the unchanged model already gets right (a no-op edit's group)."""
    (pixels, labels), _ = right_and_wrong
    return {"edit_images": pixels[:4], "edit_labels": labels[:4],
            "heldout_images": pixels[4:12], "heldout_labels": labels[4:12]}


def test_harmless_patch_passes_and_gate_exports_onnx_itself(base, suite, tiny_patch, edit_sets):
    candidate = copy.deepcopy(base)
    patch = tiny_patch(candidate)
    patch.apply(candidate)
    report = run_gate(base, candidate, suite, edited_params=patch.params, **edit_sets)
    assert report.passed, report.to_markdown()
    assert [c.name for c in report.checks] == [
        "finite_weights", "disjoint", "reliability", "generalization", "locality", "sensitive",
        "retention", "accuracy_drop", "norm_growth", "onnx_max_abs_diff", "onnx_top1_agreement"]
    diff = report.check("onnx_max_abs_diff")
    assert diff.details["exported_by_gate"] and diff.value <= 1e-4
    assert diff.details["images"] == len(suite.pixels) + 12
    assert 1.0 < report.check("norm_growth").value < 1.001
    assert report.check("retention").value is None  # no earlier fixes yet: nothing to retain
    assert report.candidate_fingerprint == fingerprint(candidate) != report.base_fingerprint
    assert report.suite_hash == suite.content_hash
    validate_report(json.loads(report.to_json()))


def test_large_finetuning_step_fails_locality(base, suite, right_and_wrong, spec, base_onnx):
    _, (wrong, labels) = right_and_wrong
    candidate = copy.deepcopy(base).train()
    optimizer = torch.optim.SGD(candidate.parameters(), lr=0.5)
    inputs = Preprocessor(spec).normalize(wrong[:4])
    for _ in range(5):  # full fine-tuning with a large step on four errors
        optimizer.zero_grad()
        F.cross_entropy(candidate(inputs), labels[:4]).backward()
        optimizer.step()
    candidate.eval()
    report = run_gate(base, candidate, suite, onnx_path=base_onnx, edit_images=wrong[:4],
                      edit_labels=labels[:4])
    assert not report.passed
    assert {"locality", "norm_growth"} <= set(report.failed_checks)
    assert report.check("locality").value < 0.99
    assert report.check("locality").details["changed"] > 3


def test_undoing_an_earlier_fix_fails_retention(base, suite, right_and_wrong, local_fix,
                                                edit_sets, base_onnx):
    _, (wrong, labels) = right_and_wrong
    patch = local_fix(base, wrong[:2], labels[:2], source="edit-1")  # last week's fix
    fixed = copy.deepcopy(base)
    patch.apply(fixed)
    suite = suite.extend_with_fixes(wrong[:2], labels[:2], "edit-1")
    lineage = suite.base_fingerprint  # ``fixed`` descends from the suite's base
    good = run_gate(fixed, copy.deepcopy(fixed), suite, lineage_fingerprint=lineage,
                    **edit_sets)
    assert good.passed, good.to_markdown()
    assert good.check("retention").value == 1.0
    undo = copy.deepcopy(fixed)
    patch.revert(undo)  # tonight's candidate un-does last week's edit
    bad = run_gate(fixed, undo, suite, lineage_fingerprint=lineage, onnx_path=base_onnx,
                   **edit_sets)
    assert bad.failed_checks == ["retention"], bad.to_markdown()
    retention = bad.check("retention")
    assert retention.value == 0.0 and retention.details["undone_by_source"] == {"edit-1": 2}


def test_suite_of_another_lineage_is_refused(base, suite, tiny_patch):
    other = copy.deepcopy(base)
    tiny_patch(other).apply(other)
    with pytest.raises(IncompatibleBaseError, match="built for base"):
        run_gate(other, other, suite)
    with pytest.raises(IncompatibleBaseError):
        run_gate(base, base, suite, lineage_fingerprint=fingerprint(other))


@pytest.mark.parametrize("corruption", ["weights", "graph"])
def test_corrupted_onnx_fails_parity(base, suite, edit_sets, base_onnx, tmp_path, corruption):
    graph = onnx.load(base_onnx)
    if corruption == "weights":
        head = next(t for t in graph.graph.initializer if t.name == "head.weight")
        values = numpy_helper.to_array(head).copy()
        values[0] += 0.5
        head.CopyFrom(numpy_helper.from_array(values, head.name))
    else:  # the first residual addition becomes a subtraction
        node = next(n for n in graph.graph.node if n.op_type == "Add")
        node.op_type = "Sub"
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, broken)
    report = run_gate(base, copy.deepcopy(base), suite, onnx_path=broken, **edit_sets)
    assert report.failed_checks and set(report.failed_checks) <= ONNX_CHECKS
    assert report.check("onnx_max_abs_diff").value > 1e-2


def test_unloadable_onnx_fails_both_parity_checks_without_crashing(base, suite, edit_sets,
                                                                   tmp_path):
    broken = tmp_path / "truncated.onnx"
    broken.write_bytes(b"\x08\x07not a model")
    report = run_gate(base, copy.deepcopy(base), suite, onnx_path=broken, **edit_sets)
    assert set(report.failed_checks) == ONNX_CHECKS
    for name in ONNX_CHECKS:
        check = report.check(name)
        assert check.value is None and "cannot load" in check.error


def test_nan_weights_fail_a_named_check_and_report_stays_valid_json(base, suite, edit_sets,
                                                                     base_onnx):
    candidate = copy.deepcopy(base)
    with torch.no_grad():
        candidate.get_parameter("blocks.0.mlp.fc1.weight")[0, 0] = float("nan")
        candidate.get_parameter("head.bias")[1] = float("inf")
    report = run_gate(base, candidate, suite, onnx_path=base_onnx, **edit_sets)
    finite = report.check("finite_weights")
    assert not finite.passed and finite.value == 2
    assert finite.details["tensors"] == ["blocks.0.mlp.fc1.weight", "head.bias"]
    assert "norm_growth" in report.failed_checks
    text = report.to_json()  # strict JSON: would raise on NaN/Infinity
    assert GateReport.from_json(text).failed_checks == report.failed_checks


def test_a_check_that_cannot_run_fails_with_its_error(base, suite, edit_sets, base_onnx):
    sets = dict(edit_sets, edit_labels=edit_sets["edit_labels"][:3])
    report = run_gate(base, copy.deepcopy(base), suite, onnx_path=base_onnx, **sets)
    assert report.failed_checks == ["reliability"]
    check = report.check("reliability")
    assert check.value is None and "3 edit labels for 4 images" in check.error
    missing = run_gate(base, copy.deepcopy(base), suite, onnx_path=base_onnx)
    assert missing.failed_checks == ["reliability", "generalization"]
    assert "no edit images" in missing.check("reliability").error


def test_edit_images_from_the_suite_fail_disjointness(base, suite, edit_sets, base_onnx):
    sets = dict(edit_sets, edit_images=suite.pixels[:4],
                edit_labels=suite.base_predictions[:4])
    report = run_gate(base, copy.deepcopy(base), suite, onnx_path=base_onnx, **sets,
                      preserved_hashes=[suite.hashes[10]])
    assert report.failed_checks == ["disjoint"]
    assert report.check("disjoint").value == 5


def test_thresholds_come_from_the_config(base, suite, edit_sets, base_onnx, tiny_patch):
    candidate = copy.deepcopy(base)
    tiny_patch(candidate).apply(candidate)
    strict = GateConfig().with_overrides(["norm_growth_max=1.0", "onnx_max_abs_diff=0"])
    report = run_gate(base, candidate, suite, strict, onnx_path=base_onnx, **edit_sets)
    assert {"norm_growth", "onnx_max_abs_diff"} <= set(report.failed_checks)
    assert report.check("norm_growth").threshold == 1.0
    assert report.metadata["config"]["onnx_max_abs_diff"] == 0.0


def test_a_side_memory_is_judged_on_the_base_weights_it_leaves_alone(base, suite, spec,
                                                                      right_and_wrong):
    """SERAC adds a memory and changes no weight: its own tensors are no base weight that
    could grow (a SERAC night failed norm_growth on them before)."""
    from vitedit_ops.editors import create_editor

    (right, _), (wrong, labels) = right_and_wrong
    normalize = Preprocessor(spec).normalize
    editor = create_editor("serac", preserved=normalize(right[:60]), lr=3e-2, max_steps=60)
    result = editor.edit(base, normalize(wrong[:4]), labels[:4])
    candidate = copy.deepcopy(base)
    result.patch.apply(candidate)
    report = run_gate(base, candidate, suite, edited_params=result.patch.params)
    check = report.check("norm_growth")
    assert check.passed, check
    assert check.details["side_module_tensors"] > 0
    assert check.details["changed_params"] == 0
