"""Named editor configurations, and the one that says what the product runs.

The nightly flow's defaults, the ``vitedit-ops edit`` command's defaults and every benchmark's
"product" row read :data:`PRODUCT`; editor classes keep their method's own plain defaults. So a
change to what ships is one edit here, and a benchmark cannot measure something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hypernet import MaskHypernet
from .base import Editor


@dataclass(frozen=True)
class EditRecipe:
    """An editor name and the options it runs with."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def get(self, option: str, default: Any = None) -> Any:
        return self.options.get(option, default)

    def with_options(self, **changes: Any) -> EditRecipe:
        return EditRecipe(self.method, {**self.options, **changes})

    def create(self, *, hypernet: MaskHypernet | None = None,
               window: tuple[int, int] | None = None, preserved: torch.Tensor | None = None,
               **overrides: Any) -> Editor:
        """The editor, with ``overrides`` on top of the recipe's options."""
        from . import create_editor

        return create_editor(self.method, hypernet=hypernet, window=window,
                             preserved=preserved, **{**self.options, **overrides})


PRODUCT = EditRecipe("localized", {
    "keep_fraction": 0.1,
    "lr": 1e-3,
    "optimizer": "rmsprop",
    "max_steps": 100,
    # stop once every edit image is right and their CE is at most this: a looser stop than
    # the method's 0.01 keeps the change smaller
    "ce_target": 0.5,
    # confine the change against the preserved pool's FFN-input energy (nullspace.py)
    "null_space_energy": 0.999,
    # a single-image edit also fits jittered copies of its image (jitter.py)
    "jitter_copies": 8,
    "jitter_max_images": 1,
})
"""What the nightly flow runs by default (docs/frontier.md measures each option)."""

PRODUCT_SCOPED = EditRecipe("localized", {
    # inside its scope a patch may change as much as the subpopulation needs: every window
    # unit (a quarter, the hypernetwork's choice, shipped fewer nights and repaired less over
    # three scenario seeds: docs/BENCHMARKS.md), no confinement, more steps
    "keep_fraction": 1.0,
    "lr": 3e-4,
    "optimizer": "rmsprop",
    "max_steps": 300,
    "ce_target": 0.05,
    "null_space_energy": 0.0,
    "jitter_copies": 0,
    # when jitter is on, every image of the subpopulation (capped far above any unit's size)
    "jitter_max_images": 100_000,
})
"""What the nightly flow runs on a subpopulation inside its scope (``editors/scoped.py``)."""

PAPER = EditRecipe("localized", {"keep_fraction": 0.1, "lr": 1e-3, "optimizer": "rmsprop",
                                 "max_steps": 100, "ce_target": 0.01})
"""The method as the paper runs it: no confinement, no jitter, CE <= 0.01."""
