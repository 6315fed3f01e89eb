"""Run every gate check on a candidate model and return the :class:`GateReport`.

Each check runs in its own guard: an exception inside one makes that check fail with the error
text and the others still run, so a report always explains everything that was wrong.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from ..models import fingerprint
from .checks import CHECKS, Check, GateContext, GateInputs
from .config import GateConfig
from .report import CheckResult, GateReport
from .suite import Suite


def run_gate(base_model: nn.Module, candidate_model: nn.Module, suite: Suite,
             config: GateConfig | None = None,
             edit_images: torch.Tensor | None = None, edit_labels: torch.Tensor | None = None,
             heldout_images: torch.Tensor | None = None,
             heldout_labels: torch.Tensor | None = None,
             onnx_path: str | Path | None = None, edited_params: Sequence[str] | None = None,
             *, lineage_fingerprint: str | None = None,
             preserved_hashes: Sequence[str] | None = None) -> GateReport:
    """Gate ``candidate_model`` (an edit of ``base_model``) on ``suite``.

    Images are pixels in [0, 1] at the model's input size (the suite's spec normalises them,
    as it did at build time). Without ``onnx_path`` the gate exports the candidate itself, so
    parity always runs; pass the file you will ship to gate exactly that file. The suite must
    belong to the lineage: ``lineage_fingerprint`` (the lineage's first base, for a descendant)
    or else ``base_model``'s own fingerprint must be the suite's base, otherwise
    :class:`~vitedit_ops.errors.IncompatibleBaseError` is raised before any check runs.
    ``preserved_hashes`` (see :func:`~vitedit_ops.gate.suite.image_hashes`) are the preserved
    pool the editor saw; the ``disjoint`` check fails if the gate measures any of them.
    """
    config = config or GateConfig()
    started = time.perf_counter()
    base_fingerprint = fingerprint(base_model)
    suite.assert_lineage(lineage_fingerprint or base_fingerprint)
    inputs = GateInputs(base=base_model, candidate=candidate_model, suite=suite,
                        edit_pixels=edit_images, edit_labels=edit_labels,
                        heldout_pixels=heldout_images, heldout_labels=heldout_labels,
                        onnx_path=None if onnx_path is None else Path(onnx_path),
                        edited_params=edited_params, preserved_hashes=preserved_hashes)
    with tempfile.TemporaryDirectory(prefix="vitedit-gate-") as workdir:
        context = GateContext(inputs, Path(workdir))
        checks = [_guarded(check, context, config) for check in CHECKS]
    return GateReport(
        checks=checks, suite_hash=suite.content_hash, base_fingerprint=base_fingerprint,
        candidate_fingerprint=fingerprint(candidate_model),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        metadata={"suite_path": str(suite.path), "suite_version": suite.version,
                  "lineage_fingerprint": suite.base_fingerprint, "config": config.to_dict(),
                  "seconds": round(time.perf_counter() - started, 3)})


def _guarded(check: Check, context: GateContext, config: GateConfig) -> CheckResult:
    """Run one check; any exception becomes that check's failure, never a skip or a crash."""
    threshold = check.threshold(config)
    started = time.perf_counter()
    try:
        result = check.measure(context, check, threshold)
    except Exception as exc:
        result = CheckResult.failed_to_run(check.name, threshold, check.comparison,
                                           f"{type(exc).__name__}: {exc}", check.description)
    result.details["seconds"] = round(time.perf_counter() - started, 4)
    return result
