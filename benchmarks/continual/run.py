"""``vitedit-ops bench --continual``: the product's scoreboard, many nights of the real loop.

Writes ``continual.json`` (every night of every variant, the summary, scenario, machine and
command), ``continual.md`` (the report docs/BENCHMARKS.md carries) and the plot of errors per
shift over the nights; the full run also copies them into ``docs/``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.reference import Reference

from ..run import QUICK_UPDATER_ITERATIONS
from .driver import Variant, run_variant
from .report import markdown, plot, summarize
from .scenario import QUICK_DAYS, Scenario, World

PRODUCT = "product"
RETRAIN = {"strategy": "retrain", "subpopulations": False, "min_group_size": 1,
           "max_groups": None, "max_edit_images": None,
           "group_locality_min": 0.0, "group_retention_min": 0.0}
# a retraining pipeline ships when clean accuracy holds (and the export matches): it promises
# no edit image, no held-out share and no unchanged prediction in particular
RETRAIN_GATE = {"reliability_min": 0.0, "generalization_min": 0.0, "locality_min": 0.0,
                "sensitive_min": 0.0, "retention_min": 0.0, "norm_growth_max": 1000.0}
# every lever of the product switched off (or swapped) one at a time, and the peers
VARIANTS: tuple[Variant, ...] = (
    Variant(PRODUCT, note="the nightly flow's defaults (EditSettings())"),
    Variant("no scopes: (true, predicted) groups only", {"subpopulations": False},
            note="the product before subpopulations and scopes: null-space pair edits"),
    Variant("scopes, a quarter of the window units", {"scoped": {"keep_fraction": 0.25}},
            note="the hypernetwork's quarter of the window units inside each scope (the "
                 "product edits every unit there)"),
    Variant("scopes, random mask", {"scoped": {"method": "random_mask", "keep_fraction": 0.25}},
            note="a quarter of the window units inside the scope, chosen at random"),
    Variant("scopes, jittered copies", {"scoped": {"jitter_copies": 4}},
            note="four jittered copies of every subpopulation image in the scoped edit"),
    Variant("scopes, half held out", {"scoped": {"heldout_fraction": 0.5}},
            note="the product before a quarter: half of a subpopulation's errors edited, "
                 "half held out to judge it"),
    Variant("scopes, six units a night", {"scoped": {"max_units": 6}},
            note="the six largest subpopulations edited each night (the product: four)"),
    Variant("scopes, large clusters not split", {"scoped": {"max_unit_errors": None}},
            note="one unit per cluster however large (the product splits a cluster of more "
                 "than 40 errors into ceil(n / 40) tighter units, each with its own scope)"),
    Variant("scopes, the previous default",
            {"scoped": {"keep_fraction": 0.25, "max_unit_errors": None}},
            note="the product before both levers: the hypernetwork's quarter of the units, "
                 "clusters never split"),
    Variant("scopes, clusters per serving day", {"scoped": {"cluster_per_day": True}},
            note="each serving day's errors clustered on their own, so a shift that arrived "
                 "tonight is not merged with earlier nights' leftovers"),
    Variant("scopes, clusters per serving day, never split",
            {"scoped": {"cluster_per_day": True, "max_unit_errors": None}},
            note="each serving day's errors clustered on their own and no cluster split: a "
                 "day's shift as one unit, the nearest the loop comes to the ceiling's unit"),
    Variant("scopes, clusters cut at 3x", {"scoped": {"cluster_scale": 3.0}},
            note="clusters cut at three times their median nearest-neighbour distance (the "
                 "product: two), so a shift forms fewer, larger units"),
    Variant("scopes, clusters per serving day cut at 4x, never split",
            {"scoped": {"cluster_per_day": True, "cluster_scale": 4.0,
                        "max_unit_errors": None}},
            note="each serving day's errors clustered on their own, cut at four times the "
                 "median nearest-neighbour distance and never split: a day's shift as one "
                 "unit, as the ceiling benchmark fits it"),
    Variant("scopes, logistic router", {"scoped": {"rule": "router"}},
            note="a linear router instead of the nearest-neighbour rule"),
    Variant("scopes without a radius", {"scoped": {"radius_scale": None}},
            note="the product before the radius: the nearest-ratio rule alone, which covers "
                 "inputs far from every clean image (later, unrelated shifts)"),
    Variant("scopes, earlier patches not avoided", {"scoped": {"avoid_earlier": False}},
            note="new scopes not trained to keep earlier patches' images out"),
    Variant("scopes, the night's other units not avoided",
            {"scoped": {"avoid_neighbours": False}},
            note="new scopes not trained to keep the same night's other units' images out"),
    Variant("scopes, a ratio per patch image", {"scoped": {"per_key_ratio": True}},
            note="nearest rule with each patch image's own ratio: a clean image near one edge "
                 "of a large subpopulation no longer shrinks the whole scope"),
    Variant("localized (paper), groups only",
            {"subpopulations": False, "null_space_energy": 0.0, "jitter_copies": 0,
             "ce_target": 0.01, "preserve": False},
            note="the paper's editor: no preserved pool, no confinement, CE <= 0.01"),
    Variant("retrain: full fine-tuning", {**RETRAIN, "method": "full_ft", "lr": 3e-5,
                                          "ce_target": 0.05, "max_steps": 200}, RETRAIN_GATE,
            note="the peer: full FT on the night's labelled images + replay of clean ones, "
                 "shipped when clean accuracy holds (accuracy_drop <= 0.5 points)"),
    Variant("retrain: LoRA", {**RETRAIN, "method": "lora", "lr": 1e-3, "ce_target": 0.05,
                              "max_steps": 200}, RETRAIN_GATE,
            note="the peer with LoRA on the edit window, gated as the full-FT peer"),
    Variant("SERAC: scope + counterfactual classifier",
            {"method": "serac", "lr": 1e-2, "max_steps": 200, "ce_target": 0.05,
             "scoped": {"method": "serac", "lr": 1e-2, "max_steps": 200, "ce_target": 0.05}},
            note="every unit a SERAC memory entry (editors/serac.py): the product's scope rule "
                 "at the window input, a fine-tuned copy of the classifier inside it"),
    Variant("KE: learned update, pair edits",
            {"subpopulations": False, "method": "ke", "lr": 0.5, "max_steps": 3,
             "ce_target": 0.5},
            note="(true, predicted) groups only, each edited by the reference KE network "
                 "(editors/ke.py) near its single-edit LR >= 0.99 points (lr 0.5, up to 3 "
                 "steps, stopping at the product's CE <= 0.5)"),
    Variant("MEND: learned update, pair edits",
            {"subpopulations": False, "method": "mend", "lr": 0.5, "max_steps": 3,
             "ce_target": 0.5},
            note="the same with the reference MEND network (editors/mend.py)"),
    # the paper's other baselines as the nightly would run them: one edit per (true,
    # predicted) group, each method at its own single-edit point nearest LR >= 0.99 (the quick
    # run in docs/frontier.md), with the product's step limit and stop (CE <= 0.5)
    Variant("KN: attributed units, pair edits",
            {"subpopulations": False, "method": "kn", "lr": 1e-3, "keep_fraction": 0.1,
             "null_space_energy": 0.0, "jitter_copies": 0},
            note="knowledge neurons (editors/kn.py): integrated-gradients attribution picks "
                 "the window units, a masked fine-tune edits them; no confinement, no jitter"),
    Variant("ROME: rank-one fc2 update, pair edits",
            {"subpopulations": False, "method": "rome", "lr": 3e-2},
            note="ROME (editors/rome.py) at the window's middle block, key covariance from "
                 "the preserved pool, value norm clamped"),
    Variant("ROME+LoRA, pair edits",
            {"subpopulations": False, "method": "rome_lora", "lr": 1e-3},
            note="ROME's site with a LoRA update instead of the rank-one solve "
                 "(editors/rome_lora.py)"),
    Variant("T-Patcher: added neurons, pair edits",
            {"subpopulations": False, "method": "t_patcher", "lr": 3e-2},
            note="T-Patcher (editors/t_patcher.py): one neuron per group added to the last "
                 "window FFN, trained to fire on its images only; patches stack night after "
                 "night"),
    Variant("GRACE: codebook routing, pair edits",
            {"subpopulations": False, "method": "grace", "lr": 3e-2},
            note="GRACE (editors/grace.py): a codebook of keys at the last window FFN's "
                 "input with a deferral radius; what routing alone achieves"),
    Variant("scopes, KE inside",
            {"scoped": {"method": "ke", "lr": 2.0, "max_steps": 3, "ce_target": 0.05}},
            note="the product with the reference KE network as the editor inside each scope "
                 "(lr 2 times its learned step, up to 3 steps, CE <= 0.05 as the product's "
                 "scoped recipe): the scope keeps locality, KE is asked to generalize in it"),
    Variant("scopes, MEND inside",
            {"scoped": {"method": "mend", "lr": 2.0, "max_steps": 3, "ce_target": 0.05}},
            note="the same with the reference MEND network inside each scope"),
    Variant("earlier fixes protected", {"protect_fixes": True},
            note="the suite's retention images (earlier nights' fixed edit images) weigh as "
                 "much as the whole preserved pool in each pair edit's null-space confinement"),
    Variant("no unit generalization checks", {"group_generalization_min": 0.0,
                                              "group_min_heldout": 0},
            note="units are applied whatever share of their held-out errors they fix"),
    Variant("unit floor without a held-out minimum", {"group_min_heldout": 0},
            note="a unit with 2 held-out images passes the 50% floor with one of them"),
)
QUICK_EDIT = {"max_groups": 2, "max_steps": 30}


@dataclass
class ContinualConfig:
    quick: bool = False
    variants: tuple[str, ...] = ()       # names (all when empty)
    seed: int = 0
    scenario: Scenario | None = None     # default: the full or the quick scenario
    extra_variants: tuple[Variant, ...] = field(default_factory=tuple)

    def chosen(self) -> list[Variant]:
        known = {v.name: v for v in (*VARIANTS, *self.extra_variants)}
        if not self.variants:
            return list(known.values()) if not self.quick else [known[PRODUCT]]
        unknown = [n for n in self.variants if n not in known]
        if unknown:
            raise InvalidInputError(f"unknown continual variant(s) {', '.join(unknown)}; "
                                    f"available: {', '.join(known)}")
        return [known[n] for n in self.variants]

    def world_scenario(self) -> Scenario:
        if self.scenario is not None:
            return self.scenario
        if self.quick:
            return Scenario(days=QUICK_DAYS, clean_per_day=60, shifted_per_day=60,
                            seed=self.seed)
        return Scenario(seed=self.seed)


def run_continual(reference: Reference, reference_dir: Path, hypernet: MaskHypernet,
                  config: ContinualConfig, out_dir: Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every chosen variant through the scenario; write and return the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    scenario = config.world_scenario()
    world = World.build(reference.data, scenario)
    nights: dict[str, list[dict[str, Any]]] = {}
    for variant in config.chosen():
        edit = {**(QUICK_EDIT if config.quick else {}), **variant.edit}
        variant = Variant(variant.name, edit, variant.gate, variant.note)
        log(f"continual: {variant.name} ({variant.note or 'edit ' + json.dumps(edit)})")
        nights[variant.name] = run_variant(
            reference, reference_dir, hypernet, world, variant, out_dir, log,
            updater_iterations=QUICK_UPDATER_ITERATIONS if config.quick else None)
        # after every variant: a run stopped later keeps the variants it finished
        write_results(_results(config, scenario, reference, nights, started), out_dir)
    return write_results(_results(config, scenario, reference, nights, started), out_dir)


def _results(config: ContinualConfig, scenario: Scenario, reference: Reference,
             nights: dict[str, list[dict[str, Any]]], started: float) -> dict[str, Any]:
    return {
        "command": " ".join(shlex.quote(a) for a in sys.argv), "quick": config.quick,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch threads "
                   f"{torch.get_num_threads()}, CUDA "
                   f"{'yes' if torch.cuda.is_available() else 'no'}",
        "scenario": scenario.to_dict(),
        "variants": {v.name: {"edit": v.edit, "gate": v.gate, "note": v.note}
                     for v in config.chosen() if v.name in nights},
        "reference": {"fingerprint": reference.card.fingerprint},
        "summary": {name: summarize(rows) for name, rows in nights.items()},
        "nights": nights,
        "seconds": time.perf_counter() - started,
    }


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``continual.json``, ``continual.md`` and the plot in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "continual.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, out_dir / "img" / "continual-errors.png")
    (out_dir / "continual.md").write_text(markdown(results))
    return results


def merge_results(run_dirs: list[Path]) -> dict[str, Any]:
    """One report from runs made separately (variants run in parallel processes): refused
    unless every run played the same scenario on the same reference model. Their wall times
    were measured under each other's load: compare them within a run, not across."""
    if not run_dirs:
        raise InvalidInputError("nothing to merge: name the continual runs' directories")
    runs = []
    for directory in run_dirs:
        path = directory / "continual.json"
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path}: not a finished continual run ({exc})") from exc
    first = runs[0]
    for directory, run in zip(run_dirs, runs):
        for key in ("scenario", "reference", "quick"):
            if run[key] != first[key]:
                raise InvalidInputError(f"{directory} ran another {key} than {run_dirs[0]}: "
                                        "runs of different worlds cannot share a table")
    merged = {**first, "command": " ; ".join(dict.fromkeys(r["command"] for r in runs)),
              "created": max(r["created"] for r in runs),
              "seconds": sum(r["seconds"] for r in runs),
              "merged_from": [str(d) for d in run_dirs],
              "variants": {}, "summary": {}, "nights": {}}
    for run in runs:
        for part in ("variants", "summary", "nights"):
            merged[part].update(run[part])
    return merged
