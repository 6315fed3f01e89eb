"""A lineage started from a bare torch checkpoint, described only on the command line, and
a hypernetwork made outside Prefect attached with ``register-hypernet``."""

from __future__ import annotations

import numpy as np
import torch
from mlflow import MlflowClient
from PIL import Image

from registry import versions
from registry.lineage_assets import load_assets
from registry.loading import load_version
from vitedit_ops.metatrain import MetaTrainConfig, meta_train
from vitedit_ops.models import fingerprint
from vitedit_ops.preprocess import Preprocessor

FAST = dict(iterations=2, batch_size=2, outer_steps=1, inner_steps=1, hypernet_width=16,
            hypernet_depth=1, hypernet_heads=2)


def test_register_base_takes_the_cli_model_description_and_a_cli_hypernet_attaches(
        embedded_uri, base_model, spec, suite, run_cli, tmp_path):
    name = "byo-lineage"
    torch.save({"state_dict": base_model.state_dict()}, tmp_path / "base.pth")  # no config
    described = ["--arch", "vit_tiny_patch16_224",
                 *[a for k, v in spec.model_kwargs.items() for a in ("--model-arg", f"{k}={v}")],
                 "--data", "mean=0.5,0.5,0.5", "--data", "std=0.25,0.25,0.25",
                 "--data", "crop_mode=squash"]
    result = run_cli("register-base", "--checkpoint", str(tmp_path / "base.pth"), "--suite",
                     str(suite[0]), "--model", name, "--tracking-uri", embedded_uri, *described)
    assert result.exit_code == 0, result.output
    model, stored, info = load_version(name, "1", tracking_uri=embedded_uri)
    assert fingerprint(model) == fingerprint(base_model)
    assert (stored.mean, stored.std, stored.crop_mode) == ((0.5,) * 3, (0.25,) * 3, "squash")
    assert stored.model_kwargs == spec.model_kwargs and stored.num_classes == 10

    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    meta_train(base_model, Preprocessor(stored).normalize(images), MetaTrainConfig(**FAST),
               out_dir=tmp_path / "hn", architecture=stored.architecture)
    preserved = tmp_path / "preserved"
    preserved.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, dtype=np.uint8)).save(preserved / f"{i}.png")
    attach = ["register-hypernet", "--model", name, "--version", "1", "--hypernet",
              str(tmp_path / "hn"), "--preserved-images", str(preserved), "--tracking-uri",
              embedded_uri]
    result = run_cli(*attach)
    assert result.exit_code == 0, result.output
    assert f"attached to {name} v1" in result.stdout
    assets = load_assets(versions.get(MlflowClient(embedded_uri), name, "1"), embedded_uri)
    assert assets.hypernet.config.base_fingerprint == info.fingerprint
    assert tuple(assets.preserved.shape) == (3, 3, 32, 32)
    again = run_cli(*attach)
    assert again.exit_code == 0 and "already attached" in again.stdout


def test_register_hypernet_names_a_missing_directory_in_one_line(embedded_uri, run_cli,
                                                                 register_base_as, tmp_path):
    register_base_as("byo-missing-hn", embedded_uri)
    result = run_cli("register-hypernet", "--model", "byo-missing-hn", "--version", "1",
                     "--hypernet", str(tmp_path / "nowhere"), "--tracking-uri", embedded_uri)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "nowhere" in line and "unreadable" in line
