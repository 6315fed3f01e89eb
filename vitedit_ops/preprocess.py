"""Turn images into model inputs exactly as the model's timm config says.

One path for every image source (files, production bytes, reference arrays), so that the
editor, the gate and serving see the same tensors for the same picture. Decoded images go
through timm's own eval transform (``resolve_data_config`` + ``create_transform``: resize by
``crop_pct``, then ``crop_mode``: center crop, squash or border), the one a timm model is
evaluated with; an image already at the model's input size with ``crop_pct=1.0`` passes
through unchanged. Arrays take the same path: uint8 ones as the image they are, float ones
as tensors through the same resize and crop.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform, resolve_data_config
from torchvision.transforms import functional as F

from .errors import InvalidInputError
from .models import ModelSpec

MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb guard


class Preprocessor:
    """Resize, convert and normalise images for one :class:`ModelSpec`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.channels, self.height, self.width = spec.input_size
        self.mean = torch.tensor(spec.mean).view(-1, 1, 1)
        self.std = torch.tensor(spec.std).view(-1, 1, 1)
        # pixels stay in [0, 1] here: ``normalize`` applies mean/std to every source alike
        self.resize_crop = create_transform(**resolve_data_config(spec.data_config),
                                            is_training=False, normalize=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) floats in [0, 1] at the model's input size -> model input."""
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(self.spec.input_size):
            raise InvalidInputError(
                f"expected images of shape (N, {', '.join(map(str, self.spec.input_size))}), "
                f"got {tuple(pixels.shape)}")
        if not torch.isfinite(pixels).all():
            raise InvalidInputError("images contain NaN or Inf")
        return (pixels.float() - self.mean) / self.std

    def pixels_from_pil(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (C, H, W) floats in [0, 1] at the model's input size."""
        mode = "RGB" if self.channels == 3 else "L"
        tensor = self.resize_crop(image.convert(mode))  # uint8 (C, H, W)
        return tensor.float() / 255.0

    def from_pil(self, images: list[Image.Image]) -> torch.Tensor:
        return self.normalize(torch.stack([self.pixels_from_pil(im) for im in images]))

    def pixels_from_array(self, array: np.ndarray, name: str = "array") -> torch.Tensor:
        """A (C, H, W) or (H, W, C) array (uint8, or floats in [0, 1]) -> (C, H, W) pixels."""
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise InvalidInputError(f"{name}: expected a 2-D or 3-D image array, "
                                    f"got shape {array.shape}")
        if array.shape[0] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
            array = np.moveaxis(array, -1, 0)
        channels = array.shape[0]
        if channels not in (1, self.channels):
            raise InvalidInputError(f"{name}: {channels} channels, the model takes "
                                    f"{self.channels}")
        if array.dtype == np.uint8:  # exactly what a file of these pixels gives
            hwc = np.ascontiguousarray(np.moveaxis(array, 0, -1))
            return self.pixels_from_pil(Image.fromarray(hwc[..., 0] if channels == 1 else hwc))
        tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
        if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
            raise InvalidInputError(f"{name}: float pixels must be finite and in [0, 1]")
        tensor = tensor.expand(self.channels, -1, -1)
        if self.spec.crop_mode == "border":  # its padding is defined on 8-bit images
            return self.pixels_from_pil(F.to_pil_image(tensor))
        return self.resize_crop(tensor).clamp(0.0, 1.0)

    def pixels_from_file(self, path: str | Path) -> torch.Tensor:
        """Image file (any PIL format) or ``.npy`` array -> (C, H, W) pixels."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"image {path} does not exist")
        if path.suffix == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"{path}: not a readable .npy array ({exc})") from exc
            return self.pixels_from_array(array, name=str(path))
        return self.pixels_from_pil(open_image(path.read_bytes(), name=str(path)))

    def from_files(self, paths: list[str | Path]) -> torch.Tensor:
        """Image files -> model input batch."""
        return self.normalize(torch.stack([self.pixels_from_file(p) for p in paths]))


def open_image(data: bytes, name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS
               ) -> Image.Image:
    """Decode image bytes fully, refusing corrupt, truncated and oversized (bomb) images."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise InvalidInputError(
                    f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels}")
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except InvalidInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"{name}: not a readable image ({exc})") from exc
