"""`vitedit-ops edit` / `meta-train` end to end in-process: results, and one clear line + exit 2
for every kind of bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitedit_ops.hypernet import new_hypernet
from vitedit_ops.models import ModelSpec, fingerprint, save_model
from vitedit_ops.patch import Patch
from vitedit_ops.scoped import load_patch
from vitedit_ops.sites import edit_window

from ..cli_run import run
from .conftest import tiny_vit

KW = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)


@pytest.fixture
def workspace(tmp_path):
    model = tiny_vit()
    spec = ModelSpec.for_timm_model("vit_tiny_patch16_224", num_classes=5, **KW)
    ckpt = save_model(model, spec, tmp_path / "model")
    new_hypernet(model, edit_window(model), width=16, depth=1, num_heads=2).save(
        tmp_path / "hypernet")
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return tmp_path, ckpt, images


def test_edit_writes_a_patch_and_prints_a_table(workspace, capsys):
    tmp, ckpt, images = workspace
    code, out = run(["edit", *images, "--label", 2, "--checkpoint", ckpt, "--lr", 1e-2,
                     "--out", tmp / "p.safetensors"], capsys)
    assert code in (0, 1)  # 1 = not every image fixed within the step limit
    assert "img0.png" in out and "success=" in out
    patch = Patch.load(tmp / "p.safetensors")
    assert set(patch.params) <= set(edit_window(tiny_vit()).weight_names)


def _pool_folder(tmp, images, count: int = 6):
    """A preserved-pool folder: ``count`` fresh images plus a copy of one edit image."""
    folder = tmp / "preserved"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"keep{i}.png")
    shutil.copy(images[0], folder / "edit-copy.png")
    return folder


@pytest.mark.parametrize("method", ["rome", "t_patcher", "localized"])
def test_edit_with_a_preserved_pool_folder(workspace, capsys, method):
    """The editors that use a preserved pool get the folder's images, minus the edit images."""
    tmp, ckpt, images = workspace
    folder = _pool_folder(tmp, images)
    code, out = run(["edit", *images, "--label", 2, "--checkpoint", ckpt, "--method", method,
                     "--lr", 3e-2, "--steps", 20, "--preserved", folder,
                     "--out", tmp / "p.safetensors"], capsys)
    assert code in (0, 1), out
    assert "preserved images=6" in " ".join(out.split())  # the edit image copy is not
    patch = load_patch(tmp / "p.safetensors")
    model = tiny_vit()
    base = fingerprint(model)
    patch.apply(model)
    assert fingerprint(model) != base
    patch.revert(model)
    assert fingerprint(model) == base


@pytest.mark.parametrize("method", ["rome", "t_patcher"])
def test_an_editor_that_needs_a_preserved_pool_names_the_option_with_exit_2(workspace,
                                                                              method):
    """Through the installed entry point in its own process."""
    tmp, ckpt, images = workspace
    done = subprocess.run(
        [sys.executable, "-c", "from vitedit_ops.cli import main; main()", "edit",
         str(images[0]), "--label", "1", "--checkpoint", str(ckpt), "--method", method],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "VITEDIT_HOME": str(tmp / "home")})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert f"--method {method} needs a preserved pool: pass --preserved FOLDER" in lines[0]


