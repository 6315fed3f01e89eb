"""The deployments for real: ``prefect.yaml``'s nightly deployment on a process work pool of a
``prefect server start`` on loopback, picked up by a worker; the Dask variant's task runner on
a local cluster."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.reporting import REGISTERED

from ..helpers.servers import BIN
from .flows_testlib import LAX_EDIT, LAX_GATE

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_schedules_the_nightly_deployment_at_two_utc():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    nightly = deployments["nightly"]
    assert nightly["entrypoint"] == "flows/nightly.py:nightly_edit"
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert nightly["work_pool"]["name"] == "vitedit-process"
    # the variants document their pools and are off until an operator picks one
    assert deployments["nightly-gpu"]["work_pool"]["job_variables"]["env"]["VITEDIT_DEVICE"] \
        == "cuda"
    assert deployments["nightly-dask"]["entrypoint"] == "flows/scaling.py:nightly_edit_dask"
    assert not any(s["active"] for name in ("nightly-gpu", "nightly-dask")
                   for s in deployments[name]["schedules"])
    # one night at a time, whichever variant runs
    assert all(deployments[name]["concurrency_limit"] == 1
               for name in ("nightly", "nightly-gpu", "nightly-dask"))


def test_two_nights_of_the_deployment_never_run_at_once(prefect_test_api):
    """The served deployment on a real Prefect server: while one night is running, the
    server answers the next night's start with 'wait for a slot'."""
    from prefect import get_client
    from prefect.states import Pending, Running

    from flows.deploy import deployments

    [nightly] = [d for d in deployments() if d.name == "nightly"]
    deployment_id = nightly.apply()
    with get_client(sync_client=True) as client:
        first, second = (client.create_flow_run_from_deployment(deployment_id)
                         for _ in range(2))
        assert client.set_flow_run_state(first.id, Pending()).status.value == "ACCEPT"
        client.set_flow_run_state(first.id, Running())
        answer = client.set_flow_run_state(second.id, Pending())
        assert answer.status.value != "ACCEPT"
        assert client.read_flow_run(second.id).state.name == "AwaitingConcurrencySlot"
        client.delete_deployment(deployment_id)


@pytest.mark.slow
@pytest.mark.server("prefect")
def test_a_process_worker_runs_the_nightly_deployment(night, prefect_server_process, tmp_path):
    n = night()
    env = {**os.environ, "PREFECT_API_URL": f"{prefect_server_process.url}/api",
           "PREFECT_HOME": str(prefect_server_process.root), "VITEDIT_PROJECT_DIR": str(REPO)}

    def prefect(*args: str) -> str:
        done = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    prefect("work-pool", "create", "vitedit-process", "--type", "process", "--overwrite")
    prefect("deploy", "--name", "nightly")
    parameters = {"model": n.name, "edit_settings": LAX_EDIT, "gate": LAX_GATE}
    prefect("deployment", "run", "nightly-edit/nightly", "--params", json.dumps(parameters))
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool",
                             "vitedit-process", "--run-once"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    runs = json.loads(prefect("flow-run", "ls", "--flow-name", "nightly-edit", "--output",
                              "json"))
    assert [r["state_type"] for r in runs].count("COMPLETED") == 1  # the worker ran ours
    assert n.versions() == ["1", "2"]
    # the server's scheduler queued the coming nights from the deployment's cron
    upcoming = [datetime.fromisoformat(r["expected_start_time"]) for r in runs
                if r["state_type"] == "SCHEDULED"]
    assert upcoming and all((t.astimezone(UTC).hour, t.minute) == (2, 0) for t in upcoming)


@pytest.mark.slow
def test_edits_fan_out_to_a_local_dask_cluster(night, monkeypatch):
    from flows.config import EditSettings
    from flows.nightly import nightly_edit
    from flows.scaling import dask_runner

    monkeypatch.setenv("VITEDIT_DASK_WORKERS", "2")
    n = night()
    flow = nightly_edit.with_options(task_runner=dask_runner())
    result = flow(model=n.name, edit_settings=EditSettings(**LAX_EDIT), gate=LAX_GATE)
    assert result.status == REGISTERED and result.gate_passed
    workers = {g["worker"].split(" ")[0] for g in result.groups if g.get("worker")}
    assert workers and all(not w.endswith(f"/{os.getpid()}") for w in workers)


def test_the_run_forms_show_every_parameters_description_and_default(prefect_test_api):
    """What the Prefect UI's run form is built from: the schema the server stores for each
    deployment. ``gate`` and ``edit_settings`` showed as "None" before."""
    from prefect import get_client

    from flows.config import EditSettings, GateThresholds
    from flows.deploy import deployments
    from vitedit_ops.gate import GateConfig

    with get_client(sync_client=True) as client:
        for deployment in deployments():
            deployment_id = deployment.apply()
            try:
                schema = client.read_deployment(deployment_id).parameter_openapi_schema
            finally:
                client.delete_deployment(deployment_id)
            for name, prop in schema["properties"].items():
                assert prop.get("description"), f"{deployment.name}: {name} has no description"
            if deployment.name != "nightly":
                continue
            props, defs = schema["properties"], schema["definitions"]
            assert props["gate"]["default"] == GateConfig().to_dict()
            assert props["edit_settings"]["default"] == EditSettings().model_dump(mode="json")
            gate_fields = defs["GateThresholds"]["properties"]
            assert set(gate_fields) == set(GateConfig.names())
            assert all(f.get("description") for f in gate_fields.values())
            assert GateThresholds().config() == GateConfig()
            lr = defs["EditSettings"]["properties"]["lr"]
            assert lr["default"] == EditSettings().lr and lr["description"]
