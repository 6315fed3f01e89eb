"""Turn a night's outcomes into the registry's :class:`~registry.record.EditRunRecord`."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from registry.record import GENERALIZATION, LOCALITY, EditRunRecord
from vitedit_ops.export import ExportResult
from vitedit_ops.gate import GateConfig, GateReport
from vitedit_ops.metrics import predict_logits

from .combine import Combination
from .config import EditSettings
from .lineage import ChampionContext
from .preserved import PreservedPool

ACCURACY = "suite_accuracy"


def build_record(context: ChampionContext, combination: Combination, report: GateReport,
                 onnx: ExportResult, suite_dir: Path | None, key: str, settings: EditSettings,
                 gate: GateConfig, preserved: PreservedPool | None = None) -> EditRunRecord:
    """Everything the registry logs: applied patches in order, every group's metrics, and
    the preserved pool the edits kept (by hash)."""
    groups = [replace(o.edit, before=_finite(o.edit.before), after=_finite(o.edit.after))
              for o in combination.outcomes]
    suite = context.suite
    after = predict_logits(combination.model, suite.inputs(suite.pixels)).argmax(-1)
    heldout = [(o.images.heldout_pixels, o.images.heldout_labels)
               for o, _ in combination.applied if o.images is not None]
    start, end = context.hypernet.config.window
    return EditRunRecord(
        registered_model=context.ref.name, parent_version=context.ref.version,
        parent_fingerprint=context.info.fingerprint, base_version=context.info.base_version,
        lineage_root_fingerprint=context.root_fingerprint, method=settings.method,
        settings={**settings.model_dump(), **{f"gate.{k}": v for k, v in gate.to_dict().items()}},
        window=f"{start}-{end}", groups=groups,
        metrics_before=_overall(context, context.model, context.suite_predictions, heldout),
        metrics_after=_overall(context, combination.model, after, heldout),
        gate_report=report, model=combination.model, spec=context.spec,
        suite_labels=suite.labels, suite_predictions_before=context.suite_predictions,
        suite_predictions_after=after, onnx=onnx, suite_dir=suite_dir, idempotency_key=key,
        notes=f"Drift from the lineage root: {context.drift.summary()}.",
        preserved_hashes=preserved.hashes if preserved is not None else (),
        preserved_labels=tuple(preserved.labels.tolist()) if preserved is not None else ())


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if not math.isnan(v)}


def _overall(context: ChampionContext, model: nn.Module, suite_predictions: torch.Tensor,
             heldout: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Generalization on the applied groups' held-out images, locality and accuracy on the
    suite's clean images (vs the champion)."""
    suite = context.suite
    metrics = {LOCALITY: float((suite_predictions == context.suite_predictions).float().mean())}
    known = suite.labelled
    if known.any():
        metrics[ACCURACY] = float((suite_predictions[known] == suite.labels[known]).float().mean())
    pixels = [p for p, _ in heldout if len(p)]
    if pixels:
        labels = torch.cat([y for p, y in heldout if len(p)])
        predictions = predict_logits(model, suite.inputs(torch.cat(pixels))).argmax(-1)
        metrics[GENERALIZATION] = float((predictions == labels).float().mean())
    return metrics
