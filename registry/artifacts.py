"""The files a run uploads, written to a local staging directory first.

Staging everything before the upload keeps the MLflow part short (one upload, then the two
model flavors) and gives a manifest of every file's sha256, which registration checks
against what the store really holds.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from vitedit_ops.export import file_sha256
from vitedit_ops.models import ModelSpec, save_model

from .record import GENERALIZATION, LOCALITY, EditRunRecord, GroupEdit, slug

GATE_JSON = "gate/gate_report.json"
GATE_MD = "gate/gate_report.md"
PLOTS = "plots"
GR_LR_PLOT = "plots/gr_lr.png"
CONFUSION_PLOT = "plots/confusion.png"
PATCHES = "patches"
WEIGHTS_DIR = "weights"
WEIGHTS = "weights/model.safetensors"
SPEC = "weights/model.json"
SUITE = "suite"
SUMMARY = "record.json"
DESCRIPTION = "description.md"
MANIFEST = "manifest.json"


def directory_sha256(path: str | Path) -> str:
    """Content hash of a directory: every file's relative path and sha256, in path order."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(root).as_posix()}={file_sha256(file)}\n".encode())
    return h.hexdigest()


def patch_file(index: int, group: GroupEdit) -> str:
    """``patches/00_3to8.safetensors``: the prefix keeps the application order."""
    return f"{PATCHES}/{index:02d}_{group.slug}.safetensors"


def mask_plot(weight_name: str) -> str:
    return f"{PLOTS}/mask_{slug(weight_name)}.png"


def write_weights(model: nn.Module, spec: ModelSpec, root: Path) -> None:
    """Full weights + timm spec: what ``loading.load_version`` rebuilds an editable model from."""
    save_model(model, spec, root / WEIGHTS)


def stage_edit(record: EditRunRecord, candidate_fingerprint: str, root: Path) -> list[str]:
    """Write every file of an edit run under ``root``; return the plot paths (relative)."""
    (root / "gate").mkdir(parents=True, exist_ok=True)
    (root / GATE_JSON).write_text(record.gate_report.to_json())
    (root / GATE_MD).write_text(record.gate_report.to_markdown())
    for i, group in enumerate(record.accepted_groups):
        group.patch.save(root / patch_file(i, group))
    write_weights(record.model, record.spec, root)
    if record.suite_dir is not None:
        copy_suite(Path(record.suite_dir), root)
    plot_paths = _stage_plots(record, root)
    (root / SUMMARY).write_text(json.dumps(summary(record, candidate_fingerprint), indent=2,
                                           sort_keys=True, default=str))
    return plot_paths


def _stage_plots(record: EditRunRecord, root: Path) -> list[str]:
    from . import plots  # matplotlib: only the commands that register an edit pay its import

    written = []
    accepted = record.accepted_groups
    weights: list[str] = []
    for group in accepted:
        for name in group.mask_scores or {}:
            if name not in weights:
                weights.append(name)
    for name in weights:
        scores = {g.key: g.mask_scores[name] for g in accepted
                  if g.mask_scores and name in g.mask_scores}
        kept = {g.key: g.kept_units[name] for g in accepted if name in g.kept_units}
        plots.mask_heatmap(name, scores, kept, root / mask_plot(name))
        written.append(mask_plot(name))

    points = [plots.BeforeAfter(g.key if g.accepted else f"{g.key} (not applied)",
                                _metric(g.before, GENERALIZATION), _metric(g.after, GENERALIZATION),
                                _metric(g.before, LOCALITY), _metric(g.after, LOCALITY))
              for g in record.groups]
    points.append(plots.BeforeAfter(
        "overall", _metric(record.metrics_before, GENERALIZATION),
        _metric(record.metrics_after, GENERALIZATION), _metric(record.metrics_before, LOCALITY),
        _metric(record.metrics_after, LOCALITY)))
    plots.gr_lr_plot(points, root / GR_LR_PLOT, **_gate_thresholds(record))
    written.append(GR_LR_PLOT)

    plots.confusion_plot(record.suite_labels, record.suite_predictions_before,
                         record.suite_predictions_after, record.spec.num_classes,
                         root / CONFUSION_PLOT, record.spec.class_names)
    written.append(CONFUSION_PLOT)
    return written


def _gate_thresholds(record: EditRunRecord) -> dict[str, float | None]:
    """The gate's GR and LR thresholds, drawn on the plot (None: the gate has no such check)."""
    found = {c.name: c.threshold for c in record.gate_report.checks}
    return {"gr_min": found.get(GENERALIZATION), "lr_min": found.get(LOCALITY)}


def _metric(values: dict[str, float], name: str) -> float:
    value = values.get(name)
    return math.nan if value is None else float(value)


def summary(record: EditRunRecord, candidate_fingerprint: str) -> dict[str, Any]:
    """The run in one JSON document (for people and scripts reading the artifacts)."""
    groups = []
    accepted_index = 0
    for group in record.groups:
        entry = {"key": group.key, "accepted": group.accepted, "outcome": group.outcome,
                 "success": group.success, "worker": group.worker,
                 "num_edit_images": group.num_edit_images,
                 "num_heldout_images": group.num_heldout_images, "steps": group.steps,
                 "seconds": group.seconds, "before": group.before, "after": group.after,
                 "note": group.note}
        if group.patch is not None:
            entry.update(patch_file=patch_file(accepted_index, group),
                         patch_sha256=group.patch.sha256(),
                         units_per_param=group.patch.units_per_param())
            accepted_index += 1
        groups.append(entry)
    return {"registered_model": record.registered_model,
            "parent_version": record.parent_version,
            "parent_fingerprint": record.parent_fingerprint,
            "base_version": record.base_version,
            "lineage_root_fingerprint": record.lineage_root_fingerprint,
            "fingerprint": candidate_fingerprint, "method": record.method,
            "settings": record.settings, "window": record.window, "groups": groups,
            "metrics_before": record.metrics_before, "metrics_after": record.metrics_after,
            "gate_passed": record.gate_report.passed, "suite_hash": record.suite_hash,
            "idempotency_key": record.key, "notes": record.notes}


def copy_suite(suite_dir: Path, root: Path) -> None:
    shutil.copytree(suite_dir, root / SUITE)


def write_manifest(root: Path) -> dict[str, str]:
    """sha256 of every staged file, written as ``manifest.json`` beside them."""
    manifest = {p.relative_to(root).as_posix(): file_sha256(p)
                for p in sorted(root.rglob("*")) if p.is_file()}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def missing_files(manifest: dict[str, str], stored: Iterable[tuple[str, int]],
                  root: Path) -> list[str]:
    """Manifest files that the store does not hold with the staged size."""
    sizes = dict(stored)
    return [path for path in manifest
            if sizes.get(path) != (root / path).stat().st_size]
