"""``vitedit-ops bench``: the edit benchmark, sequential editing and cost, in one run.

Writes ``results.json`` (everything, with machine, versions, seed and command), ``rows.csv``
(one row per edit; ``rows.jsonl`` grows while the grid runs, see journal.py),
``sequential.csv``, the Pareto and sequential plots, and a markdown report (``BENCHMARKS.md``)
that the full run also copies into its section of ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import csv
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

import torch

from vitedit_ops.edit_cases import make_cases
from vitedit_ops.editors import updater_kind
from vitedit_ops.hypernet import MaskHypernet
from vitedit_ops.learned_update import UpdateNet
from vitedit_ops.preprocess import Preprocessor
from vitedit_ops.reference import Reference
from vitedit_ops.reference.updaters import reference_updater

from .cost import (edit_flops_ratios, edit_seconds_ratios, flops_per_iteration,
                   iteration_time_ratio, metatrain_seconds, metatrain_speedup,
                   peak_memory_ratio, vit_b16_edit_flops, vit_b16_flops)
from .frontier import matched_comparison, point_means
from .grid import MethodPoint, run_grid
from .journal import JOURNAL, RowJournal, job_key
from .plots import pareto_plot, sequential_plot
from .sequential import run_sequential
from .setting import EditorArgs, build_setting, method_grid, select_families

BENCHMARK_GROUP = "vitedit_ops.benchmarks"
PRODUCT = "localized (product)"
PAPER = "localized (paper)"
THRESHOLDS = (0.995, 0.99, 0.95, 0.90)  # the gate works at 0.99


# (full, --quick) sizes: paired edit cases, and groups edited in a row by sequential editing
CASES = (60, 6)
SEQUENTIAL_EDITS = (20, 3)


@dataclass
class BenchConfig:
    quick: bool = False
    cases: int | None = None  # None: 60, or 6 when quick
    group_k: int = 4
    sequential_edits: int | None = None  # None: 20, or 3 when quick
    seed: int = 0
    include_cost: bool = True
    include_components: bool = True
    workers: int = 1
    resume: bool = False  # skip the grid jobs an earlier run in the same directory finished
    families: tuple[str, ...] = ()  # method families to run (all when empty)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("vitedit-ops", "torch", "timm", "onnxruntime", "mlflow", "prefect"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(),
            "cpus": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def run_benchmark(reference: Reference, hypernet: MaskHypernet, config: BenchConfig,
                  out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything and write the outputs; returns the results dictionary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = reference.model
    setting = build_setting(model, reference.spec, reference.data)
    window = tuple(hypernet.config.window)
    count = config.cases if config.cases is not None else CASES[config.quick]
    cases = make_cases(setting.evals.groups, config.group_k, count, seed=config.seed)
    selected = select_families(config.families)
    points = method_grid(config.quick, selected)
    ks = [1, config.group_k]
    log(f"{setting.pools['groups']} error groups, {len(cases)} paired cases, "
        f"{len(points)} method points x k={ks}: {len(cases) * len(points) * len(ks)} edits")
    header = {"reference": reference.card.fingerprint, "seed": config.seed,
              "cases": [[c.group, list(c.edit_idx), c.split] for c in cases], "ks": ks,
              "quick": config.quick, "product_defaults": product_defaults(),
              "version": _versions().get("vitedit-ops")}
    journal = RowJournal(out_dir / JOURNAL, header, resume=config.resume)
    if journal.completed:
        log(f"resuming: {len(journal.completed)} finished jobs read from {journal.path}")
    total, done, last_logged = len(points) * len(ks), [0], [0.0]

    def on_job(point: MethodPoint, k: int, job_rows: list[dict[str, Any]]) -> None:
        journal.record(job_key(point, k), job_rows)
        done[0] += 1
        if done[0] == total or time.perf_counter() - last_logged[0] > 60:
            last_logged[0] = time.perf_counter()
            log(f"  jobs {done[0]}/{total} run ({time.perf_counter() - started:.0f} s)")

    preserved = Preprocessor(reference.spec).normalize(reference.data.preserved.pixels)
    extra = EditorArgs(hypernet, preserved, _updaters(reference, points, config.quick, log))
    try:
        rows = run_grid(model, points, cases, ks, setting.evals, extra, on_job,
                        workers=config.workers,
                        completed=lambda p, k: journal.completed.get(job_key(p, k)))
    finally:
        journal.close()
    families = sorted({p.family for p in points})
    baselines = [f.name for f in selected if not f.ablation]
    comparisons = [matched_comparison(rows, families, k, t, PRODUCT, baselines=baselines)
                   for k in ks for t in THRESHOLDS]
    paper_comparisons = [matched_comparison(rows, families, k, t, PAPER, baselines=baselines)
                         for k in ks for t in THRESHOLDS]

    sequential_rows = _sequential(reference.model, setting, comparisons, config, extra, log,
                                  selected)
    results: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in sys.argv), "quick": config.quick,
        "seed": config.seed, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "versions": _versions(), "setting": setting.pools,
        "sensitive_rule": setting.sensitive_rule, "window": list(window),
        "product_defaults": product_defaults(), "cases": len(cases), "ks": ks,
        "families": [f.name for f in selected],
        "ablations": [f.name for f in selected if f.ablation],
        "points": {"|".join(map(str, k)): v for k, v in point_means(rows).items()},
        "comparisons": comparisons, "paper_comparisons": paper_comparisons,
        "sequential": _sequential_summary(sequential_rows),
        "reference": {"fingerprint": reference.card.fingerprint,
                      "accuracy": reference.card.accuracy},
    }
    if config.include_cost:
        log("cost: iteration time, FLOPs, meta-training speedup, memory")
        results["cost"] = _cost(reference, hypernet, config.quick, extra.updaters)
    if config.include_components:
        results["components"] = _components(config.quick, log)
    results["seconds"] = time.perf_counter() - started
    _write(out_dir, results, rows, sequential_rows, ks)
    return results


def _operating_point(comparisons: list[dict[str, Any]], family: str, k: int,
                     threshold: float = 0.90) -> dict[str, Any] | None:
    for c in comparisons:
        if c["k"] == k and c["threshold"] == threshold:
            return c["methods"].get(family, {}).get("point")
    return None


def product_defaults() -> dict[str, Any]:
    """What "localized (product)" runs: the product recipe the nightly flow runs."""
    from vitedit_ops.editors import PRODUCT

    return {"method": PRODUCT.method, **PRODUCT.options}


SEQUENTIAL_FAMILIES = (PRODUCT, PAPER, "random mask", "random mask + product options",
                       "localized, previous default", "window FT", "FT-L2", "LoRA", "KN", "ROME",
                       "ROME+LoRA", "T-Patcher", "GRACE", "SERAC", "KE", "MEND")


def _sequential(model, setting, comparisons, config: BenchConfig, extra, log, selected
                ) -> list[dict[str, Any]]:
    """Each family at its LR >= 0.90 operating point (group edits), groups in a row."""
    groups = [g for g in setting.evals.groups if len(g.inputs) >= config.group_k]
    edits = config.sequential_edits
    groups = groups[: edits if edits is not None else SEQUENTIAL_EDITS[config.quick]]
    families = {f.name: f for f in selected}
    rows: list[dict[str, Any]] = []
    for name in (n for n in SEQUENTIAL_FAMILIES if n in families):
        point = _operating_point(comparisons, name, config.group_k)
        if point is None:
            log(f"sequential: {name} has no point with LR >= 0.90, skipped")
            continue
        family = families[name]
        chosen = next(p for p in method_grid(config.quick, (family,))
                      if p.knob == point["knob"] and p.lr == point["lr"])
        log(f"sequential: {name} ({point['knob']}, lr {point['lr']:g})")
        rows += run_sequential(model, name, lambda c=chosen: c.build(extra(c)), groups,
                               setting.evals, k=config.group_k)
    return rows


def _sequential_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for family in sorted({r["family"] for r in rows}):
        items = [r for r in rows if r["family"] == family]
        last = items[-1]
        out[family] = {"edits": len(items), "accepted": last["accepted"],
                       "final_earlier_retention": last["earlier_retention"],
                       "final_locality": last["locality"],
                       "final_max_norm_growth": last["max_norm_growth"],
                       "mean_newest_reliability": sum(r["newest_reliability"] for r in items)
                       / len(items)}
    return out


QUICK_UPDATER_ITERATIONS = 30


def _updaters(reference: Reference, points: list[MethodPoint], quick: bool,
              log: Callable[[str], None]) -> dict[str, UpdateNet]:
    """The cached (or now meta-trained) update network of every learned editor in the grid
    (a quick run's are meta-trained briefly: structure, not quality)."""
    out = {}
    for editor in sorted({p.editor for p in points if updater_kind(p.editor)}):
        log(f"meta-training (or loading) the reference {editor} update network ...")
        out[editor] = reference_updater(reference, updater_kind(editor),
                                        iterations=QUICK_UPDATER_ITERATIONS if quick else None)
    return out


def _cost(reference: Reference, hypernet: MaskHypernet, quick: bool,
          updaters: dict[str, UpdateNet]) -> dict[str, Any]:
    model = reference.model
    pre = Preprocessor(reference.spec)
    images = pre.normalize(reference.data.locality.pixels[:4])
    labels = reference.data.locality.labels[:4]
    localized = {"hypernet": hypernet, "keep_fraction": 0.1}
    cost: dict[str, Any] = {
        "iteration_time_batch1": iteration_time_ratio(model, images[:1], labels[:1], localized,
                                                      steps=10 if quick else 30,
                                                      repeats=1 if quick else 3),
        "iteration_time_batch4": iteration_time_ratio(model, images, labels, localized,
                                                      steps=10 if quick else 30,
                                                      repeats=1 if quick else 3),
        "reference_flops": flops_per_iteration(model, images[:1], labels[:1]),
        "reference_edit_flops": edit_flops_ratios(
            model, images[:1], labels[:1], pre.normalize(reference.data.preserved.pixels),
            hypernet, updaters=updaters),
        "reference_edit_seconds": edit_seconds_ratios(
            model, images[:1], labels[:1], pre.normalize(reference.data.preserved.pixels),
            hypernet, updaters=updaters, repeats=1 if quick else 3),
        "metatrain_seconds": metatrain_seconds(reference, updaters),
        "metatrain": metatrain_speedup(model, pre.normalize(reference.data.train.pixels),
                                       iterations=1 if quick else 4),
    }
    if not quick:
        cost["vit_b16_flops"] = vit_b16_flops()
        cost["vit_b16_edit_flops"] = vit_b16_edit_flops()
        cost["peak_memory"] = peak_memory_ratio()
        cost["peak_memory_reference"] = peak_memory_ratio("vit_tiny_patch16_224", batch=64)
    return cost


def _components(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Benchmarks other packages contribute through the ``vitedit_ops.benchmarks`` entry
    points (monitoring ingest/collector, gate/ONNX Runtime), each isolated from the others."""
    out: dict[str, Any] = {}
    for ep in sorted(entry_points(group=BENCHMARK_GROUP), key=lambda e: e.name):
        log(f"component benchmark: {ep.name}")
        try:
            out[ep.name] = ep.load()(quick=quick)
        except Exception as exc:  # one component failing must not lose the others' figures
            out[ep.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _write(out_dir: Path, results: dict[str, Any], rows: list[dict[str, Any]],
           sequential_rows: list[dict[str, Any]], ks: list[int]) -> None:
    from .report import markdown_report

    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    for name, items in (("rows.csv", rows), ("sequential.csv", sequential_rows)):
        if items:
            with open(out_dir / name, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(items[0]))
                writer.writeheader()
                writer.writerows(items)
    pareto_plot(rows, out_dir / "pareto.png", ks)
    if sequential_rows:
        sequential_plot(sequential_rows, out_dir / "sequential.png")
    (out_dir / "BENCHMARKS.md").write_text(markdown_report(results, image_dir="."))
