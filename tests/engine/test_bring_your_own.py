"""Bring your own timm model, as a new user would: a fresh ``vit_tiny_patch16_224`` (small
sizes), saved by timm's own ``save_for_hf``, a class-path JSON, or only ``--arch`` with size
kwargs and the data config it was trained with. Every entry point reads the same
description."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models import save_for_hf

from vitedit_ops.errors import CheckpointError
from vitedit_ops.models import ModelDescription, ModelSpec, fingerprint, load_model
from vitedit_ops.preprocess import Preprocessor

from ..cli_run import run

SIZE = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2)
VIT = "timm.models.vision_transformer:VisionTransformer"


def _fresh(name: str = "vit_tiny_patch16_224", num_classes: int = 4, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes,
                             **{**SIZE, **kw}).eval()


def _images(folder: Path, n: int = 6, size: tuple[int, int] = (40, 48)) -> Path:
    """Labelled images in class subfolders, not at the model's input size."""
    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            folder / str(i % 2) / f"{i}.png")
    return folder


def test_timms_own_save_for_hf_output_builds_a_suite(tmp_path, capsys):
    """``config.json`` + ``model.safetensors`` from ``save_for_hf``: its ``model_args``
    repeat ``num_classes`` (the reported crash) and its data config is the model's."""
    model = _fresh()
    save_for_hf(model, tmp_path / "hf", safe_serialization=True)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_args"]["num_classes"] == 4  # what made create_model fail
    code, out = run(["suite", "build", "-c", tmp_path / "hf" / "model.safetensors",
                     "--images", _images(tmp_path / "img"), "--out", tmp_path / "suite",
                     "--sensitive-min", 2], capsys)
    assert code == 0, out
    loaded, spec = load_model(tmp_path / "hf" / "model.safetensors")
    assert fingerprint(loaded) == fingerprint(model)
    assert (spec.num_classes, spec.input_size) == (4, (3, 32, 32))
    assert (spec.crop_pct, spec.crop_mode, spec.mean) == (0.9, "center", (0.5, 0.5, 0.5))


def test_a_class_key_json_beside_the_checkpoint_loads(tmp_path):
    model = _fresh()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps({
        "class": VIT, "kwargs": {**SIZE, "num_classes": 4}, "mean": [0.5] * 3,
        "std": [0.5] * 3, "crop_pct": 0.95, "epochs": 90}))  # other keys of a training script
    loaded, spec = load_model(tmp_path / "model.safetensors")
    assert fingerprint(loaded) == fingerprint(model)
    assert spec.architecture == VIT and spec.num_classes == 4
    assert (spec.input_size, spec.mean, spec.crop_pct) == ((3, 32, 32), (0.5,) * 3, 0.95)
    again = ModelSpec.from_dict(json.loads(spec.to_json()))  # our own format keeps it
    assert again == spec


@pytest.mark.parametrize("path, why", [
    ("os:system", "not a torch.nn.Module subclass"),
    ("subprocess.Popen", "not a torch.nn.Module subclass"),
    ("no_such_package_here:Model", "cannot import 'no_such_package_here'"),
    ("torch.nn:NoSuchLayer", "is nothing"),
    ("../models/evil.py:Model", "not a class path"),
])
def test_a_class_path_must_name_an_importable_module_class(tmp_path, path, why):
    save_file(_fresh().state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps({"class": path, "num_classes": 4}))
    with pytest.raises(CheckpointError, match=why.replace("(", r"\(")):
        load_model(tmp_path / "model.safetensors")


def test_a_class_path_on_the_cli_is_refused_in_one_line(tmp_path, capsys):
    save_file(_fresh().state_dict(), str(tmp_path / "model.safetensors"))
    code, out = run(["export", "-c", tmp_path / "model.safetensors", "-o", tmp_path / "m.onnx",
                     "--arch", "subprocess.Popen", "--model-arg", "args=[\"true\"]"], capsys)
    assert code == 2
    (line,) = out.strip().splitlines()
    assert "not a torch.nn.Module subclass" in line


def test_load_model_takes_the_data_config_it_was_trained_with(tmp_path, caplog):
    """DeiT's timm default is ImageNet's mean/std; a model trained with 0.5/0.5 says so."""
    model = _fresh("deit_tiny_patch16_224")
    torch.save(model.state_dict(), tmp_path / "deit.pth")
    data = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0, "crop_mode": "squash"}
    with caplog.at_level(logging.WARNING, logger="vitedit_ops.models"):
        _, spec = load_model(tmp_path / "deit.pth", architecture="deit_tiny_patch16_224",
                             data_config=data, **SIZE)
    assert (spec.mean, spec.std, spec.crop_pct, spec.crop_mode) == (
        (0.5,) * 3, (0.5,) * 3, 1.0, "squash")
    assert spec.input_size == (3, 32, 32) and not caplog.records
    _, default = load_model(tmp_path / "deit.pth", architecture="deit_tiny_patch16_224", **SIZE)
    assert default.mean == (0.485, 0.456, 0.406)  # timm's, and no longer silently:
    assert "no mean/std given" in caplog.text


