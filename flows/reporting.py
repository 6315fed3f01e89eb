"""What a night reports: one result object, and the Prefect artifacts people read.

Two artifacts per run: a table of every error group with its outcome (accepted, rejected by
its own checks, left out when combining, or failed with an error), and the gate report in
markdown with a link to the MLflow run that holds the plots, patches and models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from vitedit_ops.gate import GateReport

from vitedit_ops.settings import get_settings

from .edits import GroupOutcome
from .lineage import Drift

NOTHING_TO_EDIT = "nothing-to-edit"
NO_GROUP_ACCEPTED = "no-group-accepted"
REGISTERED = "registered"
ALREADY_REGISTERED = "already-registered"
FAILED = "failed"
GROUPS_ARTIFACT = "nightly-edit-groups"
GATE_ARTIFACT = "nightly-edit-gate"


@dataclass(frozen=True)
class NightlyResult:
    """One night, as the flow returns it and the CLI/demo print it (each step of the flow
    returns a new one with what it learned)."""

    model: str
    status: str
    flow_run_id: str = ""
    key: str = ""
    champion_version: str = ""
    drift: Drift | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    gate: GateReport | None = None
    version: str = ""
    run_id: str = ""
    run_url: str = ""
    gate_passed: bool = False
    created: bool = False
    aliases: tuple[str, ...] = ()
    promoted: bool = False
    ledger_rows: int = 0
    # the ledger settled from the registry: rows committed per version (it serves or served),
    # and challengers superseded unpromoted: (version, the challenger now or "", rows released)
    ledger_committed: dict[str, int] = field(default_factory=dict)
    superseded: tuple[tuple[str, str, int], ...] = ()
    collected: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def headline(self) -> str:
        if self.status == NOTHING_TO_EDIT:
            return f"{self.model}: no error groups to edit"
        if self.status == NO_GROUP_ACCEPTED:
            return (f"{self.model} v{self.champion_version}: no group passed its checks, "
                    "nothing registered")
        if self.status == FAILED:
            return f"{self.model} v{self.champion_version}: run failed: {self.error}"
        verdict = "passed" if self.gate_passed else "FAILED"
        made = "registered" if self.status == REGISTERED and self.created else "already had"
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        promoted = ", promoted to champion" if self.promoted else ""
        return (f"{self.model}: {made} v{self.version}{aliases} from champion "
                f"v{self.champion_version}, gate {verdict}{promoted}")


def group_rows(outcomes: list[GroupOutcome]) -> list[dict[str, Any]]:
    """One row per group for the table artifact and the CLI (image counts as edited)."""
    rows = []
    for o in outcomes:
        e = o.edit
        rows.append({
            "group": e.key, "edit": e.num_edit_images, "heldout": e.num_heldout_images,
            "outcome": e.outcome, "steps": e.steps,
            "reliability": _num(e.after.get("reliability")),
            "generalization": f"{_fmt(e.before.get('generalization'))} -> "
                              f"{_fmt(e.after.get('generalization'))}",
            "locality": _num(e.after.get("locality")),
            "heldout_in_scope": _num(e.after.get("heldout_in_scope")),
            "worker": e.worker, "note": e.note})
    return rows


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def mlflow_ui_command(tracking_uri: str) -> str:
    """How a person opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {get_settings().resolved_mlflow_ui_url()}"
    port = urlparse(get_settings().resolved_mlflow_ui_url()).port or 5000
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port {port}"


def publish_artifacts(result: NightlyResult) -> None:
    """The groups table and the gate markdown of this flow run."""
    if result.groups:
        create_table_artifact(result.groups, key=GROUPS_ARTIFACT,
                              description=f"Error groups of {result.model}, champion "
                                          f"v{result.champion_version}")
    create_markdown_artifact(markdown(result), key=GATE_ARTIFACT,
                             description=result.headline)


def ledger_note(result: NightlyResult) -> str:
    """What settling the ledger changed: superseded challengers and committed fixes."""
    parts = [f"challenger v{version} was superseded"
             + (f" by v{by}" if by and by != version else "")
             + f" without being promoted: its {rows} fixed prediction(s) are released and "
             "will be collected again" for version, by, rows in result.superseded]
    parts += [f"{rows} prediction(s) of v{version} committed (it serves or served as "
              "champion)" for version, rows in sorted(result.ledger_committed.items())]
    return "; ".join(parts) + "." if parts else ""


def markdown(result: NightlyResult) -> str:
    lines = [f"## {result.headline}", ""]
    if result.run_url:
        lines += [f"MLflow run: [{result.run_id}]({result.run_url}) (plots, patches, ONNX, "
                  "the reviewer's description)", ""]
    if result.drift is not None:
        lines += [f"Drift from the lineage root: {result.drift.summary()}.", ""]
    if result.collected:
        c = result.collected
        lines += [f"Collected {c.get('images', 0)} misclassified images in "
                  f"{c.get('groups', 0)} group(s) ({c.get('already_used', 0)} already used by "
                  f"earlier edits, {c.get('small_groups_skipped', 0)} small group(s) waiting).",
                  ""]
    if result.ledger_rows:
        lines += [f"Edit ledger: {result.ledger_rows} prediction(s) recorded as used (pending "
                  "until the version serves as champion).", ""]
    lines += [f"Edit ledger: {line}", ""] if (line := ledger_note(result)) else []
    if result.gate is not None:
        lines.append(result.gate.to_markdown())
    if result.error:
        lines += ["", f"**Error:** {result.error}"]
    if result.key:
        lines += ["", f"Idempotency key `{result.key}`"]
    return "\n".join(lines) + "\n"
