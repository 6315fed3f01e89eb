"""The suite: content-hashed, append-only versions, tamper detection, disjointness by hash."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.gate import (SuiteError, SuiteIntegrityError, SuiteOverlapError, build_suite,
                              image_hashes, load_suite, run_gate, suite_versions)
from vitedit_ops.gate.suite import MANIFEST, TENSORS, UNKNOWN_LABEL, _content_hash
from vitedit_ops.metrics import top2_margin


def _writable(path):
    os.chmod(path, 0o644)
    return path


def test_build_records_base_predictions_sensitive_subset_and_is_reproducible(
        suite, trained, digits, tmp_path):
    model, spec = trained
    assert suite.version == 1 and suite_versions(suite.path) == [1]
    assert torch.equal(suite.base_predictions, suite.base_logits.argmax(-1))
    assert len(suite.hashes) == len(suite.pixels) == len(suite.labels)
    sensitive = suite.sensitive
    assert len(sensitive) >= 32
    assert (suite.base_predictions[sensitive] == suite.labels[sensitive]).all()
    # the sensitive images are the right images with the smallest top-2 margins
    margins = top2_margin(suite.base_logits)
    right = suite.base_predictions == suite.labels
    assert margins[sensitive].max() <= margins[right].sort().values[len(sensitive) - 1]
    again = build_suite(tmp_path / "again", model, spec, suite.pixels, suite.labels,
                        ids=suite.ids)
    assert again.content_hash == suite.content_hash  # same content, same hash
    assert load_suite(suite.path).content_hash == suite.content_hash


def test_a_suite_is_never_rewritten(suite, trained):
    with pytest.raises(SuiteError, match="not empty"):
        build_suite(suite.path, *trained, suite.pixels)


def test_extending_appends_a_version_that_chains_to_its_parent(suite, pool):
    pixels, labels = pool
    v1_bytes = (suite.path / "v0001" / TENSORS).read_bytes()
    v2 = suite.extend_with_fixes(pixels[:3], labels[:3], "run-7")
    assert v2.version == 2 and len(v2.retention_pixels) == 3
    assert v2.retention_sources == ("run-7",) * 3
    assert [h.parent_hash for h in v2.history] == [None, suite.content_hash]
    assert (suite.path / "v0001" / TENSORS).read_bytes() == v1_bytes
    v3 = v2.extend_with_fixes(pixels[3:5], labels[3:5], ["edit-a", "edit-b"])
    assert load_suite(suite.path).content_hash == v3.content_hash
    assert load_suite(suite.path, version=1).content_hash == suite.content_hash
    assert v3.retention_sources == ("run-7",) * 3 + ("edit-a", "edit-b")
    with pytest.raises(SuiteError, match="extended meanwhile"):
        v2.extend_with_fixes(pixels[5:6], labels[5:6], "stale")  # v3 exists


def test_fixes_must_be_new_images(suite, pool):
    pixels, labels = pool
    with pytest.raises(SuiteOverlapError, match="shares 1 image"):
        suite.extend_with_fixes(suite.pixels[:1], suite.labels[:1], "run-1")
    v2 = suite.extend_with_fixes(pixels[:2], labels[:2], "run-1")
    with pytest.raises(SuiteOverlapError):
        v2.extend_with_fixes(pixels[1:3], labels[1:3], "run-2")
    with pytest.raises(InvalidInputError, match="labels must lie"):
        v2.extend_with_fixes(pixels[5:6], torch.tensor([UNKNOWN_LABEL]), "run-2")


def test_disjointness_is_checked_by_hash(suite, pool):
    pixels, _ = pool
    suite.assert_disjoint(image_hashes(pixels[:50]))
    copied = suite.pixels[7:8].clone()
    with pytest.raises(SuiteOverlapError, match="preserved pool shares 1 image"):
        suite.assert_disjoint(image_hashes(torch.cat([pixels[:5], copied])), what="preserved pool")


def test_image_hash_is_the_same_for_one_picture_decoded_two_ways():
    raw = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    via_float32 = raw.float() / 255
    via_float64 = (raw.double() / 255.0).float()
    assert image_hashes(via_float32) == image_hashes(via_float64)
    assert len(set(image_hashes(via_float32))) == 4
    wide = via_float32[:, :, :4]
    assert image_hashes(wide) != image_hashes(wide.transpose(2, 3))  # the shape is hashed too


def _flip_last_byte(path):
    data = bytearray(_writable(path).read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_v1_consistently(root):
    """An edit that also fixes up v1's own hashes: only the chain (v2's parent link) sees it."""
    path = _writable(root / "v0001" / MANIFEST)
    manifest = json.loads(path.read_text())
    manifest["content"]["clean"]["ids"][0] = "renamed"
    manifest["content_hash"] = _content_hash(manifest["content"])
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("tamper, error, message", [
    (lambda root: _flip_last_byte(root / "v0001" / TENSORS), SuiteIntegrityError,
     "differ from the recorded hashes"),
    (lambda root: _flip_last_byte(root / "v0002" / TENSORS), SuiteIntegrityError,
     "differ from the recorded hashes"),
    (lambda root: _writable(root / "v0001" / MANIFEST).write_text(
        (root / "v0001" / MANIFEST).read_text().replace('"0"', '"zero"', 1)),
     SuiteIntegrityError, "manifest was modified"),
    (_rewrite_v1_consistently, SuiteIntegrityError, "names parent"),
    (lambda root: _writable(root / "v0002" / TENSORS).write_bytes(b"\x00" * 16), SuiteError,
     "unreadable"),
    (lambda root: shutil.rmtree(root / "v0001"), SuiteIntegrityError, "gap"),
], ids=["v1-pixels", "v2-pixels", "manifest", "rehashed-parent", "truncated", "missing-v1"])
def test_any_tampering_is_detected_at_load(suite, pool, tamper, error, message):
    pixels, labels = pool
    suite.extend_with_fixes(pixels[:2], labels[:2], "run-1")
    tamper(suite.path)
    with pytest.raises(error, match=message):
        load_suite(suite.path)


def test_a_pinned_hash_must_match(suite, pool):
    pixels, labels = pool
    load_suite(suite.path, expected_hash=suite.content_hash)
    suite.extend_with_fixes(pixels[:1], labels[:1], "run-1")
    with pytest.raises(SuiteIntegrityError, match="expected"):
        load_suite(suite.path, expected_hash=suite.content_hash)


@pytest.mark.parametrize("bad, message", [
    (lambda px: px[:, :, :8], "expected pixels of shape"),
    (lambda px: px * 2 - 1, r"in \[0, 1\]"),
    (lambda px: px.masked_fill(px > 0.9, float("nan")), r"in \[0, 1\]"),
])
def test_bad_pixels_are_refused(tmp_path, trained, digits, bad, message):
    pixels, _ = digits
    with pytest.raises(InvalidInputError, match=message):
        build_suite(tmp_path / "s", *trained, bad(pixels[:20]))


def test_partially_labelled_suite_and_unlabelled_gate(tmp_path, trained, digits, base_onnx):
    model, spec = trained
    pixels, labels = digits
    partial = labels[1000:1200].clone()
    partial[::2] = UNKNOWN_LABEL
    suite = build_suite(tmp_path / "partial", model, spec, pixels[1000:1200], partial)
    assert int(suite.labelled.sum()) == 100
    assert (suite.labels[suite.sensitive] != UNKNOWN_LABEL).all()
    unlabelled = build_suite(tmp_path / "none", model, spec, pixels[1000:1200])
    assert len(unlabelled.sensitive) >= 32
    report = run_gate(model, copy.deepcopy(model), unlabelled, onnx_path=base_onnx)
    accuracy = report.check("accuracy_drop")
    assert not accuracy.passed and "no labelled images" in accuracy.error
    assert report.check("locality").passed and report.check("locality").value == 1.0