def test_bad_data_config_values_are_named(tmp_path):
    save_file(_fresh().state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="crop_mode 'zoom'"):
        load_model(tmp_path / "model.safetensors", architecture="vit_tiny_patch16_224",
                   data_config={"crop_mode": "zoom"}, **SIZE)
    with pytest.raises(CheckpointError, match="unknown data config key.*meen"):
        ModelDescription(architecture="vit_tiny_patch16_224", model_kwargs=SIZE,
                         data_config={"meen": (0.5,)}).load(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="pretrained"):
        load_model(tmp_path / "model.safetensors", architecture="vit_tiny_patch16_224",
                   pretrained=True, **SIZE)


def test_a_non_default_size_swin_is_exported_and_a_deit_meta_trained_from_the_cli(tmp_path,
                                                                                  capsys):
    """Only ``--arch``, ``--model-arg`` and ``--data``: no config file at all."""
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3,
                             img_size=32, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                             window_size=4).eval()
    torch.save(swin.state_dict(), tmp_path / "swin.pth")
    code, out = run(["export", "-c", tmp_path / "swin.pth", "-o", tmp_path / "swin.onnx",
                     "--arch", "swin_tiny_patch4_window7_224", "--model-arg", "img_size=32",
                     "--model-arg", "embed_dim=16", "--model-arg", "depths=[2,2]",
                     "--model-arg", "num_heads=[2,4]", "--model-arg", "window_size=4"], capsys)
    assert code == 0, out
    assert (tmp_path / "swin.onnx").is_file()

    deit = _fresh("deit_tiny_patch16_224")
    torch.save({"state_dict": deit.state_dict()}, tmp_path / "deit.pth")
    sizes = [a for k, v in SIZE.items() for a in ("--model-arg", f"{k}={v}")]
    code, out = run(["meta-train", "-c", tmp_path / "deit.pth", "--arch",
                     "deit_tiny_patch16_224", *sizes, "--data", "mean=0.5,0.5,0.5", "--data",
                     "std=0.5,0.5,0.5", "--images", _images(tmp_path / "img") / "0",
                     "--iterations", 2, "--batch-size", 2, "--out", tmp_path / "hn"], capsys)
    assert code == 0, out
    assert (tmp_path / "hn" / "hypernet.safetensors").is_file()
    assert "vitedit-ops register-hypernet" in out


def test_the_cli_refuses_kwargs_without_an_architecture_in_one_line(tmp_path, capsys):
    model = _fresh()
    save_for_hf(model, tmp_path / "hf", safe_serialization=True)
    code, out = run(["export", "-c", tmp_path / "hf" / "model.safetensors", "-o",
                     tmp_path / "m.onnx", "--model-arg", "img_size=64"], capsys)
    assert code == 2
    (line,) = out.strip().splitlines()
    assert "model kwargs need an architecture" in line
    code, out = run(["export", "-c", tmp_path / "hf" / "model.safetensors", "-o",
                     tmp_path / "m.onnx", "--data", "mean=half"], capsys)
    assert code == 2 and "bad --data mean='half'" in out


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_arrays_follow_timms_transform_like_files(crop_mode):
    """A uint8 array is exactly the image it holds; a float array goes through the same resize
    and crop (interpolation of floats, not bytes: close, not equal)."""
    spec = ModelSpec("vit_tiny_patch16_224", 4, SIZE, input_size=(3, 32, 32), mean=(0.5,) * 3,
                     std=(0.5,) * 3, crop_pct=0.875, crop_mode=crop_mode)
    pre = Preprocessor(spec)
    noise = np.random.default_rng(1).integers(0, 32, (64, 96, 3))
    ramp = np.linspace(0, 223, 96)[None, :, None]  # structure a crop visibly moves
    array = (noise + ramp).astype(np.uint8)
    from_image = pre.pixels_from_pil(Image.fromarray(array))
    assert torch.equal(pre.pixels_from_array(array), from_image)
    from_floats = pre.pixels_from_array(array.astype(np.float32) / 255.0)
    assert from_floats.shape == (3, 32, 32)
    assert (from_floats - from_image).abs().mean() < 0.03
    straight = torch.nn.functional.interpolate(
        torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255, size=(32, 32),
        mode="bicubic", antialias=True)[0]
    if crop_mode != "squash":  # the old straight resize is another picture
        assert (from_floats - straight).abs().mean() > 0.05


def test_an_array_at_the_input_size_passes_through_unchanged():
    spec = ModelSpec("vit_tiny_patch16_224", 4, SIZE, input_size=(3, 32, 32), crop_pct=1.0)
    pixels = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(Preprocessor(spec).pixels_from_array(pixels.numpy()), pixels)
