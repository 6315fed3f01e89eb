"""Preprocessing is timm's own eval transform, and the reference model's inputs did not move."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from vitedit_ops.imagefiles import png_bytes
from vitedit_ops.models import ModelSpec
from vitedit_ops.preprocess import Preprocessor, open_image
from vitedit_ops.reference.train import reference_spec

from ..helpers.digits import digit_pixels


def _squash_resize(spec: ModelSpec, image: Image.Image) -> torch.Tensor:
    """What ``pixels_from_pil`` did before it followed timm: straight to H x W."""
    tensor = F.pil_to_tensor(image.convert("RGB")).float() / 255.0
    tensor = F.resize(tensor, list(spec.input_size[1:]),
                      interpolation=InterpolationMode(spec.interpolation), antialias=True)
    return tensor.clamp(0.0, 1.0)


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
@pytest.mark.parametrize("size", [(96, 64), (50, 80), (32, 32)])
def test_model_inputs_are_timms_eval_transform_exactly(size, crop_pct):
    spec = ModelSpec(architecture="vit_tiny_patch16_224", num_classes=10,
                     input_size=(3, 32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                     interpolation="bicubic", crop_pct=crop_pct)
    image = _random_image(*size, seed=sum(size))
    timm_transform = create_transform(**resolve_data_config(spec.data_config),
                                      is_training=False)
    ours = Preprocessor(spec).from_pil([image])[0]
    assert torch.equal(ours, timm_transform(image))


def test_a_non_square_image_is_center_cropped_not_squashed():
    """The train/serve skew the old straight resize had on a 96x64 image."""
    spec = reference_spec()
    image = _random_image(96, 64, seed=3)
    timm_pixels = Preprocessor(spec).pixels_from_pil(image)
    assert (timm_pixels - _squash_resize(spec, image)).abs().max() > 0.1


def test_the_reference_models_inputs_are_bit_identical_to_before():
    """Production images of the reference model are PNGs at its input size (crop_pct 1.0):
    timm's transform must hand the model exactly the tensors the old path did."""
    spec = reference_spec()
    assert spec.crop_pct == 1.0
    pixels, _ = digit_pixels(spec.input_size[1])
    preprocessor = Preprocessor(spec)
    for image in pixels[:200]:
        decoded = open_image(png_bytes(image))
        assert torch.equal(preprocessor.pixels_from_pil(decoded), _squash_resize(spec, decoded))
