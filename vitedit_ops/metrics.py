"""Edit quality metrics: reliability, generalization, locality, sensitivity, retention, norms.

All functions take preprocessed input tensors (N, C, H, W) and integer labels; predictions are
computed in eval mode without gradients, in batches, on the model's device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_SENSITIVE_MARGIN = 0.05
DEFAULT_SENSITIVE_MIN = 32


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for ``images`` (on CPU), batched; leaves the model's train/eval mode as it was."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = [model(images[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` predicted as ``labels``; NaN for an empty set (not a fake 1.0)."""
    if len(images) == 0:
        return float("nan")
    return float((predict_logits(model, images).argmax(-1) == labels.cpu()).float().mean())


def reliability(model: nn.Module, edit_images: torch.Tensor, labels: torch.Tensor) -> float:
    """Edit success: share of the edit images now predicted right."""
    return accuracy(model, edit_images, labels)


def generalization(model: nn.Module, heldout_images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of the error group's unseen images now predicted right."""
    return accuracy(model, heldout_images, labels)


def locality(reference_predictions: torch.Tensor, model: nn.Module, images: torch.Tensor) -> float:
    """Share of ``images`` whose top-1 prediction equals the unedited model's."""
    if len(images) == 0:
        return float("nan")
    preds = predict_logits(model, images).argmax(-1)
    return float((preds == reference_predictions.cpu()).float().mean())


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Probability gap between the two most likely classes, per image."""
    top2 = logits.softmax(-1).topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


@dataclass(frozen=True)
class SensitiveSelection:
    """Indices of the sensitive subset and how they were chosen."""

    indices: torch.Tensor
    margin: float
    fallback: bool  # True when fewer than ``min_count`` were under the margin

    @property
    def rule(self) -> str:
        if self.fallback:
            return (f"{len(self.indices)} correct images with the smallest top-2 margins "
                    f"(too few under {self.margin})")
        return f"correct images with top-2 margin < {self.margin}"


def select_sensitive(logits: torch.Tensor, labels: torch.Tensor | None,
                     margin: float = DEFAULT_SENSITIVE_MARGIN,
                     min_count: int = DEFAULT_SENSITIVE_MIN) -> SensitiveSelection:
    """Images the model gets right with a top-2 probability margin below ``margin``.

    Fallback (documented): when fewer than ``min_count`` qualify, take the ``min_count``
    right images with the smallest margins, so the check always has enough images to mean
    something. Without labels, "right" is not known and all images are candidates.
    """
    margins = top2_margin(logits)
    correct = (torch.ones_like(margins, dtype=torch.bool) if labels is None
               else logits.argmax(-1) == labels.cpu())
    candidates = torch.nonzero(correct).flatten()
    under = candidates[margins[candidates] < margin]
    if len(under) >= min_count or len(candidates) <= len(under):
        return SensitiveSelection(under, margin, fallback=False)
    order = margins[candidates].argsort()
    chosen = candidates[order[:min_count]].sort().values
    return SensitiveSelection(chosen, margin, fallback=True)


def retention(model: nn.Module, earlier_images: torch.Tensor, earlier_labels: torch.Tensor) -> float:
    """Share of images fixed by earlier edits that are still right."""
    return accuracy(model, earlier_images, earlier_labels)


def norm_growth(base_state: dict[str, torch.Tensor], model: nn.Module,
                names: Iterable[str]) -> dict[str, float]:
    """Frobenius-norm ratio edited/base per matrix (1.0 = unchanged); sequential edits that
    inflate norms are a known road to collapse."""
    params = dict(model.named_parameters())
    return {name: float(params[name].detach().cpu().double().norm()
                        / base_state[name].detach().cpu().double().norm().clamp_min(1e-12))
            for name in names}
