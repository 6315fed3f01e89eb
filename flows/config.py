"""The nightly flow's parameters and the idempotency key derived from them.

Parameters are pydantic models so a deployment shows them as a form in the Prefect UI and a
``prefect.yaml`` can set them; everything that decides which version a night produces (the
collected predictions, the champion, these settings) goes into the idempotency key, so a
re-run of the same night finds the version it already registered instead of adding another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

KEY_PREFIX = "nightly-"
REPLAY_EDITORS = ("localized", "random_mask")
POOL_OPTIONS = ("null_space_energy", "replay_weight", "replay_scope")  # need a pool editor


class EditSettings(BaseModel):
    """How error groups are collected, edited and accepted (one night's recipe)."""

    model_config = ConfigDict(extra="forbid")  # a typo must not silently use a default

    method: str = Field("localized", description="Editor (vitedit_ops.editors): localized, "
                        "random_mask, window_ft, ft_l1, ft_l2, lora.")
    keep_fraction: float = Field(0.1, gt=0, le=1, description="Share of window units edited.")
    lr: float = Field(1e-3, gt=0, description="Edit learning rate (null-space edits move only "
                      "part of each gradient, so their useful rates are higher).")
    optimizer: str = Field("rmsprop", description="rmsprop, adam or sgd.")
    max_steps: int = Field(100, ge=1, description="Optimiser step limit per group.")
    ce_target: float = Field(0.5, gt=0, description="Stop once every edit image is right and "
                             "the edit images' cross-entropy is at most this (a looser stop "
                             "than the engine's 0.01 keeps edits smaller).")
    heldout_fraction: float = Field(0.5, ge=0, lt=1, description="Share of each group kept "
                                    "out of the edit to measure generalization.")
    max_edit_images: int | None = Field(4, ge=1, description="Edit images per group (cap).")
    min_group_size: int = Field(4, ge=1, description="Smaller error groups wait for more data.")
    max_groups: int | None = Field(8, ge=1, description="Largest groups edited per night.")
    group_locality_min: float = Field(0.99, ge=0, le=1, description="A group's own edit, and "
                                      "the stack of accepted groups, must keep at least this "
                                      "share of the suite's predictions (default: the gate's).")
    group_retention_min: float = Field(0.98, ge=0, le=1, description="...and keep at least this "
                                       "share of earlier nights' fixes right (default: the "
                                       "gate's).")
    replay: bool = Field(True, description="Give the masked editors (localized, random_mask) "
                         "a pool of images whose predictions must hold: production images "
                         "feedback confirmed correct plus the base's held-out pool, never the "
                         "gate suite's. The localized editor's default confines each edit to "
                         "the directions these images do not use (null-space edit).")
    null_space_energy: float | None = Field(0.999, ge=0, lt=1, description="Share of the "
                                            "pool images' FFN-input energy the edit must stay "
                                            "out of; 0 turns confinement off, None takes the "
                                            "editor's (0.99 for localized). At 0.999 some "
                                            "reference-model groups keep the 0.99 suite floor.")
    replay_weight: float | None = Field(None, ge=0, description="KL weight of a replay term "
                                        "on the pool (default: the editor's, off).")
    replay_scope: str | None = Field(None, description="confusable or all (default: the "
                                     "editor's).")
    replay_limit: int = Field(500, ge=0, description="Most confirmed-correct production images "
                              "in the replay pool (newest first).")
    seed: int = Field(0, description="Seed of the collector's edit/held-out split.")

    @model_validator(mode="after")
    def _replay_options_need_a_replaying_editor(self) -> EditSettings:
        tuned = [name for name in POOL_OPTIONS
                 if name in self.model_fields_set and getattr(self, name) is not None]
        if tuned and self.method not in REPLAY_EDITORS:
            raise ValueError(f"{', '.join(tuned)}: options of the "
                             f"{' and '.join(REPLAY_EDITORS)} editors, not of {self.method!r}")
        return self

    @property
    def uses_replay(self) -> bool:
        return self.replay and self.method in REPLAY_EDITORS

    def editor_options(self) -> dict[str, Any]:
        """Keyword arguments of ``create_editor`` besides the hypernetwork/window/replay pool."""
        options: dict[str, Any] = {"lr": self.lr, "optimizer": self.optimizer,
                                   "max_steps": self.max_steps, "ce_target": self.ce_target}
        if self.method in REPLAY_EDITORS:
            options["keep_fraction"] = self.keep_fraction
        if self.uses_replay:
            options.update({name: getattr(self, name) for name in POOL_OPTIONS
                            if getattr(self, name) is not None})
        return options


def idempotency_key(model: str, champion_version: str, champion_fingerprint: str,
                    prediction_ids: Iterable[str], edit: EditSettings,
                    gate: dict[str, float]) -> str:
    """``nightly-<sha256>`` of what decides the night's result (safe for MLflow tags)."""
    content = {"model": model, "champion": [champion_version, champion_fingerprint],
               "predictions": sorted(set(prediction_ids)), "edit": edit.model_dump(mode="json"),
               "gate": dict(sorted(gate.items()))}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return KEY_PREFIX + digest[:48]
