"""The reference model's mask hypernetwork: meta-trained on unlabeled train-pool images.

Built once with the reference model (``vitedit-ops reference build``) and cached beside it;
rebuilt when its meta-training settings change (they are recorded in its config).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..hypernet import MaskHypernet
from ..metatrain import MetaTrainConfig, meta_train
from ..models import ModelSpec
from ..preprocess import Preprocessor
from ..sites import EditWindow, edit_window, saved_default_window
from .data import ReferenceData

REFERENCE_METATRAIN = MetaTrainConfig(iterations=300)


def reference_window(model: nn.Module, reference_dir: Path) -> EditWindow:
    """A window saved by ``vitedit-ops search-window``, else the paper's default position."""
    from .build import WEIGHTS_FILE

    saved = saved_default_window(reference_dir / WEIGHTS_FILE)
    return edit_window(model, *saved) if saved else edit_window(model)


def metatrain_settings_match(directory: Path, model: nn.Module,
                             config: MetaTrainConfig = REFERENCE_METATRAIN) -> bool:
    """True when the cached hypernetwork was trained with ``config`` on the current window."""
    try:
        hypernet = MaskHypernet.load(directory)
    except Exception:  # missing or unreadable: not a match
        return False
    window = reference_window(model, directory.parent)
    if tuple(hypernet.config.window) != (window.start, window.end):
        return False
    trained = hypernet.config.training
    return all(trained.get(k) == v for k, v in config.settings().items()
               if k != "checkpoint_every")


def hypernet_builder(config: MetaTrainConfig = REFERENCE_METATRAIN,
                     on_iteration: Callable[[int, int, dict], None] | None = None):
    """A ``HypernetBuilder`` for :func:`~vitedit_ops.reference.build_reference`."""
    def build(model: nn.Module, spec: ModelSpec, data: ReferenceData, out_dir: Path) -> Path:
        images = Preprocessor(spec).normalize(data.train.pixels)
        threads = torch.get_num_threads()
        # one thread: bit-identical results whatever the host's core count (as the model's
        # training), and no oversubscription on small matrices
        torch.set_num_threads(1)
        try:
            meta_train(model, images, config, window=reference_window(model, out_dir.parent),
                       out_dir=out_dir, architecture=spec.architecture,
                       on_iteration=on_iteration)
        finally:
            torch.set_num_threads(threads)
        return out_dir
    build.__qualname__ = "reference_hypernet_builder"
    build.is_current = lambda path, model: metatrain_settings_match(Path(path), model, config)
    return build


def load_reference_with_hypernet(progress: bool = False,
                                 on_iteration: Callable[[int, int, dict], None] | None = None):
    """The cached reference model and its hypernetwork, building whatever is missing/stale."""
    from .build import hypernet_path, load_reference

    reference = load_reference(hypernet_builder=hypernet_builder(on_iteration=on_iteration),
                               progress=progress)
    return reference, MaskHypernet.load(hypernet_path(reference.card))
