"""Real server processes on loopback for the tests: ``mlflow server`` and ``prefect server``,
each in its own process group, plus the polling and signalling the tests use around them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], seconds: float, what: str,
             interval: float = 0.1) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group this test started (never anything else), then reap it."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait(timeout=30)


class Server:
    """A server process in its own process group, answering HTTP on a loopback port."""

    def __init__(self, argv: list[str], url: str, health: str, root: Path,
                 env: dict[str, str] | None = None) -> None:
        self.argv, self.url, self.health, self.root = argv, url, health, root
        self.log_path = root / "server.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def launch(self) -> Server:
        """Start the process without waiting for it (see ``ready``)."""
        self.log = open(self.log_path, "a")
        self.process = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=self.env)
        return self

    def ready(self, seconds: float = 180) -> Server:
        wait_for(self._healthy, seconds, f"{self.argv[0]} to answer {self.health}", 0.5)
        return self

    def start(self, seconds: float = 180) -> Server:
        return self.launch().ready(seconds)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.argv[:2]} exited: {self.log_path.read_text()[-2000:]}")
        try:
            return requests.get(self.url + self.health, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL if it lingers (uvicorn's graceful shutdown can wait
        on open connections; the stores are disposable)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(self.process)
        self.log.close()


def new_mlflow_server(root: Path, port: int) -> Server:
    """``mlflow server`` with one worker on a SQLite store under ``root`` (restartable).

    MLflow 3's job runner (a huey consumer per job queue: 9 processes, ~170 MB each) is off:
    nothing here submits MLflow jobs, and on 2 shared cores it slowed every server test."""
    return Server([str(BIN / "mlflow"), "server",
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--default-artifact-root", (root / "artifacts").as_uri(),
                   "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
                  f"http://127.0.0.1:{port}", "/health", root,
                  # registry webhooks to a loopback `vitedit-ops serve` (docs/serving.md);
                  # the webhook list is cached for 1 s, not 60, so a new hook fires at once
                  {"MLFLOW_DISABLE_TELEMETRY": "true",
                   "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                   "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http",
                   "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_CACHE_TTL": "1"})


AUTH_ADMIN, AUTH_ADMIN_PASSWORD = "admin", "admin-password-for-tests"


def new_mlflow_auth_server(root: Path, port: int) -> Server:
    """``mlflow server --app-name basic-auth``: MLflow's built-in authentication, its user
    store beside the tracking store under ``root``; admin ``AUTH_ADMIN`` is created on the
    first start, everyone else gets READ until granted more. Credential checks are cached for
    five minutes, as docs/operations.md advises: each uncached one costs a scrypt hash
    (~0.1 s of CPU), and registering a model makes hundreds of requests."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {AUTH_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 300\n")
    server = new_mlflow_server(root, port)
    server.argv += ["--app-name", "basic-auth"]
    server.env.update({"MLFLOW_AUTH_CONFIG_PATH": str(config),
                       "MLFLOW_AUTH_ADMIN_PASSWORD": AUTH_ADMIN_PASSWORD,
                       "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key-for-tests"})
    return server


def new_prefect_server(home: Path, port: int) -> Server:
    """``prefect server start`` on loopback with its own PREFECT_HOME."""
    return Server([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                   "--port", str(port)],
                  f"http://127.0.0.1:{port}", "/api/health", home,
                  {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
