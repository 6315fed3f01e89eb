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
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InvalidInputError
from .forward import SplitForward
from .sites import EditWindow

MIN_OUTSIDE = 10  # fewer images to keep outside cannot calibrate a threshold
FOLDS = 5
RADIUS_SCALE = 1.5  # the product's scope radius (ScopedSettings.radius_scale), measured in
# docs/BENCHMARKS.md ("Scope radius")


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
    """Which inputs a patch applies to, decided once per input from the window's input."""

    kind = "scope"

    def __init__(self, prefix_tokens: int) -> None:
        super().__init__()
        self.prefix_tokens = int(prefix_tokens)

    def covers(self, keys: torch.Tensor) -> torch.Tensor:
        """Which keys are inside (bool, one per key)."""
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.covers(token_mean(hidden, self.prefix_tokens))

    def layout(self) -> dict[str, Any]:
        return {"kind": self.kind, "prefix_tokens": self.prefix_tokens,
                "shapes": {k: list(v.shape) for k, v in self.state_dict().items()}}

    @staticmethod
    def empty(layout: dict[str, Any]) -> Scope:
        """A scope of the saved kind and sizes, to load a state dict into."""
        kinds = {cls.kind: cls for cls in (RouterScope, NearestScope)}
        if layout.get("kind") not in kinds:
            raise InvalidInputError(f"unknown scope kind {layout.get('kind')!r}")
        shapes = layout["shapes"]
        return kinds[layout["kind"]](**{k: torch.zeros(v) for k, v in shapes.items()},
                                     prefix_tokens=layout["prefix_tokens"])


class RouterScope(Scope):
    """``inside = key . weight + bias > 0`` (the whitening folded into the weight)."""

    kind = "router"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, prefix_tokens: int) -> None:
        super().__init__(prefix_tokens)
        self.register_buffer("weight", weight.float().reshape(-1))
        self.register_buffer("bias", bias.float().reshape(()))

    def covers(self, keys: torch.Tensor) -> torch.Tensor:
        return keys.float() @ self.weight + self.bias > 0


