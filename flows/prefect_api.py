"""The Prefect API a command's flows run against: the configured one, or a server it starts.

With ``PREFECT_API_URL`` set (a deployment, a worker, an operator's server) that API is used
as it is. Otherwise a command that runs flows (``vitedit-ops nightly``, ``demo``, the
continual benchmark) starts ``prefect server start`` on a free loopback port with a private
``PREFECT_HOME``, waits for it with a generous timeout (start-up takes 10-60 s on a loaded
2-core machine, where Prefect's own ephemeral server gives up), and stops it afterwards. If it
still does not answer, one line says so and where its log is (exit code 4).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from vitedit_ops.errors import InfrastructureError
from vitedit_ops.settings import environment

STARTUP_TIMEOUT_SECONDS = 300.0
ENV_TIMEOUT = "VITEDIT_PREFECT_STARTUP_TIMEOUT"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_executable() -> str:
    beside = Path(sys.executable).parent / "prefect"
    return str(beside) if beside.is_file() else (shutil.which("prefect") or "prefect")


@contextmanager
def prefect_api(startup_timeout: float | None = None) -> Iterator[str]:
    """Yield the API URL flows in this process use; start (and stop) a local server when
    none is configured."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    timeout = startup_timeout or float(os.environ.get(ENV_TIMEOUT, STARTUP_TIMEOUT_SECONDS))
    home = Path(tempfile.mkdtemp(prefix="vitedit-prefect-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log_path = home / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [_prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port",
             str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    try:
        _wait_healthy(process, url, timeout, log_path)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with environment({"PREFECT_API_URL": url}), \
                temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        _drain()
        _stop(process)
        shutil.rmtree(home, ignore_errors=True)


def _drain() -> None:
    """Send the logs and events still queued for the server before it stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=30)
        except Exception:  # noqa: BLE001 - best effort: the flows' results are already back
            pass


def _wait_healthy(process: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InfrastructureError(f"the local Prefect server exited with code "
                                      f"{process.returncode} while starting (log: {log})")
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise InfrastructureError(f"the local Prefect server did not answer within {timeout:.0f} s "
                              f"(set {ENV_TIMEOUT} to wait longer, or PREFECT_API_URL to use "
                              f"a running server; log: {log})")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
