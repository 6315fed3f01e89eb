"""Drive the real nightly loop through a scenario: serve, label, run the flow, promote, measure.

Each variant gets a fresh lineage of its own (MLflow store, monitoring store, image store
under its own ``VITEDIT_HOME``) started from the same reference model, suite and
hypernetwork (and, for a variant that edits with KE or MEND, the reference update network
of that kind, ``reference_updater``). Every night: the champion (ONNX Runtime, loaded by
alias) serves the day and logs through the ``PredictionLogger``, every request gets its
reviewer's label, the ``nightly-edit`` flow runs with the variant's settings and
``auto_promote`` (every challenger that passes the gate becomes champion), and the new
champion is measured on images no night ever served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flows.config import EditSettings
from flows.demo.serving import ChampionServer, review, serve_day
from flows.nightly import nightly_edit
from flows.reporting import NightlyResult
from monitoring import Collector, PredictionLogger, open_image_store, open_store
from registry import champion, load_version, register_base, register_hypernet, register_updater
from vitedit_ops.gate import build_suite
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.learned_update import UpdateNet
from vitedit_ops.metrics import norm_growth, predict_logits
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.reference import Reference, hypernet_path
from vitedit_ops.reference.updaters import reference_updater

from ..home import bench_home
from .scenario import World, as_served

MODEL = "digits-vit"


@dataclass(frozen=True)
class Variant:
    """A way to run the nightly loop: edit-setting and gate overrides on the product's."""

    name: str
    edit: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _register_lineage(reference: Reference, reference_dir: Path, home: Path,
                      updaters: list[UpdateNet]) -> str:
    """Suite from the locality pool; the base as v1/champion with hypernetwork and pool, and
    the ``updaters`` the variant edits with."""
    from vitedit_ops.settings import get_settings

    data = reference.data
    suite_dir = home / "suite"
    build_suite(suite_dir, reference.model, reference.spec, data.locality.pixels,
                data.locality.labels, data.locality.ids)
    uri = get_settings().resolved_mlflow_uri()
    registration = register_base(reference_dir / reference.card.weights, suite_dir, name=MODEL,
                                 tracking_uri=uri)
    register_hypernet(MODEL, registration.version, hypernet_path(reference.card, reference_dir),
                      data.preserved.pixels, uri)
    for net in updaters:
        register_updater(MODEL, registration.version, net.save(home / f"updater-{net.kind}"),
                         uri)
    with open_store() as store:
        store.register_model(MODEL, reference.spec.num_classes, reference.spec.class_names)
    return uri


@dataclass
class Measure:
    """What a champion is scored on: each kind's never-served half, clean held-out images."""

    world: World
    base: nn.Module
    preprocessor: Preprocessor
    window_weights: list[str]

    def __post_init__(self) -> None:
        self.sets = {kind: self.world.evaluation_set(kind) for kind in self.world.scenario.kinds}
        self.clean = self.preprocessor.normalize(as_served(self.world.clean_eval.pixels))
        self.base_clean = predict_logits(self.base, self.clean).argmax(-1)
        self.base_state = {n: p.detach().clone() for n, p in self.base.named_parameters()}

    def errors(self, model: nn.Module, kinds: list[str]) -> dict[str, int]:
        out = {}
        for kind in kinds:
            pixels, labels = self.sets[kind]
            predicted = predict_logits(model, self.preprocessor.normalize(pixels)).argmax(-1)
            out[kind] = int((predicted != labels).sum())
        return out

    def clean_agreement(self, model: nn.Module) -> float:
        predicted = predict_logits(model, self.clean).argmax(-1)
        return float((predicted == self.base_clean).float().mean())

    def norm_growth(self, model: nn.Module) -> float:
        return max(norm_growth(self.base_state, model, self.window_weights).values())


def _fixes(store_images: Any, model: str) -> list[tuple[str, str, int]]:
    """(prediction id, image sha256, true class) of every fix in the edit ledger."""
    with open_store() as store:
        return [(e.image.record_id or "", e.image.sha256, e.true_class)
                for e in Collector(store, store_images).previously_edited(model)]


def _kept(model: nn.Module, preprocessor: Preprocessor, images: Any,
          fixes: list[tuple[str, str, int]]) -> float | None:
    if not fixes:
        return None
    pixels = torch.stack([preprocessor.pixels_from_pil(images.load_image(sha))
                          for _, sha, _ in fixes])
    labels = torch.tensor([label for _, _, label in fixes])
    predicted = predict_logits(model, preprocessor.normalize(pixels)).argmax(-1)
    return float((predicted == labels).float().mean())


