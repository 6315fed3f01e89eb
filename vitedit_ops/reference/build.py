"""Build, cache and load the reference model: the embedded default every other part uses.

A build trains the ViT on the train pool, measures it on every pool and every default shift,
writes the weights (safetensors + timm spec) and the model card under
``VITEDIT_HOME/reference/``, and then runs the optional hypernetwork step. The card is written
last and atomically: a cache without a current card is rebuilt, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

from filelock import FileLock, Timeout
from torch import nn

from ..device import resolve_device
from ..errors import CheckpointError
from ..metrics import accuracy
from ..models import ModelSpec, fingerprint, load_model, save_model
from ..preprocess import Preprocessor
from ..settings import get_settings
from .card import ModelCard
from .data import (DEFAULT_SPLIT_SEED, IMAGE_SIZE, POOL_SIZES, ReferenceData,
                   load_reference_data)
from .groups import DEFAULT_MIN_GROUP_SIZE, shifted_error_groups
from .train import TrainConfig, pinned_threads, reference_spec, train_reference

RECIPE_VERSION = 1
DEFAULT_SHIFTS: tuple[str, ...] = ("rotate", "thicken", "translate")
SHIFT_SEED = 0
CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
HYPERNET_DIR = "hypernet"
log = logging.getLogger(__name__)
_VERSIONED = ("vitedit-ops", "torch", "timm", "numpy", "scikit-learn", "scipy", "safetensors")

HypernetBuilder = Callable[[nn.Module, ModelSpec, ReferenceData, Path], Path]
"""``meta_train_hypernet(model, spec, data, out_dir) -> path``: trains the mask hypernetwork
for the reference model (on ``data.train`` images, unlabeled) and saves it under ``out_dir``.
A builder may carry ``is_current(path, model) -> bool``; a cached hypernetwork it calls stale (e.g.
trained with other settings) is rebuilt."""


class Reference(NamedTuple):
    model: nn.Module
    spec: ModelSpec
    data: ReferenceData
    card: ModelCard


def default_config() -> TrainConfig:
    """The default recipe, with the seed from settings (``VITEDIT_SEED``)."""
    return TrainConfig(seed=get_settings().seed)


def reference_recipe(config: TrainConfig) -> dict:
    """Everything that decides a build's weights and card figures, as plain JSON data."""
    return {
        "version": RECIPE_VERSION,
        "data": {"source": "sklearn.datasets.load_digits", "split_seed": DEFAULT_SPLIT_SEED,
                 "pool_sizes": dict(POOL_SIZES), "image_size": IMAGE_SIZE,
                 "upsample": "bilinear"},
        "spec": json.loads(reference_spec().to_json()),
        "train": config.to_dict(),
        "shifts": {"names": list(DEFAULT_SHIFTS), "seed": SHIFT_SEED,
                   "min_size": DEFAULT_MIN_GROUP_SIZE},
    }


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def hypernet_path(card: ModelCard, reference_dir: str | Path | None = None) -> Path | None:
    """Where the build's hypernetwork lives, or None if it has none yet."""
    if not card.hypernet:
        return None
    return _directory(reference_dir) / card.hypernet["path"]


def build_reference(config: TrainConfig | None = None, *, reference_dir: str | Path | None = None,
                    device: str | None = None, force: bool = False,
                    hypernet_builder: HypernetBuilder | None = None,
                    progress: bool = True) -> Reference:
    """Train, measure and cache the reference model; reuse a current cache unless ``force``."""
    config = config or default_config()
    directory = _directory(reference_dir)
    device = device or get_settings().device
    with _build_lock(directory):
        if not force:
            cached, _ = _load_cached(directory, config, device)
            if cached is not None:
                return _ensure_hypernet(cached, directory, hypernet_builder)
        return _build(config, directory, device, hypernet_builder, progress)


