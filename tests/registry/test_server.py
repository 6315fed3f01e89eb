"""The register / promote / rollback cycle through a real ``mlflow server``, and what happens
when no server answers."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from monitoring import open_store
from monitoring.audit import StoreAuditTrail
from registry.client import connect
from registry.errors import RegistryError, RegistryUnavailableError
from registry.loading import load_version
from registry.lookup import champion
from registry.mlflow_registry import publish_edit
from registry.runs import example_image
from vitedit_ops.errors import EXIT_INFRASTRUCTURE
from vitedit_ops.export import ExportResult
from vitedit_ops.models import fingerprint


@pytest.mark.server("mlflow")
def test_full_cycle_through_a_real_server(mlflow_server, register_base_as, suite, good_edit,
                                          run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("VITEDIT_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("VITEDIT_USER", "ci")
    name = "served"
    with open_store() as store:  # the store the commands below record their moves in
        base = register_base_as(name, mlflow_server, audit=StoreAuditTrail(store))
    assert (base.version, base.aliases) == ("1", ("champion",))

    # a fault midway through the upload leaves nothing on the server
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(good_edit.onnx.path.read_bytes()[:5000])
    record = replace(good_edit.record, registered_model=name)
    with pytest.raises(RegistryError, match="nothing registered"):
        publish_edit(replace(record, onnx=ExportResult(corrupt, "0" * 64, 20)))
    client = MlflowClient(mlflow_server)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    good = publish_edit(record)
    assert (good.version, good.aliases) == ("2", ("challenger",))
    assert publish_edit(record).created is False

    promoted = run_cli("promote", "--run-id", good.run_id)
    assert promoted.exit_code == 0, promoted.output
    model, _, info = load_version(name, champion(name).version)
    assert info.version == "2"
    assert fingerprint(model) == good_edit.record.gate_report.candidate_fingerprint
    assert client.get_model_version(name, "2").tags["vitedit.champion.by"] == "ci"

    mlflow.set_tracking_uri(mlflow_server)
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = served.predict(pd.DataFrame({"image": [example_image()] * 4}))
    assert np.array(out["probabilities"].tolist()).shape == (4, 10)

    assert run_cli("rollback", "--model", name).exit_code == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    history = run_cli("history", "--model", name)
    assert history.exit_code == 0
    rows = [line for line in history.stdout.splitlines() if "│ v" in line]
    assert [("register-base" in r, "promote" in r, "rollback" in r) for r in rows] == [
        (True, False, False), (False, True, False), (False, False, True)]


def test_unreachable_server_gives_one_line_and_the_infrastructure_exit_code(dead_url):
    env = {**os.environ, "VITEDIT_MLFLOW_TRACKING_URI": dead_url,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "vitedit-ops"), "promote", "--run-id", "a" * 32],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == EXIT_INFRASTRUCTURE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable after 3 attempts" in lines[0], result.stderr


def test_connect_retries_are_bounded(monkeypatch, dead_url):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryUnavailableError, match="after 1 attempts"):
        connect(dead_url)


class _Health:
    """A loopback HTTP server whose ``/health`` answers ``statuses`` in turn (the last one
    from then on), counting the requests it got: a server still starting up."""

    def __init__(self, *statuses: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                status = statuses[min(outer.requests, len(statuses) - 1)]
                outer.requests += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "_Health":
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def retries(monkeypatch):
    """Set MLflow's retry count for the health check; no backoff, so the tests wait for
    nothing but the answers."""
    from registry.client import wait_for_server

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

    def check(count: int, url: str) -> None:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(count))
        wait_for_server(url)
    return check


def test_a_server_that_answers_503_while_starting_is_waited_for(retries):
    with _Health(503, 503, 200) as health:
        retries(3, health.url)
    assert health.requests == 3


def test_a_server_that_never_gets_healthy_is_named_with_its_last_answer(retries):
    with _Health(503) as health, pytest.raises(RegistryUnavailableError,
                                               match=r"after 3 attempts \(HTTP 503\)"):
        retries(2, health.url)
    assert health.requests == 3
    # a wrong URL: asking again will not help
    with _Health(404) as not_mlflow, pytest.raises(RegistryUnavailableError,
                                                   match=r"after 1 attempts \(HTTP 404\)"):
        retries(2, not_mlflow.url)
    assert not_mlflow.requests == 1