@pytest.mark.parametrize("case,match", [
    ("pool_missing", "does not exist"), ("pool_only_edit_images", "every image"),
    ("pool_nan", "must be finite"),
])
def test_a_bad_preserved_pool_is_one_clear_line_and_exit_2(workspace, capsys, case, match):
    tmp, ckpt, images = workspace
    folder = tmp / "pool"
    if case != "pool_missing":
        folder.mkdir()
        shutil.copy(images[1], folder / "same.png")
    if case == "pool_nan":
        np.save(folder / "nan.npy", np.full((3, 16, 16), np.nan, dtype=np.float32))
    code, out = run(["edit", *images, "--label", 1, "--checkpoint", ckpt, "--method", "rome",
                     "--preserved", folder], capsys)
    assert code == 2 and match in out, out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) <= 3


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"), ("not_image", "not a readable image"),
    ("channels", "channels"), ("label", "out of range"), ("other_base", "not a descendant"),
    ("nan", "NaN"),
])
def test_bad_input_is_one_clear_line_and_exit_2(workspace, capsys, case, match):
    tmp, ckpt, images = workspace
    args = ["edit", *images, "--label", 1, "--checkpoint", ckpt]
    if case == "missing":
        args[1] = tmp / "nope.png"
    elif case == "not_image":
        (tmp / "bad.png").write_bytes(b"this is not a png")
        args[1] = tmp / "bad.png"
    elif case == "channels":
        np.save(tmp / "two.npy", np.zeros((2, 16, 16), dtype=np.float32))
        args[1] = tmp / "two.npy"
    elif case == "label":
        args[4] = 7
    elif case == "other_base":
        other = tiny_vit(seed=4)
        new_hypernet(other, edit_window(other), width=16, depth=1, num_heads=2).save(
            tmp / "other")
        args += ["--hypernet", tmp / "other"]
    elif case == "nan":
        from safetensors.torch import load_file, save_file
        state = load_file(str(ckpt))
        state["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
        save_file(state, str(ckpt))
    code, out = run(args, capsys)
    assert code == 2
    assert match in out
    assert "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) <= 3


def test_meta_train_command_writes_a_hypernetwork(workspace, capsys):
    tmp, ckpt, images = workspace
    folder = tmp / "unlabeled"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), i * 40, dtype=np.uint8)).save(folder / f"{i}.png")
    code, out = run(["meta-train", "--checkpoint", ckpt, "--images", folder, "--iterations", 2,
                     "--batch-size", 2, "--out", tmp / "hn"], capsys)
    assert code == 0, out
    assert (tmp / "hn" / "hypernet.safetensors").is_file()
    code, out = run(["meta-train", "--checkpoint", ckpt, "--images", folder, "--iterations", 2,
                     "--batch-size", 2, "--episodes", "pgd", "--out", tmp / "pgd"], capsys)
    assert code == 0, out
    from vitedit_ops.hypernet import MaskHypernet

    assert MaskHypernet.load(tmp / "pgd").config.training["episodes"] == "pgd"
    code, out = run(["meta-train", "--checkpoint", ckpt, "--images", folder, "--episodes",
                     "bogus"], capsys)
    assert code == 2 and "unknown episode kind 'bogus'" in out, out


def test_meta_train_writes_an_update_network_that_edit_applies(workspace, capsys):
    tmp, ckpt, images = workspace
    folder = tmp / "unlabeled"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    code, out = run(["meta-train", "--checkpoint", ckpt, "--images", folder, "--updater",
                     "mend", "--iterations", 2, "--batch-size", 2], capsys)
    assert code == 0, out
    assert "edit --method mend" in out
    from vitedit_ops.learned_update import load_updater

    assert load_updater(tmp / "updater-mend").config.training["iterations"] == 2
    code, out = run(["edit", *images, "--label", 2, "--checkpoint", ckpt, "--method", "mend",
                     "--out", tmp / "m.safetensors"], capsys)
    assert code in (0, 1) and "success=" in out, out
    assert set(Patch.load(tmp / "m.safetensors").params) <= set(
        edit_window(tiny_vit()).weight_names)
    code, out = run(["edit", *images, "--label", 2, "--checkpoint", ckpt, "--method", "ke"],
                    capsys)
    assert code == 2 and "meta-train --updater ke" in out, out
    code, out = run(["meta-train", "--checkpoint", ckpt, "--images", folder, "--updater",
                     "rome"], capsys)
    assert code == 2 and "unknown update network kind 'rome'" in out, out


@pytest.mark.parametrize("command", [
    ["edit", "{img}", "--label", "1"], ["meta-train", "--images", "{dir}"],
    ["suite", "build", "--images", "{dir}", "--out", "{dir}/suite"],
    ["export", "--out", "{dir}/m.onnx"], ["register-base", "--suite", "{dir}", "--model", "m"],
])
def test_a_missing_checkpoint_is_named_with_exit_2_by_the_real_command(workspace, command):
    """Through the installed entry point in its own process, as a scheduler runs it."""
    tmp, _ckpt, images = workspace
    missing = tmp / "elsewhere" / "gone.safetensors"  # no model config beside it either
    args = [a.replace("{img}", str(images[0])).replace("{dir}", str(tmp)) for a in command]
    done = subprocess.run(
        [sys.executable, "-c", "from vitedit_ops.cli import main; main()", *args,
         "--checkpoint", str(missing)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "VITEDIT_HOME": str(tmp / "home")})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert f"checkpoint {missing} does not exist" in lines[0]
