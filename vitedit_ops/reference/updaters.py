"""The reference model's KE and MEND update networks, meta-trained on the hypernetwork's
episodes and cached beside the reference build; rebuilt when their settings, the window or
the base change (all recorded in their config)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import VitEditError
from ..learned_update import UpdateNet, load_updater
from ..models import fingerprint
from ..preprocess import Preprocessor
from ..update_metatrain import UpdaterTrainConfig, meta_train_updater
from .build import Reference, _directory
from .hypernet import REFERENCE_METATRAIN, reference_window

UPDATERS_DIR = "updaters"


def reference_updater_config(kind: str) -> UpdaterTrainConfig:
    """The reference recipe: the mask hypernetwork's episodes, 300 iterations."""
    return UpdaterTrainConfig(kind=kind, iterations=300, batch_size=8,
                              episodes=REFERENCE_METATRAIN.episodes,
                              cutmix_min_frac=REFERENCE_METATRAIN.cutmix_min_frac,
                              cutmix_max_frac=REFERENCE_METATRAIN.cutmix_max_frac)


def _current(net: UpdateNet, reference: Reference, window: tuple[int, int]) -> bool:
    """Made for this build and window (its settings are in its directory's name)."""
    return (net.config.base_fingerprint == fingerprint(reference.model)
            and tuple(net.config.window) == window)


def reference_updater(reference: Reference, kind: str, reference_dir: str | Path | None = None,
                      iterations: int | None = None,
                      on_iteration: Callable[[int, int, dict], None] | None = None
                      ) -> UpdateNet:
    """The cached ``kind`` update network of the reference model, meta-training it (on one
    thread, for results that do not depend on the host's cores) if missing or stale;
    ``iterations`` (e.g. a quick run's) overrides the recipe's and is cached apart."""
    root = _directory(reference_dir)
    config = reference_updater_config(kind)
    if iterations is not None:
        config = replace(config, iterations=iterations)
    digest = hashlib.sha256(json.dumps(config.settings(), sort_keys=True).encode()).hexdigest()
    directory = root / UPDATERS_DIR / f"{kind}-{digest[:12]}"
    window = reference_window(reference.model, root)
    try:
        net = load_updater(directory)
        if _current(net, reference, (window.start, window.end)):
            return net
    except VitEditError:
        pass
    images = Preprocessor(reference.spec).normalize(reference.data.train.pixels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = meta_train_updater(reference.model, images, config, window=window,
                                    architecture=reference.spec.architecture,
                                    on_iteration=on_iteration)
    finally:
        torch.set_num_threads(threads)
    result.updater.config.training["seconds"] = round(result.seconds, 1)
    result.updater.save(directory)
    return result.updater