def run_variant(reference: Reference, reference_dir: Path, hypernet: MaskHypernet,
                world: World, variant: Variant, workdir: Path,
                log: Callable[[str], None] = print,
                updater_iterations: int | None = None) -> list[dict[str, Any]]:
    """Every night of ``world`` for ``variant``; one row per night. The update networks it
    edits with are the reference's (cached by their settings; ``updater_iterations``
    overrides the recipe's, as a quick run does)."""
    home = workdir / "lineages" / "".join(c if c.isalnum() else "-" for c in variant.name)
    rows: list[dict[str, Any]] = []
    updaters = []
    for kind in EditSettings(**variant.edit).updater_kinds:
        log(f"  meta-training (or loading) the reference {kind} update network ...")
        updaters.append(reference_updater(reference, kind, reference_dir, updater_iterations))
    with bench_home(home, "VITEDIT_REGISTERED_MODEL"):
        uri = _register_lineage(reference, reference_dir, home, updaters)
        measure = Measure(world, reference.model, Preprocessor(reference.spec),
                          list(hypernet.config.weight_names))
        kinds = world.scenario.kinds
        before = measure.errors(reference.model, kinds)
        fixed_earlier: list[tuple[str, str, int]] = []
        for day, kind in enumerate(world.scenario.days):
            started = time.perf_counter()
            requests = world.requests(day)
            server = ChampionServer(MODEL, uri)
            with open_store() as store:
                with PredictionLogger(store, open_image_store()) as logger:
                    served_errors = serve_day(server, logger, requests,
                                              world.scenario.day_start(day), lambda _n: None)
                review(store, requests, world.scenario.feedback_time(day))
            served_seconds = time.perf_counter() - started
            started = time.perf_counter()
            error = ""
            try:
                result: NightlyResult | None = nightly_edit(
                    model=MODEL, edit_settings=EditSettings(**variant.edit), gate=variant.gate,
                    auto_promote=True, as_of=world.scenario.night_time(day))
            except Exception as exc:  # noqa: BLE001 - production's next night runs too
                result, error = None, f"{type(exc).__name__}: {exc}"
                log(f"  {variant.name} night {day + 1} ({kind}): the night failed ({error}); "
                    "the champion stays, the next night runs")
            night_seconds = time.perf_counter() - started
            groups = result.groups if result else []
            info = champion(MODEL, uri)
            model, spec, _ = load_version(MODEL, info.version, tracking_uri=uri)
            preprocessor = Preprocessor(spec)
            images = open_image_store()
            kept = _kept(model, preprocessor, images, fixed_earlier)
            shown = list(dict.fromkeys(world.scenario.days[:day + 1]))
            errors = measure.errors(model, kinds)
            rows.append({
                "variant": variant.name, "night": day + 1, "shift": kind,
                "champion_served": server.version, "champion_after": info.version,
                "status": result.status if result else "failed",
                "error": error,
                "gate_passed": bool(result and result.gate_passed),
                "promoted": result.promoted if result else None,
                "failed_checks": [] if result is None or result.gate is None else
                [c.name for c in result.gate.checks if not c.passed],
                "served_errors": served_errors,
                "groups_collected": int(result.collected.get("groups", 0)) if result else 0,
                "groups_edited": sum(1 for g in groups if g.get("outcome") != "error"),
                "groups_applied": sum(1 for g in groups
                                      if g.get("outcome") in ("accepted", "applied")),
                "errors_before": {k: before[k] for k in shown},
                "errors_after": {k: errors[k] for k in shown},
                "errors_unseen_kinds": {k: errors[k] for k in kinds if k not in shown},
                "clean_agreement": measure.clean_agreement(model),
                "earlier_fixes": len(fixed_earlier), "earlier_fixes_kept": kept,
                "norm_growth": measure.norm_growth(model),
                "units": [{k: g.get(k) for k in ("group", "edit", "heldout", "outcome",
                                                 "generalization", "heldout_in_scope", "note")}
                          for g in groups],
                "serve_seconds": round(served_seconds, 2),
                "night_seconds": round(night_seconds, 2),
            })
            fixed_earlier = _fixes(images, MODEL)
            row = rows[-1]
            failed = ", ".join(row["failed_checks"])
            log(f"  {variant.name} night {day + 1} ({kind}): {row['status']}, gate "
                f"{'passed' if row['gate_passed'] else 'failed: ' + failed}, applied "
                f"{row['groups_applied']}/{row['groups_collected']} groups, shown-shift errors "
                f"{sum(row['errors_before'].values())} -> {sum(row['errors_after'].values())}, "
                f"clean agreement {row['clean_agreement']:.3f}, {night_seconds:.0f} s")
    return rows