def _distances(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance from each query row to every row of ``points`` (exports to ONNX as matrix
    products, no cdist)."""
    squared = ((query * query).sum(-1, keepdim=True) - 2 * query @ points.T
               + (points * points).sum(-1)[None])
    return squared.clamp_min(0).sqrt()


def _nearest_distance(query: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distance from each query row to its nearest row of ``points``."""
    return _distances(query, points).min(-1).values


def nearest_other(points: torch.Tensor) -> torch.Tensor:
    """Distance from each row of ``points`` to its nearest *other* row (inf for a lone row)."""
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(float("inf"))
    return distances.min(1).values


class NearestScope(Scope):
    """``inside`` when, in whitened key space, the nearest image the patch was made for is
    nearer than ``alpha`` times the nearest image it must leave alone (the clean images and
    earlier patches' images): a local rule, so several subpopulations off the clean manifold,
    one patch each, keep out of each other's way. With a ``radius`` it must also be within
    that distance of one of them (GRACE's deferral radius): the ratio alone covers every input
    far from the clean images, so a later, unrelated shift would fall inside."""

    kind = "nearest"

    def __init__(self, center: torch.Tensor, matrix: torch.Tensor, keys: torch.Tensor,
                 negatives: torch.Tensor, alpha: torch.Tensor, prefix_tokens: int,
                 radius: torch.Tensor | None = None) -> None:
        super().__init__(prefix_tokens)
        self.register_buffer("center", center.float())
        self.register_buffer("matrix", matrix.float())
        self.register_buffer("keys", keys.float())
        self.register_buffer("negatives", negatives.float())
        # one ratio for every key, or one per key (``fit_nearest_scope(per_key=True)``)
        self.register_buffer("alpha", alpha.float())
        if radius is not None:  # patches saved before the radius existed have none
            self.register_buffer("radius", radius.float().reshape(()))

    def covers(self, keys: torch.Tensor) -> torch.Tensor:
        """Inside when some key within the radius is nearer than its ratio times the nearest
        negative; with one shared ratio, that is the nearest key (the rule as first fitted)."""
        z = (keys.float() - self.center) @ self.matrix
        distances = _distances(z, self.keys)
        if hasattr(self, "radius"):
            distances = torch.where(distances <= self.radius, distances,
                                    torch.full_like(distances, float("inf")))
        scaled = (distances / self.alpha).min(-1).values
        return scaled < _nearest_distance(z, self.negatives)


@dataclass(frozen=True)
class ScopeFit:
    """A fitted scope and how the images it was fitted on fall."""

    scope: Scope
    inside_covered: torch.Tensor   # bool per inside image: really inside
    threshold: float               # router: the highest out-of-fold outside score;
    # nearest: alpha

    @property
    def coverage(self) -> float:
        return float(self.inside_covered.float().mean()) if len(self.inside_covered) else 0.0


def fit_scope(inside: torch.Tensor, outside: torch.Tensor, reference: torch.Tensor,
              prefix: int, margin: float = 0.0, regularization: float = 1.0,
              seed: int = 0, avoid: torch.Tensor | None = None) -> ScopeFit:
    """A router between ``inside`` keys (the images a patch is made for) and ``outside`` keys
    (images it must leave alone), in the whitening of ``reference`` keys.

    The threshold is the highest out-of-fold score any outside image gets (plus ``margin``
    in score units), so no outside image is inside, including the ones the router did not
    see while being fitted. ``avoid`` keys (earlier patches' images) are further negatives,
    and the threshold also stays above the final router's score of every one of them: the
    exact images earlier patches were made for are never inside a new scope, so a new patch
    cannot undo their fixes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    if len(inside) < 2 or len(outside) < MIN_OUTSIDE:
        raise InvalidInputError(f"a scope needs at least 2 inside and {MIN_OUTSIDE} outside "
                                f"images, got {len(inside)} and {len(outside)}")
    whiten = Whitening.fit(reference)
    avoid = avoid if avoid is not None else torch.empty(0, inside.shape[1])
    x = torch.cat([whiten(inside), whiten(outside), whiten(avoid)]).double().numpy()
    y = np.r_[np.ones(len(inside)), np.zeros(len(outside) + len(avoid))]

    def router() -> LogisticRegression:
        return LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000)

    folds = min(FOLDS, len(inside))
    oof = np.zeros(len(x))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        oof[test] = router().fit(x[train], y[train]).decision_function(x[test])
    threshold = float(oof[len(inside):len(inside) + len(outside)].max()) + margin
    final = router().fit(x, y)
    if len(avoid):
        threshold = max(threshold, float(final.decision_function(
            x[len(inside) + len(outside):]).max()) + 1e-6)
    w = torch.from_numpy(final.coef_[0]).float()
    weight = whiten.matrix @ w                      # fold the whitening into the router
    bias = float(final.intercept_[0]) - threshold - float(whiten.center @ weight)
    scope = RouterScope(weight, torch.tensor(bias), prefix)
    return ScopeFit(scope, scope.covers(inside), threshold)


def fit_nearest_scope(inside: torch.Tensor, outside: torch.Tensor, prefix: int,
                      margin: float = 0.8, avoid: torch.Tensor | None = None,
                      radius_scale: float | None = None, per_key: bool = False) -> ScopeFit:
    """A :class:`NearestScope` for ``inside`` keys against ``outside`` keys (whitened with
    them) and ``avoid`` keys.

    ``alpha`` is ``margin`` times the smallest ratio, over the outside images, of their
    distance to the inside images and their distance to the nearest *other* outside image:
    an unseen clean image placed like any outside one stays outside with that margin. Outside
    and avoided images are negatives, so each of them is outside too (its own distance to the
    negatives is zero). ``radius_scale`` bounds the scope to that many times the largest
    distance from an inside image to its nearest other inside image (how far apart the
    subpopulation's own images lie, so its unseen images fall within); None: no bound.
    ``per_key`` gives every inside key its own ratio, the smallest over the outside images of
    their distance to *that* key over their distance to the nearest other outside image: one
    clean image near one edge of a large, loose subpopulation then shrinks the scope around
    the keys near it, not around all of them; each outside image still meets every key's
    ratio with the margin.
    """
    if len(inside) < 1 or len(outside) < MIN_OUTSIDE:
        raise InvalidInputError(f"a scope needs at least 1 inside and {MIN_OUTSIDE} outside "
                                f"images, got {len(inside)} and {len(outside)}")
    if not 0 < margin <= 1:
        raise InvalidInputError(f"the scope margin is a ratio in (0, 1], got {margin}")
    if radius_scale is not None and radius_scale <= 0:
        raise InvalidInputError(f"the scope radius scale must be positive, got {radius_scale}")
    whiten = Whitening.fit(outside)
    k, p = whiten(inside), whiten(outside)
    ratios = torch.cdist(p, k) / nearest_other(p).clamp_min(1e-12)[:, None]   # (P, K)
    alpha = margin * (ratios.min(0).values if per_key else ratios.min())
    negatives = p if avoid is None or len(avoid) == 0 else torch.cat([p, whiten(avoid)])
    radius = None
    if radius_scale is not None and len(k) > 1:
        radius = torch.tensor(radius_scale * float(nearest_other(k).max()))
    scope = NearestScope(whiten.center, whiten.matrix, k, negatives, alpha, prefix, radius)
    return ScopeFit(scope, scope.covers(inside), float(scope.alpha.min()))
