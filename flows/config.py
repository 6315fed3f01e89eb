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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vitedit_ops.editors import (OPTIMIZERS, PRODUCT, PRODUCT_SCOPED, editor_options,
                                 list_editors, takes_preserved, updater_kind)
from vitedit_ops.gate import GateConfig
from vitedit_ops.scope import RADIUS_SCALE

KEY_PREFIX = "nightly-"
EditorName = Literal[tuple(list_editors())]  # type: ignore[valid-type]
OptimizerName = Literal[OPTIMIZERS]  # type: ignore[valid-type]
# fields passed to ``create_editor`` (it keeps those the chosen editor declares)
EDITOR_FIELDS = ("keep_fraction", "lr", "optimizer", "max_steps", "ce_target",
                 "null_space_energy", "replay_weight", "replay_scope", "jitter_copies")
SCOPED_EDITOR_FIELDS = ("keep_fraction", "lr", "optimizer", "max_steps", "ce_target",
                        "jitter_copies")
OPTIM_FIELDS = ("lr", "optimizer", "max_steps", "ce_target")


def _learned_step_defaults(method: str, options: dict[str, Any], given: set[str]
                           ) -> dict[str, Any]:
    """For KE and MEND, ``lr`` multiplies a meta-learned step and ``max_steps`` repeats it:
    the product's optimiser values mean nothing there, so those not set explicitly become
    None (the editor's own: the step as trained, once), as ``vitedit-ops edit`` does."""
    if not updater_kind(method):
        return options
    return {**options, **{k: None for k in OPTIM_FIELDS if k not in given}}


class ScopedSettings(BaseModel):
    """How the night's subpopulations are found and edited inside their scopes.

    Editor defaults are ``vitedit_ops.editors.PRODUCT_SCOPED``.
    """

    model_config = ConfigDict(extra="forbid")

    method: EditorName = Field(PRODUCT_SCOPED.method, description="Editor inside the scope.")
    keep_fraction: float = Field(PRODUCT_SCOPED.get("keep_fraction"), gt=0, le=1,
                                 description="Share of window units a scoped patch edits.")
    lr: float = Field(PRODUCT_SCOPED.get("lr"), gt=0, description="Learning rate.")
    optimizer: OptimizerName = Field(PRODUCT_SCOPED.get("optimizer"), description="Optimiser.")
    max_steps: int = Field(PRODUCT_SCOPED.get("max_steps"), ge=1, description="Step limit.")
    ce_target: float = Field(PRODUCT_SCOPED.get("ce_target"), gt=0, description="Stop once "
                             "every image is right and their cross-entropy is at most this.")
    jitter_copies: int = Field(PRODUCT_SCOPED.get("jitter_copies"), ge=0, description="Jittered"
                               " copies of every image of the subpopulation in the loss.")
    min_errors: int = Field(6, ge=2, description="Smaller subpopulations wait for more data.")
    max_units: int = Field(4, ge=1, description="Largest subpopulations edited per night.")
    max_unit_errors: int | None = Field(40, ge=6, description="A cluster with more errors "
                                        "than this is split into tighter parts, each a unit "
                                        "with its own scope (None: never split).")
    cluster_per_day: bool = Field(False, description="Cluster each serving day's errors on "
                                  "their own (UTC days), so a shift that arrived tonight is "
                                  "not merged with earlier nights' leftovers.")
    max_edit_images: int | None = Field(64, ge=1, description="Edit images per subpopulation "
                                        "(cap; the rest are held out).")
    heldout_fraction: float = Field(0.25, ge=0, lt=1, description="Share of a "
                                    "subpopulation's errors kept out of its edit to measure "
                                    "generalization (a quarter: one night's images are few, "
                                    "and each one edited teaches the patch more).")
    cluster_scale: float = Field(2.0, gt=0, description="Clusters are cut at this many times "
                                 "their median nearest-neighbour distance.")
    rule: Literal["nearest", "router"] = Field(
        "nearest", description="nearest: inside when the patch's own images are nearer than "
        "margin x the images it must leave alone; router: a logistic router on the keys.")
    margin: float | None = Field(None, ge=0, description="nearest: the distance ratio "
                                 "(default 0.8); router: score kept above every out-of-fold "
                                 "preserved score (default 0).")
    avoid_earlier: bool = Field(True, description="Keep the images of earlier scoped patches "
                                "outside a new scope.")
    avoid_neighbours: bool = Field(True, description="Keep the images of the night's other "
                                   "units (errors and confirmed-correct) outside a new scope.")
    per_key_ratio: bool = Field(False, description="nearest: every patch image gets its own "
                                "distance ratio, so a clean image near one edge of a large "
                                "subpopulation shrinks the scope only there.")
    radius_scale: float | None = Field(
        RADIUS_SCALE, gt=0, description="nearest: a scope also ends this many times its "
        "images' largest nearest-neighbour distance from them, so a later, unrelated shift "
        "stays outside (None: no bound).")

    @model_validator(mode="after")
    def _options_of_the_chosen_editor(self) -> ScopedSettings:
        declared = editor_options(self.method)
        foreign = [n for n in SCOPED_EDITOR_FIELDS if n in self.model_fields_set
                   and n not in declared]
        if foreign:
            raise ValueError(f"{', '.join(foreign)}: not an option of the {self.method!r} "
                             "editor")
        return self

    def editor_options(self) -> dict[str, Any]:
        return _learned_step_defaults(self.method, {
            **{k: v for k, v in PRODUCT_SCOPED.options.items() if k not in SCOPED_EDITOR_FIELDS},
            **{name: getattr(self, name) for name in SCOPED_EDITOR_FIELDS}},
            self.model_fields_set)


