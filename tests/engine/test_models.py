from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from vitedit_ops.errors import CheckpointError
from vitedit_ops.models import ModelSpec, fingerprint, load_model, save_model

from .conftest import tiny_vit

KW = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)


def _spec() -> ModelSpec:
    return ModelSpec.for_timm_model("vit_tiny_patch16_224", num_classes=5, **KW)


def test_save_then_load_roundtrip_keeps_fingerprint_and_config(tmp_path):
    model = tiny_vit()
    path = save_model(model, _spec(), tmp_path / "m")
    loaded, spec = load_model(path)
    assert fingerprint(loaded) == fingerprint(model)
    assert spec.input_size == (3, 16, 16)
    assert spec.interpolation == model.pretrained_cfg["interpolation"]
    assert not loaded.training


def test_weights_only_torch_file_with_wrapper_and_module_prefix(tmp_path):
    model = tiny_vit()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded, _ = load_model(tmp_path / "ckpt.pth", architecture="vit_tiny_patch16_224", **KW)
    assert fingerprint(loaded) == fingerprint(model)
    assert loaded.num_classes == 5  # inferred from head.weight


def test_missing_checkpoint_is_an_error_never_random_weights(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors", architecture="vit_tiny_patch16_224", **KW)


def test_a_missing_checkpoint_is_named_before_its_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope.safetensors does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_the_cli_reports_a_missing_checkpoint_file_in_one_line_with_exit_2(tmp_path, capsys):
    from ..cli_run import run

    code, output = run(["export", "-c", tmp_path / "nope.safetensors", "-o",
                        tmp_path / "m.onnx"], capsys)
    assert code == 2
    (line,) = output.strip().splitlines()
    assert "nope.safetensors does not exist" in line and "model config" not in line


def test_a_timm_training_checkpoint_loads_its_ema_weights(tmp_path):
    """timm's train.py layout: args as an argparse.Namespace (allowed by weights-only
    loading), raw and EMA weights, keys of a torch.compile'd DDP model."""
    import argparse

    model, ema = tiny_vit(seed=0), tiny_vit(seed=1)
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224",
                "args": argparse.Namespace(lr=1e-3, model="vit_tiny_patch16_224"),
                "state_dict": model.state_dict(),
                "state_dict_ema": {f"_orig_mod.module.{k}": v
                                   for k, v in ema.state_dict().items()}},
               tmp_path / "checkpoint.pth.tar")
    loaded, _ = load_model(tmp_path / "checkpoint.pth.tar", architecture="vit_tiny_patch16_224",
                           **KW)
    assert fingerprint(loaded) == fingerprint(ema) != fingerprint(model)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = tiny_vit(depth=2).state_dict()
    save_file(state, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="missing.*blocks.2"):
        load_model(tmp_path / "m.safetensors", spec=_spec())


def test_wrong_shape_is_named(tmp_path):
    state = tiny_vit().state_dict()
    state["head.weight"] = torch.zeros(7, 32)
    state["head.bias"] = torch.zeros(7)
    save_file(state, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="head.weight"):
        load_model(tmp_path / "m.safetensors", spec=_spec())


def test_nan_weights_refused(tmp_path):
    state = tiny_vit().state_dict()
    state["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(tmp_path / "m.safetensors", spec=_spec())


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(tmp_path / "evil.pth", architecture="vit_tiny_patch16_224", **KW)


def test_hugging_face_style_config_beside_checkpoint(tmp_path):
    model = tiny_vit()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 5, "model_args": KW,
        "pretrained_cfg": {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3,
                           "interpolation": "bilinear"}}))
    loaded, spec = load_model(tmp_path / "model.safetensors")
    assert spec.interpolation == "bilinear" and spec.mean == (0.5, 0.5, 0.5)
    assert fingerprint(loaded) == fingerprint(model)


def test_fingerprint_changes_with_one_bit():
    model = tiny_vit()
    before = fingerprint(model)
    with torch.no_grad():
        w = model.blocks[0].mlp.fc1.weight
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(1e9))
    assert fingerprint(model) != before
