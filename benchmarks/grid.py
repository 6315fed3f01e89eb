"""Run a sweep of editors x knobs x learning rates over the paired edit cases."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitedit_ops.edit_cases import EditCase, GroupInputs
from vitedit_ops.editors import create_editor
from vitedit_ops.metrics import predict_logits


@dataclass(frozen=True)
class MethodPoint:
    """One operating point: an editor family, its own knob, and a learning rate."""

    family: str                      # what the plots and tables call it
    editor: str                      # name in the editor registry
    knob: str                        # e.g. "keep=0.10", "rank=4", "l2=0.01", "-"
    lr: float
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, extra: dict[str, Any]):
        return create_editor(self.editor, lr=self.lr, **dict(self.options), **extra)

    @property
    def key(self) -> str:
        return f"{self.family}|{self.knob}|lr={self.lr:g}"


@dataclass
class EvalSets:
    """What every edit is measured on: the locality set, its sensitive subset, base preds."""

    locality_inputs: torch.Tensor
    base_predictions: torch.Tensor
    sensitive_idx: torch.Tensor
    groups: list[GroupInputs] = field(default_factory=list)


def measure_edit(model: nn.Module, point: MethodPoint, extra: dict[str, Any], case: EditCase,
                 evals: EvalSets) -> dict[str, Any]:
    """Edit, apply the patch, measure, revert: one benchmark row."""
    group = evals.groups[case.group]
    labels = torch.full((len(case.edit_idx),), group.true_class, dtype=torch.long)
    result = point.build(extra).edit(model, group.inputs[list(case.edit_idx)], labels)
    result.patch.apply(model)
    try:
        held_out = group.inputs[list(case.eval_idx)]
        gr = float((predict_logits(model, held_out).argmax(-1) == group.true_class)
                   .float().mean())
        preds = predict_logits(model, evals.locality_inputs).argmax(-1)
        same = preds == evals.base_predictions
    finally:
        result.patch.revert(model)
    return {"family": point.family, "knob": point.knob, "lr": point.lr, "point": point.key,
            "case": case.case_id, "group": group.name, "shift": group.shift,
            "k": len(case.edit_idx), "split": case.split,
            "reliability": result.reliability, "success": result.success, "gr": gr,
            "lr_locality": float(same.float().mean()),
            "lr_sensitive": float(same[evals.sensitive_idx].float().mean())
            if len(evals.sensitive_idx) else float("nan"),
            "steps": result.steps, "seconds": result.seconds,
            "kept_fraction": result.kept_fraction}


def _run_job(model: nn.Module, point: MethodPoint, k: int, cases: list[EditCase],
             evals: EvalSets, extra_for: Callable[[MethodPoint], dict[str, Any]]
             ) -> list[dict[str, Any]]:
    extra = extra_for(point)
    return [measure_edit(model, point, extra, case.with_k(k), evals) for case in cases]


def _run_job_in_worker(model: nn.Module, *args: Any) -> list[dict[str, Any]]:
    torch.set_num_threads(1)  # one process per core: threads would only oversubscribe
    # tensors arrive in shared memory (torch's pickling): edits must not write into the
    # storage other workers read, so each job patches a private copy
    return _run_job(copy.deepcopy(model), *args)


JobDone = Callable[[MethodPoint, int, list[dict[str, Any]]], None]


def run_grid(model: nn.Module, points: list[MethodPoint], cases: list[EditCase],
             ks: list[int], evals: EvalSets, extra_for: Callable[[MethodPoint], dict[str, Any]],
             on_job: JobDone | None = None, workers: int = 1,
             completed: Callable[[MethodPoint, int], list[dict[str, Any]] | None] | None = None
             ) -> list[dict[str, Any]]:
    """Every point on every case at every k; rows in a deterministic order.

    ``on_job`` hears of each finished (point, k) job as it finishes; ``completed`` returns
    a job's rows from an earlier run (or None), and such jobs are not run again. With
    ``workers > 1`` each job runs in its own spawned process (the model, sets and
    ``extra_for`` are pickled to it); results are identical to a serial run.
    """
    jobs = [(point, k) for k in ks for point in points]
    results: list[list[dict[str, Any]] | None] = [
        completed(point, k) if completed is not None else None for point, k in jobs]
    todo = [i for i, rows in enumerate(results) if rows is None]

    def finish(i: int, rows: list[dict[str, Any]]) -> None:
        results[i] = rows
        if on_job is not None:
            on_job(*jobs[i], rows)

    if workers <= 1:
        for i in todo:
            finish(i, _run_job(model, *jobs[i], cases, evals, extra_for))
    elif todo:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")  # no fork after OpenMP start-up
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_run_job_in_worker, model, *jobs[i], cases, evals,
                                   extra_for): i for i in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
    return [row for job_rows in results for row in job_rows]


def base_predictions(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return predict_logits(model, inputs).argmax(-1)