class EditSettings(BaseModel):
    """How error groups are collected, edited and accepted (one night's recipe).

    Editor defaults are the product's (``vitedit_ops.editors.PRODUCT``), so what a night runs
    and what the benchmarks call "product" cannot drift apart.
    """

    model_config = ConfigDict(extra="forbid")  # a typo must not silently use a default

    strategy: Literal["edit", "retrain"] = Field(
        "edit", description="edit: one patch per unit (the product); retrain: the peer that "
        "fine-tunes the champion on all of the night's labelled images with replay of clean "
        "ones (flows/retrain.py), gated the same way.")
    method: EditorName = Field(PRODUCT.method, description="Editor (vitedit_ops.editors).")
    keep_fraction: float = Field(PRODUCT.get("keep_fraction"), gt=0, le=1,
                                 description="Share of window units edited (masked editors).")
    lr: float = Field(PRODUCT.get("lr"), gt=0, description="Edit learning rate.")
    optimizer: OptimizerName = Field(PRODUCT.get("optimizer"), description="Edit optimiser.")
    max_steps: int = Field(PRODUCT.get("max_steps"), ge=1,
                           description="Optimiser step limit per group.")
    ce_target: float = Field(PRODUCT.get("ce_target"), gt=0, description="Stop once every "
                             "edit image is right and their cross-entropy is at most this.")
    null_space_energy: float | None = Field(
        PRODUCT.get("null_space_energy"), ge=0, lt=1, description="Share of the preserved "
        "pool's FFN-input energy the edit must stay out of (masked editors); 0 turns "
        "confinement off, None takes the editor's default.")
    replay_weight: float | None = Field(None, ge=0, description="KL weight of a replay term "
                                        "on the preserved pool (None: the editor's, off).")
    replay_scope: Literal["confusable", "all"] | None = Field(
        None, description="Preserved images the replay term uses (None: the editor's).")
    jitter_copies: int | None = Field(PRODUCT.get("jitter_copies"), ge=0, description="Jittered"
                                      " copies of each image in a single-image edit.")
    subpopulations: bool = Field(True, description="Edit errors off the clean manifold (shifted "
                                 "images) as subpopulations, each a scoped patch; the rest as "
                                 "(true, predicted) groups.")
    scoped: ScopedSettings = Field(default_factory=ScopedSettings, description="Finding and "
                                   "editing subpopulations.")
    heldout_fraction: float = Field(0.5, ge=0, lt=1, description="Share of each group kept "
                                    "out of the edit to measure generalization.")
    max_edit_images: int | None = Field(4, ge=1, description="Edit images per group (cap).")
    min_group_size: int = Field(4, ge=1, description="Smaller error groups wait for more data.")
    max_groups: int | None = Field(8, ge=1, description="Largest groups edited per night.")
    group_locality_min: float = Field(0.99, ge=0, le=1, description="A group's own edit, and "
                                      "the stack of accepted groups, must keep at least this "
                                      "share of the suite's predictions (default: the gate's).")
    group_generalization_min: float = Field(0.5, ge=0, le=1, description="A unit with held-out"
                                            " images must fix at least this share of them "
                                            "(default: the gate's): one that does not waits for "
                                            "more data instead of failing the night's gate.")
    group_min_heldout: int = Field(5, ge=0, description="...on at least this many held-out "
                                   "images: a smaller unit cannot show it generalizes (one "
                                   "image of two is 50%) and waits for more data.")
    group_retention_min: float = Field(0.98, ge=0, le=1, description="...and keep at least this "
                                       "share of earlier nights' fixes right (default: the "
                                       "gate's).")
    protect_fixes: bool = Field(False, description="Earlier nights' fixed edit images (the "
                                "suite's retention images) weigh as much as the whole "
                                "preserved pool in each (true, predicted) group's null-space "
                                "confinement, so the next edit leaves their inputs alone.")
    preserve: bool = Field(True, description="Give editors that take one a preserved pool: "
                           "production images feedback confirmed correct plus the base's "
                           "held-out pool, never the gate suite's images. The product's "
                           "editor confines each edit to the directions they do not use.")
    preserved_limit: int = Field(500, ge=0, description="Most confirmed-correct production "
                                 "images in the preserved pool (newest first).")
    seed: int = Field(0, description="Seed of the collector's edit/held-out split.")

    @model_validator(mode="after")
    def _options_of_the_chosen_editor(self) -> EditSettings:
        declared = editor_options(self.method)
        foreign = [name for name in EDITOR_FIELDS if name in self.model_fields_set
                   and getattr(self, name) is not None and name not in declared]
        if foreign:
            raise ValueError(f"{', '.join(foreign)}: not an option of the {self.method!r} "
                             "editor")
        return self

    @property
    def uses_preserved(self) -> bool:
        """Whether the night builds a preserved pool (scoped patches and retraining's replay
        always need one)."""
        return self.preserve and (takes_preserved(self.method) or self.edits_subpopulations
                                  or self.strategy == "retrain")

    @property
    def edits_subpopulations(self) -> bool:
        return self.subpopulations and self.strategy == "edit"

    @property
    def updater_kinds(self) -> tuple[str, ...]:
        """The lineage's update networks the night edits with (KE, MEND: ``method`` for the
        (true, predicted) groups or the retraining, ``scoped.method`` inside scopes)."""
        methods = [self.method] + ([self.scoped.method] if self.edits_subpopulations else [])
        return tuple(dict.fromkeys(k for k in map(updater_kind, methods) if k))

    def editor_options(self) -> dict[str, Any]:
        """Keyword arguments of ``create_editor`` besides the hypernetwork/window/pool."""
        return _learned_step_defaults(self.method,
                                      {name: getattr(self, name) for name in EDITOR_FIELDS},
                                      self.model_fields_set)


