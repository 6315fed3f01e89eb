"""The nightly's edit settings: the product's defaults, and refusals before anything runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.config import EDITOR_FIELDS, EditSettings
from vitedit_ops.editors import PRODUCT, PRODUCT_SCOPED


def test_the_nightly_defaults_are_the_product_recipe():
    settings = EditSettings()
    assert settings.method == PRODUCT.method
    chosen = {k: v for k, v in settings.editor_options().items() if v is not None}
    assert chosen == {k: v for k, v in PRODUCT.options.items() if k in EDITOR_FIELDS}
    assert set(PRODUCT.options) - set(EDITOR_FIELDS) <= {"jitter_max_images"}


@pytest.mark.parametrize("changes, message", [
    ({"method": "bogus"}, "method"),
    ({"optimizer": "adagrad"}, "optimizer"),
    ({"method": "window_ft", "null_space_energy": 0.9}, "not an option of the 'window_ft'"),
    ({"lr": 0}, "lr"),
    ({"replay": True}, "replay"),  # the old name: refused, never silently ignored
    ({"scoped": {"method": "ke", "keep_fraction": 0.5}}, "not an option of the 'ke'"),
])
def test_bad_settings_are_refused_at_once(changes, message):
    with pytest.raises(ValidationError, match=message):
        EditSettings(**changes)


def test_another_editor_drops_the_product_options_it_does_not_take():
    assert EditSettings(method="lora").uses_preserved  # the subpopulations' scopes need it
    settings = EditSettings(method="lora", subpopulations=False)
    assert not settings.uses_preserved
    assert settings.editor_options()["null_space_energy"] == PRODUCT.get("null_space_energy")


@pytest.mark.parametrize("env, flow_seconds, task_seconds", [
    ({}, 6 * 3600, 2 * 3600),
    ({"VITEDIT_NIGHTLY_TIMEOUT_HOURS": "10", "VITEDIT_TASK_TIMEOUT_HOURS": "0.5"}, 36000, 1800),
])
def test_the_nightly_flow_and_its_tasks_have_a_timeout_from_the_settings(
        env, flow_seconds, task_seconds, tmp_path):
    """Read when a worker imports the flow, so checked in a fresh process."""
    import json
    import os
    import subprocess
    import sys

    script = """
import json
from prefect import Task
import flows.nightly as nightly
tasks = {t.name: t.timeout_seconds for t in vars(nightly).values() if isinstance(t, Task)}
print(json.dumps({"flow": nightly.nightly_edit.timeout_seconds, "tasks": tasks}))
"""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VITEDIT_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**clean, **env, "VITEDIT_HOME": str(tmp_path),
                                            "PREFECT_HOME": str(tmp_path / "prefect")})
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["flow"] == flow_seconds
    # the submitted per-unit tasks run in worker threads, which no task timeout interrupts:
    # the flow's timeout bounds them
    threaded = {"edit-group", "retrain"}
    assert {n for n, t in found["tasks"].items() if t is None} == threaded
    timed = {n: t for n, t in found["tasks"].items() if n not in threaded}
    assert len(timed) >= 10 and set(timed.values()) == {task_seconds}


@pytest.mark.parametrize("changes, kinds", [
    ({}, ()),
    ({"method": "ke"}, ("ke",)),
    ({"scoped": {"method": "mend", "lr": 2.0, "max_steps": 3}}, ("mend",)),
    ({"method": "mend", "scoped": {"method": "ke"}}, ("mend", "ke")),
    ({"method": "ke", "scoped": {"method": "ke"}}, ("ke",)),
    ({"scoped": {"method": "ke"}, "subpopulations": False}, ()),
    ({"method": "mend", "strategy": "retrain", "scoped": {"method": "ke"}}, ("mend",)),
])
def test_a_night_needs_the_update_networks_of_the_editors_it_runs(changes, kinds):
    assert EditSettings(**changes).updater_kinds == kinds


def test_ke_and_mend_take_their_own_step_unless_told_otherwise():
    """Their lr multiplies the meta-learned step: the product's 1e-3 would shrink it a
    thousandfold, so unset optimiser settings are left to the editor (None)."""
    night = EditSettings(method="ke").editor_options()
    assert {k: night[k] for k in ("lr", "optimizer", "max_steps", "ce_target")} == dict.fromkeys(
        ("lr", "optimizer", "max_steps", "ce_target"))
    scoped = EditSettings(scoped={"method": "mend", "lr": 2.0}).scoped.editor_options()
    assert scoped["lr"] == 2.0 and scoped["max_steps"] is None
    assert EditSettings().scoped.editor_options()["lr"] == PRODUCT_SCOPED.get("lr")
