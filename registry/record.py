"""The record of one nightly edit run, as the flow hands it to the registry.

Plain and typed: the flow fills it from the editors' results, the gate's report and the
exported ONNX file; the registry only reads it. ``validate`` checks the invariants that make
a registered version trustworthy (the gate judged exactly these weights, on this parent).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitedit_ops.editors.base import EditResult
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.export import ExportResult
from vitedit_ops.gate.report import GateReport
from vitedit_ops.models import ModelSpec, fingerprint
from vitedit_ops.patch import Patch
from vitedit_ops.scoped import ScopedPatch

GENERALIZATION = "generalization"
LOCALITY = "locality"
ACCEPTED, REJECTED, LEFT_OUT, ERROR = "accepted", "rejected", "left out", "error"


@dataclass
class GroupEdit:
    """One error group of the run: its images, its edit (if accepted) and its metrics.

    ``patch is None`` means the group was tried but not accepted into the model; accepted
    groups' patches are applied in the order of ``EditRunRecord.groups``. ``outcome`` says
    which: accepted, rejected by its own checks, left out when stacked with others, or an
    error. ``before``/``after`` hold metrics such as ``generalization`` (GR) and ``locality``
    (LR) measured before and after this group's edit; the image counts are those the edit and
    its checks used.
    """

    key: str
    num_edit_images: int
    num_heldout_images: int
    patch: Patch | ScopedPatch | None
    outcome: str = ACCEPTED
    success: bool = False
    steps: int = 0
    seconds: float = 0.0
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    mask_scores: dict[str, torch.Tensor] | None = None
    kept_units: dict[str, torch.Tensor] = field(default_factory=dict)
    note: str = ""
    worker: str = ""

    @classmethod
    def from_result(cls, key: str, result: EditResult, num_heldout_images: int,
                    before: dict[str, float], after: dict[str, float], accepted: bool = True,
                    note: str = "") -> GroupEdit:
        """The group as an editor's result describes it; ``accepted=False`` keeps the result
        for the record but its patch out of the model."""
        return cls(key=key, num_edit_images=len(result.labels),
                   num_heldout_images=num_heldout_images,
                   patch=result.patch if accepted else None,
                   outcome=ACCEPTED if accepted else REJECTED, success=result.success,
                   steps=result.steps, seconds=result.seconds, before=dict(before),
                   after=dict(after), mask_scores=result.mask_scores,
                   kept_units=dict(result.kept_units), note=note)

    @property
    def accepted(self) -> bool:
        return self.patch is not None

    def left_out(self, why: str) -> GroupEdit:
        """This group, taken back out of the model when stacked with others."""
        return replace(self, patch=None, outcome=LEFT_OUT, note=why)

    @property
    def slug(self) -> str:
        """The key in a form valid for MLflow metric names and file names ("3->8" -> "3to8")."""
        return slug(self.key)


@dataclass
class EditRunRecord:
    """Everything the registry logs and tags for one edit run.

    Lineage: ``parent_version`` is the registered version the patches were applied to (the
    champion the flow loaded) with weights ``parent_fingerprint``; ``base_version`` is the
    version ``register-base`` created at the root of the lineage, with weights
    ``lineage_root_fingerprint``.

    ``suite_dir`` is the gate suite as the next night should use it (e.g. grown by the images
    this run fixed); it is stored with the version. None keeps the parent's suite.
    ``onnx`` is the exported file the gate checked for parity; None exports it here.
    ``preserved_hashes``/``preserved_labels`` describe the preserved pool the edits had to
    keep (empty: the editor had none); the run logs it as a dataset.
    """

    registered_model: str
    parent_version: str
    parent_fingerprint: str
    base_version: str
    lineage_root_fingerprint: str
    method: str
    settings: dict[str, Any]
    window: str
    groups: list[GroupEdit]
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    gate_report: GateReport
    model: nn.Module
    spec: ModelSpec
    suite_labels: torch.Tensor
    suite_predictions_before: torch.Tensor
    suite_predictions_after: torch.Tensor
    onnx: ExportResult | None = None
    suite_dir: Path | None = None
    idempotency_key: str = ""
    notes: str = ""
    preserved_hashes: tuple[str, ...] = ()  # the preserved pool the editor kept, by sha256
    preserved_labels: tuple[int, ...] = ()  # their true classes (-1: unknown)

    @property
    def accepted_groups(self) -> list[GroupEdit]:
        return [g for g in self.groups if g.accepted]

    @property
    def patches(self) -> list[Patch | ScopedPatch]:
        """Patches in application order, one per accepted group."""
        return [g.patch for g in self.accepted_groups if g.patch is not None]

    @property
    def suite_hash(self) -> str:
        return self.gate_report.suite_hash

    @property
    def num_images(self) -> int:
        return sum(g.num_edit_images + g.num_heldout_images for g in self.groups)

    @property
    def key(self) -> str:
        """The idempotency key: the flow's, else a hash of what the run would register."""
        if self.idempotency_key:
            return self.idempotency_key
        content = {"model": self.registered_model, "parent": self.parent_fingerprint,
                   "suite": self.suite_hash, "method": self.method,
                   "patches": [p.sha256() for p in self.patches]}
        return "edit-" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def validate(self, candidate_fingerprint: str | None = None) -> str:
        """Raise ``InvalidInputError`` unless the record is consistent; return the model's
        fingerprint (computed here unless the caller already has it)."""
        candidate = candidate_fingerprint or fingerprint(self.model)
        report = self.gate_report
        problems = []
        if report.base_fingerprint != self.parent_fingerprint:
            problems.append(f"gate report base {report.base_fingerprint[:12]} is not the parent "
                            f"v{self.parent_version} ({self.parent_fingerprint[:12]})")
        if report.candidate_fingerprint != candidate:
            problems.append(f"gate report judged weights {report.candidate_fingerprint[:12]}, "
                            f"the record's model is {candidate[:12]}")
        keys = [g.key for g in self.groups]
        if len(set(keys)) != len(keys):
            problems.append(f"duplicate error groups in {keys}")
        if len({slug(k) for k in keys}) != len(keys):
            problems.append(f"error group keys {keys} collide once made file-safe")
        sizes = {len(self.suite_labels), len(self.suite_predictions_before),
                 len(self.suite_predictions_after)}
        if len(sizes) != 1:
            problems.append("suite labels and predictions before/after differ in length")
        if len(self.preserved_hashes) != len(self.preserved_labels):
            problems.append("preserved pool hashes and labels differ in length")
        if self.suite_dir is not None and not Path(self.suite_dir).is_dir():
            problems.append(f"suite directory {self.suite_dir} does not exist")
        if not self.accepted_groups:
            problems.append("no accepted group: there is no edit to register")
        if problems:
            raise InvalidInputError("edit run record is inconsistent: " + "; ".join(problems))
        return candidate


def slug(key: str) -> str:
    """A group key made safe for metric and file names: "3->8" -> "3to8"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key.replace("->", "to")).strip("_") or "group"