def _build(config: TrainConfig, directory: Path, device: str,
           hypernet_builder: HypernetBuilder | None, progress: bool) -> Reference:
    started = time.perf_counter()
    recipe = reference_recipe(config)
    data = load_reference_data(recipe["data"]["split_seed"])
    with pinned_threads(config.threads, resolve_device(device)):  # card figures bit-stable too
        model, spec, stats = train_reference(data.train, config, device=device,
                                             progress=progress)
        inputs = Preprocessor(spec)
        pool_accuracy = {name: accuracy(model, inputs.normalize(pool.pixels), pool.labels)
                         for name, pool in data.pools().items()}
        shifts = {name: shifted_error_groups(model, spec, data.shift, name, seed=SHIFT_SEED,
                                             min_size=DEFAULT_MIN_GROUP_SIZE).summary()
                  for name in DEFAULT_SHIFTS}
    directory.mkdir(parents=True, exist_ok=True)
    weights = save_model(model, spec, directory / WEIGHTS_FILE,
                         metadata={"recipe_hash": recipe_hash(recipe)})
    card = ModelCard(
        recipe_hash=recipe_hash(recipe), recipe=recipe, fingerprint=fingerprint(model),
        weights=weights.name, pool_sizes=data.sizes(), split_hashes=data.split_hashes(),
        accuracy=pool_accuracy, shifts=shifts, training=asdict(stats),
        build_seconds=round(time.perf_counter() - started, 2), versions=_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    card.save(directory / CARD_FILE)
    return _ensure_hypernet(Reference(model, spec, data, card), directory, hypernet_builder)


def load_reference(build_if_missing: bool = True, config: TrainConfig | None = None, *,
                   reference_dir: str | Path | None = None, device: str | None = None,
                   hypernet_builder: HypernetBuilder | None = None,
                   progress: bool = False) -> Reference:
    """The cached reference (model in eval mode, spec, data pools, card).

    Rebuilds only when the cache is missing, unreadable, or was built from another recipe than
    ``config`` (default: :func:`default_config`); with ``build_if_missing=False`` that raises
    :class:`CheckpointError` instead. A ``hypernet_builder`` is run if the card has no
    hypernetwork yet.
    """
    config = config or default_config()
    directory = _directory(reference_dir)
    device = device or get_settings().device
    with _build_lock(directory):
        cached, reason = _load_cached(directory, config, device)
        if cached is not None:
            return _ensure_hypernet(cached, directory, hypernet_builder)
        if not build_if_missing:
            raise CheckpointError(f"reference model in {directory}: {reason}; "
                                  f"run `vitedit-ops reference build`")
        return _build(config, directory, device, hypernet_builder, progress)


@contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """One process builds (or checks) the cache at a time: concurrent commands and test
    workers would otherwise train the same model and hypernetwork into the same files."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory.parent / f".{directory.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another process building the reference cache in %s", directory)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _directory(reference_dir: str | Path | None) -> Path:
    return Path(reference_dir) if reference_dir is not None else get_settings().reference_dir


def _load_cached(directory: Path, config: TrainConfig, device: str
                 ) -> tuple[Reference | None, str]:
    """The cached build if it is complete and current, else None and the reason."""
    card_path = directory / CARD_FILE
    if not card_path.is_file():
        return None, "not built yet"
    try:
        card = ModelCard.load(card_path)
    except (OSError, ValueError, TypeError) as exc:
        return None, f"model card {card_path} is unreadable ({exc})"
    expected = recipe_hash(reference_recipe(config))
    if card.recipe_hash != expected:
        return None, (f"built from another recipe (card {card.recipe_hash[:12]}, "
                      f"expected {expected[:12]})")
    try:
        model, spec = load_model(directory / card.weights)
    except CheckpointError as exc:
        return None, str(exc)
    if fingerprint(model) != card.fingerprint:
        return None, "weights do not match the card's fingerprint"
    data = load_reference_data(card.recipe["data"]["split_seed"])
    if data.split_hashes() != card.split_hashes:
        return None, "the digits split differs from the card's (scikit-learn data changed?)"
    return Reference(model.to(resolve_device(device)), spec, data, card), ""


def _ensure_hypernet(reference: Reference, directory: Path,
                     builder: HypernetBuilder | None) -> Reference:
    """Run the hypernetwork step if asked and not done yet; record its output in the card."""
    if builder is None:
        return reference
    card = reference.card
    existing = hypernet_path(card, directory)
    is_current = getattr(builder, "is_current", None)
    if existing is not None and existing.exists() and (is_current is None
                                                       or is_current(existing, reference.model)):
        return reference
    out_dir = directory / HYPERNET_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    produced = Path(builder(reference.model, reference.spec, reference.data, out_dir))
    produced = produced if produced.is_absolute() else out_dir / produced
    try:  # relative inside the cache, so VITEDIT_HOME can move
        recorded = str(produced.resolve().relative_to(directory.resolve()))
    except ValueError:
        recorded = str(produced.resolve())
    card.hypernet = {
        "path": recorded,
        "builder": f"{getattr(builder, '__module__', '?')}."
                   f"{getattr(builder, '__qualname__', type(builder).__name__)}",
        "seconds": round(time.perf_counter() - started, 2),
    }
    card.save(directory / CARD_FILE)
    return reference


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
