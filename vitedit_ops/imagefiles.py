"""Image files in and out: folders of (optionally labelled) images, and PNG bytes.

Every entry point that takes images from disk (the CLI, the suite and meta-train flows) reads
them here, through the model's own preprocessing, so a folder means the same thing everywhere.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InvalidInputError
from .gate.suite import UNKNOWN_LABEL
from .models import ModelSpec
from .preprocess import Preprocessor

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".npy"})


@dataclass(frozen=True)
class ImageFolder:
    """Pixels in [0, 1] at the model's input size, labels (``UNKNOWN_LABEL`` for an image
    directly inside the folder) and
    each image's path relative to the folder."""

    pixels: torch.Tensor
    labels: torch.Tensor
    ids: list[str]


def image_paths(files: list[Path], folder: Path | None = None) -> list[Path]:
    """The given files plus the images directly inside ``folder``; refuses an empty result."""
    paths = list(files)
    if folder is not None:
        if not folder.is_dir():
            raise InvalidInputError(f"image folder {folder} does not exist")
        paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidInputError("no images given (pass files or a folder)")
    return paths


def read_image_folder(folder: Path, spec: ModelSpec, require_labels: bool) -> ImageFolder:
    """Images in class subfolders are labelled (folder name = class index or a class name of
    the spec), images directly inside are not."""
    if not folder.is_dir():
        raise InvalidInputError(f"image folder {folder} does not exist")
    names = list(spec.class_names or [])
    found: list[tuple[Path, int]] = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(folder)
        if len(relative.parts) == 1:
            found.append((path, UNKNOWN_LABEL))
        elif relative.parts[0].isdigit() and int(relative.parts[0]) < spec.num_classes:
            found.append((path, int(relative.parts[0])))
        elif relative.parts[0] in names:
            found.append((path, names.index(relative.parts[0])))
        else:
            raise InvalidInputError(f"{path}: folder {relative.parts[0]!r} is neither a class "
                                    f"index below {spec.num_classes} nor a class name")
    if not found:
        raise InvalidInputError(f"no images in {folder}")
    labels = torch.tensor([label for _, label in found])
    if require_labels and (labels == UNKNOWN_LABEL).any():
        raise InvalidInputError(f"{folder}: put every image in a class subfolder (its label)")
    preprocessor = Preprocessor(spec)
    pixels = torch.stack([preprocessor.pixels_from_file(p) for p, _ in found])
    return ImageFolder(pixels, labels, [str(p.relative_to(folder)) for p, _ in found])


def png_bytes(pixels: torch.Tensor) -> bytes:
    """A (C, H, W) image in [0, 1] as the PNG file a client would upload."""
    array = (pixels.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()
