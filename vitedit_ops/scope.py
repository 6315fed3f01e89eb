"""The scope of a patch: which inputs it applies to, decided from the edit window's input.

A scoped patch changes the model only for inputs inside its scope; every other input gets
the unedited model's logits bit for bit, so locality holds by construction and patches of
different nights keep out of each other's way. The key of an input is the mean of its patch
tokens where the edit window starts (``SplitForward.prefix``): the blocks before the window
are never edited, so the key costs nothing extra at inference and means the same thing on
every night of a lineage. Keys are whitened with the covariance of images whose predictions
must hold (Ledoit-Wolf shrinkage); a logistic router then separates the images the patch was
made for from those, and its threshold is the highest out-of-fold score of any image that
must stay outside, so none of them is inside (WISE, NeurIPS 2024, routes edits with an
activation router in the same spirit; GRACE, NeurIPS 2023, with a deferral radius).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import InvalidInputError
from .forward import SplitForward
from .sites import EditWindow

MIN_OUTSIDE = 10  # fewer images to keep outside cannot calibrate a threshold
FOLDS = 5


def token_mean(hidden: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """The key of each input from the window's input: the mean of its patch tokens.

    ViT/DeiT hidden states are (N, tokens, D) with ``prefix_tokens`` class/register tokens
    first; Swin's are (N, H, W, C).
    """
    if hidden.ndim == 3:
        return hidden[:, prefix_tokens:].mean(1)
    return hidden.flatten(1, -2).mean(1)


def prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 0))


@torch.no_grad()
def window_keys(model: nn.Module, window: EditWindow, inputs: torch.Tensor,
                batch_size: int = 256) -> torch.Tensor:
    """Keys (N, D) of model ``inputs`` at ``window``'s input, on CPU."""
    split = SplitForward(model, window.sites[0].block_path)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        keys = [token_mean(split.prefix(inputs[i:i + batch_size].to(device)),
                           prefix_tokens(model)).cpu()
                for i in range(0, len(inputs), batch_size)]
    finally:
        model.train(was_training)
    width = window.sites[0].in_features
    return torch.cat(keys) if keys else torch.empty(0, width)


@dataclass(frozen=True)
class Whitening:
    """``z = (key - center) @ matrix``: unit covariance for the reference images' keys."""

    center: torch.Tensor
    matrix: torch.Tensor

    @classmethod
    def fit(cls, reference: torch.Tensor) -> Whitening:
        from sklearn.covariance import LedoitWolf

        if len(reference) < MIN_OUTSIDE:
            raise InvalidInputError(f"{len(reference)} reference images cannot whiten keys "
                                    f"(need at least {MIN_OUTSIDE})")
        data = reference.double().numpy()
        values, vectors = np.linalg.eigh(LedoitWolf().fit(data).covariance_)
        matrix = vectors @ np.diag(np.clip(values, 1e-12, None) ** -0.5) @ vectors.T
        return cls(torch.from_numpy(data.mean(0)).float(), torch.from_numpy(matrix).float())

    def __call__(self, keys: torch.Tensor) -> torch.Tensor:
        return (keys.float() - self.center) @ self.matrix


class Scope(nn.Module):
    """``inside(hidden) = key(hidden) . weight + bias > 0`` (whitening folded into the
    weight), computed once per input from the window's input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, prefix_tokens: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().reshape(-1))
        self.register_buffer("bias", bias.float().reshape(()))
        self.prefix_tokens = int(prefix_tokens)

    def score(self, keys: torch.Tensor) -> torch.Tensor:
        return keys.float() @ self.weight + self.bias

    def covers(self, keys: torch.Tensor) -> torch.Tensor:
        """Which keys are inside (bool, one per key)."""
        return self.score(keys) > 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.covers(token_mean(hidden, self.prefix_tokens))


@dataclass(frozen=True)
class ScopeFit:
    """A fitted scope and how the images it was fitted on fall."""

    scope: Scope
    inside_covered: torch.Tensor   # bool per inside image: really inside
    outside_max_score: float       # the threshold: highest out-of-fold outside score

    @property
    def coverage(self) -> float:
        return float(self.inside_covered.float().mean()) if len(self.inside_covered) else 0.0


def fit_scope(inside: torch.Tensor, outside: torch.Tensor, reference: torch.Tensor,
              prefix: int, margin: float = 0.0, regularization: float = 1.0,
              seed: int = 0) -> ScopeFit:
    """A router between ``inside`` keys (the images a patch is made for) and ``outside`` keys
    (images it must leave alone), in the whitening of ``reference`` keys.

    The threshold is the highest out-of-fold score any outside image gets (plus ``margin``
    in score units), so no outside image is inside, including the ones the router did not
    see while being fitted.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    if len(inside) < 2 or len(outside) < MIN_OUTSIDE:
        raise InvalidInputError(f"a scope needs at least 2 inside and {MIN_OUTSIDE} outside "
                                f"images, got {len(inside)} and {len(outside)}")
    whiten = Whitening.fit(reference)
    x = torch.cat([whiten(inside), whiten(outside)]).double().numpy()
    y = np.r_[np.ones(len(inside)), np.zeros(len(outside))]

    def router() -> LogisticRegression:
        return LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000)

    folds = min(FOLDS, len(inside))
    oof = np.zeros(len(x))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        oof[test] = router().fit(x[train], y[train]).decision_function(x[test])
    threshold = float(oof[len(inside):].max()) + margin
    final = router().fit(x, y)
    w = torch.from_numpy(final.coef_[0]).float()
    weight = whiten.matrix @ w                      # fold the whitening into the router
    bias = float(final.intercept_[0]) - threshold - float(whiten.center @ weight)
    scope = Scope(weight, torch.tensor(bias), prefix)
    return ScopeFit(scope, scope.covers(inside), threshold)
