"""The markdown a reviewer reads on the version page of the MLflow UI.

Links are relative UI routes (``#/experiments/...``: the run, and its artifact browser opened on
a plot), so they work on any host serving the UI. Plots are linked, not inlined: the UI does not
scale images to the description's width, and inlined plots pushed the tags off screen.
"""

from __future__ import annotations

import math
from vitedit_ops.models import ModelSpec

from . import artifacts
from .record import GENERALIZATION, LOCALITY, EditRunRecord


def run_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    return f"{run_link(experiment_id, run_id)}/artifactPath/{path}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _move(before: dict[str, float], after: dict[str, float], name: str) -> str:
    return f"{_pct(before.get(name))} → {_pct(after.get(name))}"


def edit_description(record: EditRunRecord, candidate_fingerprint: str, experiment_id: str,
                     run_id: str, plot_paths: list[str]) -> str:
    """What was fixed, the gate table, links to the plots and the hashes behind the tags."""
    report = record.gate_report
    verdict = "PASSED" if report.passed else "FAILED"
    fixed = ", ".join(f"`{g.key}`" for g in record.accepted_groups)
    lines = [
        f"## Edit of v{record.parent_version}: gate {verdict}",
        "",
        f"Fixes {len(record.accepted_groups)} error group(s) ({fixed}) with method "
        f"`{record.method}` in window `{record.window}`, from {record.num_images} images. "
        f"Parent v{record.parent_version} (`{record.parent_fingerprint[:12]}`), lineage base "
        f"v{record.base_version} (`{record.lineage_root_fingerprint[:12]}`), this model "
        f"`{candidate_fingerprint[:12]}`. [Run]({run_link(experiment_id, run_id)}).",
        "",
        "### What was fixed",
        "",
        "| group (true->pred) | edit / held-out images | applied | GR before → after "
        "| LR before → after | steps | FFN units edited |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in record.groups:
        units = ""
        if group.patch is not None:
            per_param = group.patch.units_per_param()
            units = f"{sum(per_param.values())} in {len(per_param)} matrices"
        lines.append(f"| {group.key} | {group.num_edit_images} / {group.num_heldout_images} | "
                     f"{'yes' if group.accepted else 'no'} | "
                     f"{_move(group.before, group.after, GENERALIZATION)} | "
                     f"{_move(group.before, group.after, LOCALITY)} | {group.steps} | {units} |")
    names = sorted(set(record.metrics_before) | set(record.metrics_after))
    if names:
        lines += ["", "| overall metric | before | after |", "|---|---|---|"]
        lines += [f"| {n} | {_pct(record.metrics_before.get(n))} | "
                  f"{_pct(record.metrics_after.get(n))} |" for n in names]
    lines += ["", report.to_markdown().rstrip(), ""]
    lines += ["### Plots", ""]
    for path in plot_paths:
        lines.append(f"- [{path.removeprefix('plots/')}]"
                     f"({artifact_link(experiment_id, run_id, path)})")
    lines += ["", "### Hashes (verified again by `vitedit-ops promote`)", ""]
    for i, group in enumerate(record.accepted_groups):
        lines.append(f"- patch `{artifacts.patch_file(i, group)}`: `{group.patch.sha256()}`")
    lines.append(f"- suite: `{record.suite_hash}`")
    if record.notes:
        lines += ["", "### Notes", "", record.notes]
    return "\n".join(lines) + "\n"


def base_description(spec: ModelSpec, fingerprint: str, suite_hash: str, checkpoint_name: str,
                     experiment_id: str, run_id: str) -> str:
    """The root of a lineage: what was registered and which suite gates its descendants."""
    return "\n".join([
        f"## Base model `{spec.architecture}` ({spec.num_classes} classes)",
        "",
        f"Registered by `vitedit-ops register-base` from `{checkpoint_name}`; every nightly "
        f"edit of this model descends from this version. [Run]({run_link(experiment_id, run_id)}).",
        "",
        f"- weights fingerprint: `{fingerprint}`",
        f"- locality suite: `{suite_hash}` "
        f"([files]({artifact_link(experiment_id, run_id, artifacts.SUITE)}))",
        f"- input size: {tuple(spec.input_size)}",
        "",
    ])
