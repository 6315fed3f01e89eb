"""A real edit of a tiny timm ViT for the registry and serving tests: patches on one block's
FFN and a gate report computed on the suite, ready for ``registry.publish_edit``."""

from __future__ import annotations

import copy

import torch

from registry.record import EditRunRecord, GroupEdit
from vitedit_ops.gate.report import CheckResult, GateReport
from vitedit_ops.metrics import predict_logits
from vitedit_ops.models import fingerprint
from vitedit_ops.patch import Patch

FC1, FC2 = "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight"
HIDDEN = 256
LOCALITY_THRESHOLD = 0.9


def edit_record(base_model, spec, suite, keys: list[str], scale: float,
                seed: int) -> EditRunRecord:
    """Patch blocks.1's FFN once per group (16 units each), gate it on the suite for real
    (``suite`` is (directory, images, labels); the model must be 64 wide, 256 hidden)."""
    _, images, labels = suite
    generator = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(base_model)
    parent_fp = fingerprint(base_model)
    before_preds = predict_logits(base_model, images).argmax(-1)
    groups = []
    for key in keys:
        index = torch.randperm(HIDDEN, generator=generator)[:16]
        d1 = torch.randn(16, 64, generator=generator) * scale
        d2 = torch.randn(64, 16, generator=generator) * scale
        # index.clone(): Patch.save refuses entries sharing one index tensor (safetensors)
        deltas = [(FC1, "rows", index, d1), (FC2, "cols", index.clone(), d2)]
        patch = Patch.from_deltas(model, deltas, base_fingerprint=fingerprint(model),
                                  metadata={"group": key})
        patch.apply(model)
        scores = {FC1: torch.rand(HIDDEN, generator=generator),
                  FC2: torch.rand(HIDDEN, generator=generator)}
        groups.append(GroupEdit(key=key, num_edit_images=1, num_heldout_images=9, patch=patch,
                                success=True, steps=12, seconds=0.4,
                                before={"generalization": 0.1, "locality": 1.0},
                                after={"generalization": 0.7, "locality": 0.95},
                                mask_scores=scores, kept_units={FC1: index, FC2: index}))
    after_preds = predict_logits(model, images).argmax(-1)
    locality = float((after_preds == before_preds).float().mean())
    report = GateReport(
        checks=[CheckResult.evaluate("locality", locality, LOCALITY_THRESHOLD, ">="),
                CheckResult.evaluate("reliability", 1.0, 1.0, ">=")],
        suite_hash="ab" * 32, base_fingerprint=parent_fp,
        candidate_fingerprint=fingerprint(model))
    return EditRunRecord(
        registered_model="unset", parent_version="1", parent_fingerprint=parent_fp,
        base_version="1", lineage_root_fingerprint=parent_fp, method="localized",
        settings={"lr": 2e-5, "keep_fraction": 0.1, "optimizer": "rmsprop", "max_steps": 100},
        window="blocks 0-1", groups=groups,
        metrics_before={"generalization": 0.1, "locality": 1.0},
        metrics_after={"generalization": 0.7, "locality": locality}, gate_report=report,
        model=model, spec=spec, suite_labels=labels, suite_predictions_before=before_preds,
        suite_predictions_after=after_preds)
