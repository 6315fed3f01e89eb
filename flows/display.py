"""A night on the terminal: the groups table, the gate report and where to look next."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .reporting import NightlyResult, ledger_note, mlflow_ui_command

_STYLES = {"accepted": "green", "applied": "green", "rejected": "yellow", "left out": "yellow",
           "error": "red"}


def print_night(result: NightlyResult, console: Console, tracking_uri: str) -> None:
    console.print(f"[bold]{result.headline}[/]", highlight=False)
    if result.drift is not None:
        console.print(f"drift from the lineage root: {result.drift.summary()}", highlight=False)
    if result.groups:
        table = Table(title="error groups (true->predicted)")
        for column in ("group", "images edit/held-out", "outcome", "steps", "generalization",
                       "suite locality"):
            table.add_column(column)
        for row in result.groups:
            locality = row.get("locality")
            table.add_row(row["group"], f"{row['edit']}/{row['heldout']}", str(row["outcome"]),
                          str(row.get("steps", "")), str(row.get("generalization", "")),
                          "" if locality is None else f"{locality:.4f}",
                          style=_STYLES.get(str(row["outcome"]), ""))
        console.print(table)
        for row in result.groups:
            if row.get("note"):
                console.print(f"  {row['group']}: {row['note']}", highlight=False)
    if result.gate is not None:
        gate = Table(title="gate " + ("PASSED" if result.gate.passed else "FAILED"))
        for column in ("check", "value", "threshold", "result"):
            gate.add_column(column)
        for check in result.gate.checks:
            value = "n/a" if check.value is None else f"{check.value:.4g}"
            threshold = ("" if check.threshold is None
                         else f"{check.comparison} {check.threshold:.4g}")
            if check.passed:
                verdict = "pass" if check.value is not None else \
                    f"pass ({check.details.get('note', '')})"
            else:
                verdict = check.error or "FAIL"
            gate.add_row(check.name, value, threshold, verdict,
                         style="" if check.passed else "red")
        console.print(gate)
    if result.ledger_rows:
        console.print(f"edit ledger: {result.ledger_rows} prediction(s) recorded as used")
    if note := ledger_note(result):
        console.print(f"edit ledger: {note}", highlight=False, soft_wrap=True)
    if result.run_url:
        console.print(f"MLflow run: {result.run_url}\n  (open with: "
                      f"{mlflow_ui_command(tracking_uri)})", highlight=False, soft_wrap=True)