_GATE = GateConfig()


class GateThresholds(BaseModel):
    """The gate's thresholds (``vitedit_ops.gate.GateConfig``), each with its default, so a
    deployment's run form shows what a night is held to; the gate validates the values."""

    model_config = ConfigDict(extra="forbid")  # a typo must not loosen a gate

    reliability_min: float = Field(_GATE.reliability_min, description="Share of the edit "
                                   "images the candidate must now get right.")
    generalization_min: float = Field(_GATE.generalization_min, description="Share of the "
                                      "edited groups' held-out images it must fix.")
    locality_min: float = Field(_GATE.locality_min, description="Share of the suite's clean "
                                "images whose top-1 prediction must not change.")
    sensitive_min: float = Field(_GATE.sensitive_min, description="The same share on the "
                                 "suite's sensitive (small-margin) images.")
    retention_min: float = Field(_GATE.retention_min, description="Share of earlier nights' "
                                 "fixed images that must still be right.")
    accuracy_drop_max: float = Field(_GATE.accuracy_drop_max, description="Largest drop of "
                                     "labelled clean accuracy, in percentage points.")
    norm_growth_max: float = Field(_GATE.norm_growth_max, description="Largest Frobenius-norm "
                                   "ratio of any changed weight.")
    onnx_max_abs_diff: float = Field(_GATE.onnx_max_abs_diff, description="Largest |logit "
                                     "difference| between torch and onnxruntime.")
    onnx_top1_agreement_min: float = Field(_GATE.onnx_top1_agreement_min, description="Share "
                                           "of identical top-1 classes, torch vs ONNX.")

    def config(self) -> GateConfig:
        return GateConfig.from_mapping(self.model_dump())


def idempotency_key(model: str, champion_version: str, champion_fingerprint: str,
                    prediction_ids: Iterable[str], edit: EditSettings,
                    gate: dict[str, float]) -> str:
    """``nightly-<sha256>`` of what decides the night's result (safe for MLflow tags)."""
    content = {"model": model, "champion": [champion_version, champion_fingerprint],
               "predictions": sorted(set(prediction_ids)), "edit": edit.model_dump(mode="json"),
               "gate": dict(sorted(gate.items()))}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return KEY_PREFIX + digest[:48]
