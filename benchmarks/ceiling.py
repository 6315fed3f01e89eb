"""How much of a shift one night's labelled images can teach: the ceiling under the gate.

The continual benchmark's nights fail because units do not generalize: a unit must fix half of
its held-out errors, and most fix a third. This benchmark asks whether any learner would,
on the same data. For each shift kind of the continual scenario it takes the first day that
kind is served (the same requests, the same base), holds out part of the base's errors, and
fits several learners on the rest plus the shift's confirmed-correct images:

- the product's scoped patch (``ScopedSettings()``: the recipe and the nearest scope the nightly
  ships, fitted against the lineage's preserved pool), at the product's held-out share and at
  half; the day's shifted images are one unit here, where the nightly would cluster them;
- full fine-tuning of the whole model on the same images plus as many clean replay images
  with the base's predictions as targets (the retraining peer's recipe), unscoped;
- a logistic-regression head on the base's pre-logits, trained on the same images: what
  retraining the classifier alone learns from them.

Each learner reports the share of its held-out errors it fixes (the gate's generalization),
the errors left on the kind's never-served evaluation images (what the continual benchmark
counts) and agreement with the base on clean never-served images. Outputs ``ceiling.json``
and ``ceiling.md``.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from torch import nn

from flows.config import ScopedSettings
from vitedit_ops.editors import ScopedEditor, create_editor
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.metrics import predict_logits
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.reference import Reference

from .continual.scenario import QUICK_DAYS, Scenario, World, as_served

GENERALIZATION_MIN = 0.5  # the unit floor (EditSettings.group_generalization_min)
FULL_FT = {"lr": 3e-5, "max_steps": 200, "ce_target": 0.05}  # the retraining peer's recipe
QUICK_STEPS = 20  # full fine-tuning's step limit in a --quick run
SCOPED = ScopedSettings()  # what the nightly flow ships for subpopulations
HELDOUT = SCOPED.heldout_fraction  # every learner's split but HALF's
PRODUCT = f"scoped patch (product, {HELDOUT:.0%} held out)"
HALF = "scoped patch, half held out"
RETRAIN = "full fine-tuning + clean replay, unscoped"
HEAD = "logistic head on the base's pre-logits, unscoped"
LEARNERS = (PRODUCT, HALF, RETRAIN, HEAD)


@dataclass(frozen=True)
class NightData:
    """One shift kind's first served day: model inputs and true classes."""

    kind: str
    edit: torch.Tensor
    edit_labels: torch.Tensor
    heldout: torch.Tensor
    heldout_labels: torch.Tensor
    evaluation: torch.Tensor
    evaluation_labels: torch.Tensor
    evaluation_errors: int  # the base's, on the never-served images


def night_data(world: World, day: int, model: nn.Module, normalize: Callable,
               heldout_fraction: float, seed: int) -> NightData:
    """The day's shifted requests: the base's errors split into edit and held-out (seeded),
    the confirmed-correct ones added to the edit images, as a night's unit holds them."""
    kind = world.scenario.days[day]
    shifted = [r for r in world.requests(day) if r.subpopulation == kind]
    pixels = as_served(torch.stack([r.pixels for r in shifted]))
    labels = torch.tensor([r.true_class for r in shifted])
    inputs = normalize(pixels)
    wrong = predict_logits(model, inputs).argmax(-1) != labels
    errors = torch.nonzero(wrong).flatten()
    errors = errors[torch.randperm(len(errors), generator=torch.Generator().manual_seed(seed))]
    held = errors[:int(round(len(errors) * heldout_fraction))]
    edit = torch.cat([errors[len(held):], torch.nonzero(~wrong).flatten()])
    evaluation, evaluation_labels = world.evaluation_set(kind)
    evaluation = normalize(evaluation)
    base_errors = int((predict_logits(model, evaluation).argmax(-1) != evaluation_labels).sum())
    return NightData(kind, inputs[edit], labels[edit], inputs[held], labels[held],
                     evaluation, evaluation_labels, base_errors)


def _scoped(model: nn.Module, hypernet: MaskHypernet, outside: torch.Tensor,
            data: NightData) -> Callable[[torch.Tensor], torch.Tensor]:
    # the scope and the recipe inside it as the nightly flow builds them (flows/edits.py)
    inner = create_editor(SCOPED.method, hypernet=hypernet, **SCOPED.editor_options())
    editor = ScopedEditor(inner=inner, window=hypernet.window(model), outside=outside,
                          rule=SCOPED.rule, margin=SCOPED.margin,
                          avoid_earlier=SCOPED.avoid_earlier, radius_scale=SCOPED.radius_scale)
    edited = copy.deepcopy(model)
    editor.edit(edited, data.edit, data.edit_labels).patch.apply(edited)
    return lambda x: predict_logits(edited, x).argmax(-1)


