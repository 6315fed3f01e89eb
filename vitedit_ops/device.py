"""Device choice: CUDA when present, else CPU; one place so every code path agrees."""

from __future__ import annotations

import torch

from .errors import InvalidInputError


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """Turn 'auto' / None / 'cpu' / 'cuda:N' into a usable device, refusing absent CUDA."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:  # torch: "Invalid device string: ..."
        raise InvalidInputError(f"device {requested!r} is not a device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {requested!r} requested but CUDA is not available on "
                                "this host")
    return device
