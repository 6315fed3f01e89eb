"""A small ViT trained for a few seconds on real digits (tests/helpers/digits.py), its suite,
and edits of it: real margins, and real misclassifications to fix and to un-fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitedit_ops.export import export_onnx
from vitedit_ops.gate import Suite, build_suite
from vitedit_ops.metrics import predict_logits
from vitedit_ops.models import ModelSpec, fingerprint
from vitedit_ops.patch import Patch
from vitedit_ops.preprocess import Preprocessor

from ..helpers.digits import digit_pixels, train_digits_vit

TRAIN, CLEAN = slice(0, 1000), slice(1000, 1300)  # the rest of the digits is the edit pool


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and much faster on a busy shared host."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1,797 real 8x8 digits as 3x16x16 pixels in [0, 1], shuffled once."""
    pixels, labels = digit_pixels(16)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))
    return pixels[order].contiguous(), labels[order]


@pytest.fixture(scope="package")
def trained(digits) -> tuple[nn.Module, ModelSpec]:
    # trained on whole, uncropped pixels: its data config says so (timm's ViT default 0.9
    # would center-crop the image files the gate reads)
    spec = replace(ModelSpec.for_timm_model("vit_tiny_patch16_224", num_classes=10,
                                            img_size=16, patch_size=4, embed_dim=32, depth=2,
                                            num_heads=2), crop_pct=1.0)
    pixels, labels = digits
    return train_digits_vit(spec, pixels[TRAIN], labels[TRAIN], steps=300, batch_size=64,
                            lr=2e-3), spec


@pytest.fixture
def base(trained) -> nn.Module:
    """A private copy of the trained model (tests may edit it)."""
    return copy.deepcopy(trained[0])


@pytest.fixture
def spec(trained) -> ModelSpec:
    return trained[1]


@pytest.fixture(scope="package")
def base_onnx(trained, tmp_path_factory) -> str:
    """The trained model's ONNX file, exported once (export is the slow part of a gate run)."""
    return str(export_onnx(trained[0], trained[1].input_size,
                           tmp_path_factory.mktemp("onnx") / "base.onnx").path)


@pytest.fixture
def suite(tmp_path, trained, digits) -> Suite:
    pixels, labels = digits
    return build_suite(tmp_path / "suite", trained[0], trained[1], pixels[CLEAN], labels[CLEAN])


@pytest.fixture
def pool(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits that are neither trained on nor in the suite."""
    pixels, labels = digits
    return pixels[CLEAN.stop:], labels[CLEAN.stop:]


def _predictions(model: nn.Module, spec: ModelSpec, pixels: torch.Tensor) -> torch.Tensor:
    return predict_logits(model, Preprocessor(spec).normalize(pixels)).argmax(-1)


@pytest.fixture
def predictions(spec) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    return lambda model, pixels: _predictions(model, spec, pixels)


@pytest.fixture
def right_and_wrong(trained, pool):
    """Pool images the trained model gets right, and those it gets wrong (with true labels),
    the wrong ones nearest the decision boundary first (the easiest to fix locally)."""
    pixels, labels = pool
    model, spec = trained
    logits = predict_logits(model, Preprocessor(spec).normalize(pixels))
    right = logits.argmax(-1) == labels
    gap = logits.max(-1).values - logits.gather(1, labels[:, None])[:, 0]
    wrong = torch.nonzero(~right).flatten()
    wrong = wrong[gap[wrong].argsort()]
    return (pixels[right], labels[right]), (pixels[wrong], labels[wrong])


@pytest.fixture
def local_fix(spec) -> Callable[..., Patch]:
    """A small real edit: fit ``units`` FFN neurons of the last block until ``pixels`` are right."""

    def fix(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, units: int = 16,
            source: str = "edit-1") -> Patch:
        work = copy.deepcopy(model).train()
        mlp = work.blocks[-1].mlp
        index = torch.arange(units)
        rows = torch.zeros_like(mlp.fc1.weight)
        rows[index] = 1
        cols = torch.zeros_like(mlp.fc2.weight)
        cols[:, index] = 1
        mlp.fc1.weight.register_hook(lambda g: g * rows)
        mlp.fc2.weight.register_hook(lambda g: g * cols)
        params = [mlp.fc1.weight, mlp.fc2.weight]
        optimizer = torch.optim.Adam(params, lr=2e-3)
        inputs = Preprocessor(spec).normalize(pixels)
        for _ in range(300):
            logits = work(inputs)
            if (logits.argmax(-1) == labels).all():
                break
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert (_predictions(work, spec, pixels) == labels).all(), "test edit did not converge"
        names = ("blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight")
        return Patch.from_deltas(model, [
            (names[0], "rows", index, (mlp.fc1.weight - model.get_parameter(names[0]))[index]),
            (names[1], "cols", index,
             (mlp.fc2.weight - model.get_parameter(names[1]))[:, index]),
        ], fingerprint(model), {"source": source})

    return fix


@pytest.fixture
def tiny_patch() -> Callable[[nn.Module], Patch]:
    """A harmless change: 1e-4 noise on three FFN neurons."""

    def make(model: nn.Module) -> Patch:
        name = "blocks.0.mlp.fc1.weight"
        index = torch.tensor([3, 7, 11])
        delta = 1e-4 * torch.randn(3, model.get_parameter(name).shape[1],
                                   generator=torch.Generator().manual_seed(2))
        return Patch.from_deltas(model, [(name, "rows", index, delta)], fingerprint(model))

    return make