def _retrained(model: nn.Module, replay: torch.Tensor, data: NightData, steps: int
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    clean = replay[:len(data.edit)]
    images = torch.cat([data.edit, clean])
    labels = torch.cat([data.edit_labels, predict_logits(model, clean).argmax(-1)])
    edited = copy.deepcopy(model)
    editor = create_editor("full_ft", **{**FULL_FT, "max_steps": steps})
    editor.edit(edited, images, labels).patch.apply(edited)
    return lambda x: predict_logits(edited, x).argmax(-1)


def _head(model: nn.Module, data: NightData) -> Callable[[torch.Tensor], torch.Tensor]:
    from sklearn.linear_model import LogisticRegression

    @torch.no_grad()
    def features(x: torch.Tensor) -> np.ndarray:
        model.eval()
        return model.forward_head(model.forward_features(x), pre_logits=True).cpu().numpy()

    clf = LogisticRegression(C=1.0, max_iter=2000).fit(features(data.edit),
                                                       data.edit_labels.numpy())
    return lambda x: torch.as_tensor(clf.predict(features(x)))


def measure(predict: Callable[[torch.Tensor], torch.Tensor], data: NightData,
            clean: torch.Tensor, clean_base: torch.Tensor) -> dict[str, Any]:
    after_eval = predict(data.evaluation)
    fixed = (predict(data.heldout) == data.heldout_labels).float().mean() \
        if len(data.heldout) else torch.tensor(float("nan"))
    return {"edit_images": len(data.edit), "heldout_errors": len(data.heldout),
            "heldout_fixed": float(fixed),
            "eval_errors_before": data.evaluation_errors,
            "eval_errors_after": int((after_eval != data.evaluation_labels).sum()),
            "clean_agreement": float((predict(clean) == clean_base).float().mean())}


def run_ceiling(reference: Reference, hypernet: MaskHypernet, quick: bool = False,
                seed: int = 0, learners: tuple[str, ...] = LEARNERS,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every learner on every shift kind's first served day; returns the results."""
    started = time.perf_counter()
    model = reference.model.eval()
    normalize = Preprocessor(reference.spec).normalize
    scenario = Scenario(days=QUICK_DAYS, seed=seed) if quick else Scenario(seed=seed)
    world = World.build(reference.data, scenario)
    outside = normalize(reference.data.preserved.pixels)
    clean = normalize(world.clean_eval.pixels)
    clean_base = predict_logits(model, clean).argmax(-1)
    rows = []
    for kind in scenario.kinds:
        day = scenario.days.index(kind)
        splits = {fraction: night_data(world, day, model, normalize, fraction, seed)
                  for fraction in {HELDOUT, 0.5}}  # one per split, shared by the learners
        for learner in learners:
            data = splits[0.5 if learner == HALF else HELDOUT]
            t = time.perf_counter()
            if learner in (PRODUCT, HALF):
                predict = _scoped(model, hypernet, outside, data)
            elif learner == RETRAIN:
                predict = _retrained(model, outside, data,
                                     QUICK_STEPS if quick else FULL_FT["max_steps"])
            else:
                predict = _head(model, data)
            row = {"kind": kind, "learner": learner,
                   **measure(predict, data, clean, clean_base),
                   "seconds": round(time.perf_counter() - t, 2)}
            log(f"ceiling: {kind} / {learner}: fixes {row['heldout_fixed']:.0%} of "
                f"{row['heldout_errors']} held-out errors, never-served errors "
                f"{row['eval_errors_before']} -> {row['eval_errors_after']}")
            rows.append(row)
    return {"created": datetime.now(UTC).isoformat(timespec="seconds"), "quick": quick,
            "seed": seed, "scenario": scenario.to_dict(), "rows": rows,
            "summary": summarize(rows), "generalization_min": GENERALIZATION_MIN,
            "machine": {"platform": platform.platform(), "torch_threads":
                        torch.get_num_threads()},
            "seconds": round(time.perf_counter() - started, 1)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per learner: kinds reaching the unit floor, mean held-out share fixed, errors left."""
    out = {}
    for learner in dict.fromkeys(r["learner"] for r in rows):
        mine = [r for r in rows if r["learner"] == learner]
        before = sum(r["eval_errors_before"] for r in mine)
        after = sum(r["eval_errors_after"] for r in mine)
        out[learner] = {
            "kinds": len(mine),
            "kinds_at_floor": sum(r["heldout_fixed"] >= GENERALIZATION_MIN for r in mine),
            "mean_heldout_fixed": float(np.mean([r["heldout_fixed"] for r in mine])),
            "eval_errors_before": before, "eval_errors_after": after,
            "eval_error_reduction": (before - after) / before if before else 0.0,
            "min_clean_agreement": min(r["clean_agreement"] for r in mine)}
    return out


def markdown(results: dict[str, Any]) -> str:
    """The ceiling section of docs/BENCHMARKS.md."""
    rows, summary = results["rows"], results["summary"]
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    lines = [
        "## Generalization ceiling: what one night's images can teach", "",
        f"`vitedit-ops bench --ceiling` on {results['created']} ({results['seconds'] / 60:.1f}"
        f" min; {results['machine']['platform']}, torch threads "
        f"{results['machine']['torch_threads']}). Each shift kind's first served day of the "
        "continual scenario: the base's errors split into edit and held-out images, the "
        "confirmed-correct shifted images added to the edit images, the whole shift one unit "
        "(the nightly clusters it into subpopulations); every learner sees the "
        "same images. `fixed` is the share of held-out errors a learner fixes (a unit ships "
        f"at >= {results['generalization_min']:.0%}); `errors` are those left on the kind's "
        "never-served evaluation images. The head is fitted on shifted images alone and "
        "applied to every input: its clean agreement says what it would do without a scope.",
        "",
        "| learner | kinds at the unit floor | mean held-out fixed | never-served errors "
        "| reduction | clean agreement (min) |", "|---|---:|---:|---:|---:|---:|"]
    for learner, s in summary.items():
        lines.append(f"| {learner} | {s['kinds_at_floor']}/{s['kinds']} | "
                     f"{s['mean_heldout_fixed']:.2f} | {s['eval_errors_before']} -> "
                     f"{s['eval_errors_after']} | {s['eval_error_reduction']:.1%} | "
                     f"{s['min_clean_agreement']:.3f} |")
    lines += ["", "Held-out share fixed per kind (held-out errors in brackets):", "",
              "| learner | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for learner in summary:
        cells = []
        for kind in kinds:
            r = next(r for r in rows if r["learner"] == learner and r["kind"] == kind)
            cells.append(f"{r['heldout_fixed']:.2f} ({r['heldout_errors']})")
        lines.append(f"| {learner} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
