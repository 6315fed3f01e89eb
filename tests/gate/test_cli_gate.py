"""`vitedit-ops suite build|show`, `gate` and `export` in-process: files written, exit codes
0 (pass) / 3 (gate failed) / 2 (bad input, one clear line)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitedit_ops.export import file_sha256
from vitedit_ops.gate import load_suite, validate_report
from vitedit_ops.gate.suite import TENSORS
from vitedit_ops.models import save_model

from ..cli_run import run


def _write_folder(root, pixels, labels=None):
    for i, image in enumerate(pixels):
        folder = root if labels is None else root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def workspace(tmp_path, trained, digits, right_and_wrong, tiny_patch):
    model, spec = trained
    pixels, labels = digits
    (right, right_labels), _ = right_and_wrong
    checkpoint = save_model(model, spec, tmp_path / "base")
    patch_path = tiny_patch(model).save(tmp_path / "tiny.safetensors")
    return {
        "tmp": tmp_path, "ckpt": checkpoint, "patch": patch_path,
        "clean": _write_folder(tmp_path / "clean", pixels[1000:1150], labels[1000:1150]),
        "edit": _write_folder(tmp_path / "edit", right[:3], right_labels[:3]),
        "heldout": _write_folder(tmp_path / "heldout", right[3:9], right_labels[3:9]),
    }


@pytest.fixture
def built(workspace, capsys):
    code, out = run(["suite", "build", "--checkpoint", workspace["ckpt"], "--images",
                     workspace["clean"], "--out", workspace["tmp"] / "suite"], capsys)
    assert code == 0, out
    return workspace["tmp"] / "suite", out


def test_suite_build_and_show(built, capsys):
    path, out = built
    suite = load_suite(path)
    assert len(suite.pixels) == 150 and int(suite.labelled.sum()) == 150
    assert suite.ids[0].startswith("0/") and suite.ids[-1].startswith("9/")
    assert suite.content_hash in out
    code, shown = run(["suite", "show", path, "--expect-hash", suite.content_hash], capsys)
    assert code == 0 and "version 1" in shown and "clean 150 (labelled 150)" in shown


def test_gate_passes_base_plus_patch_and_writes_both_reports(workspace, built, capsys):
    path, _ = built
    out_dir = workspace["tmp"] / "report"
    code, out = run(["gate", "--base", workspace["ckpt"], "--patch", workspace["patch"],
                     "--suite", path, "--edit-images", workspace["edit"], "--heldout-images",
                     workspace["heldout"], "--out", out_dir], capsys)
    assert code == 0, out
    assert "Gate: PASSED" in out
    data = json.loads((out_dir / "report.json").read_text())
    validate_report(data)
    assert data["passed"] and data["suite_hash"] == load_suite(path).content_hash
    assert (out_dir / "report.md").read_text().startswith("### Gate: PASSED")


def test_gate_failure_exits_3_and_names_the_checks(workspace, built, trained, capsys):
    path, _ = built
    model, spec = trained
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.get_parameter("blocks.0.mlp.fc1.weight")[0, 0] = float("nan")
    candidate = save_model(broken, spec, workspace["tmp"] / "nan")
    onnx_path = workspace["tmp"] / "base.onnx"
    assert run(["export", "-c", workspace["ckpt"], "-o", onnx_path], capsys)[0] == 0
    code, out = run(["gate", "-b", workspace["ckpt"], "--candidate", candidate, "-s", path,
                     "--edit-images", workspace["edit"], "--heldout-images",
                     workspace["heldout"], "--onnx", onnx_path,
                     "--out", workspace["tmp"] / "r"], capsys)
    assert code == 3
    assert "FAILED (finite_weights" in out
    report = json.loads((workspace["tmp"] / "r" / "report.json").read_text())
    assert report["checks"][0]["name"] == "finite_weights" and not report["checks"][0]["passed"]


@pytest.mark.parametrize("case, match", [
    ("tampered", "differ from the recorded hashes"),
    ("override", "share in [0, 1]"),
    ("unknown", "NAME one of"),
    ("both", "either --candidate or"),
    ("unlabelled", "class subfolder"),
    ("lineage", "built for base"),
])
def test_bad_input_is_one_clear_line_and_exit_2(workspace, built, capsys, case, match):
    path, _ = built
    argv = ["gate", "-b", workspace["ckpt"], "-s", path, "--patch", workspace["patch"],
            "--out", workspace["tmp"] / "r"]
    if case == "tampered":
        data = bytearray((path / "v0001" / TENSORS).read_bytes())
        data[-5] ^= 0xFF
        (path / "v0001" / TENSORS).chmod(0o644)
        (path / "v0001" / TENSORS).write_bytes(bytes(data))
    elif case == "override":
        argv += ["--set", "locality_min=2"]
    elif case == "unknown":
        argv += ["--set", "locality=0.5"]
    elif case == "both":
        argv += ["--candidate", workspace["ckpt"]]
    elif case == "unlabelled":
        argv += ["--edit-images", workspace["clean"] / "0"]
    else:
        argv += ["--lineage", "0" * 64]
    code, out = run(argv, capsys)
    assert code == 2, out
    assert match in out and "Traceback" not in out
    assert out.strip().startswith("error:")


def test_export_prints_sha256_and_suite_parity(workspace, built, capsys):
    path, _ = built
    onnx_path = workspace["tmp"] / "model.onnx"
    code, out = run(["export", "-c", workspace["ckpt"], "-o", onnx_path, "--suite", path],
                    capsys)
    assert code == 0, out
    assert f"sha256 {file_sha256(onnx_path)}" in out
    assert "150 images" in out and "pass" in out
    code, out = run(["export", "-c", workspace["ckpt"], "-o", onnx_path, "--suite", path,
                     "--set", "onnx_max_abs_diff=0"], capsys)
    assert code == 3 and "FAIL" in out
