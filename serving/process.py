"""``vitedit-ops serve`` as a child process on loopback, for the demo and the benchmark.

Started in its own process group with its log in a file; ``start`` waits (generously: the
first start imports torch and onnxruntime and verifies the champion) until ``/readyz`` names
a version, and fails in one line, with the log's last line, if the process exits or the wait
runs out. ``stop`` sends SIGTERM, which writes every queued prediction before the exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from vitedit_ops.errors import InfrastructureError

from .client import ServingClient

START_TIMEOUT = 600.0  # seconds; a loaded 2-core machine took ~20 s, a cold one longer
STOP_TIMEOUT = 120.0   # seconds for the logger to write its queue after SIGTERM


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """One ``vitedit-ops serve --model MODEL`` on 127.0.0.1; a context manager."""

    def __init__(self, model: str, log_path: Path, *options: str,
                 env: Mapping[str, str] | None = None, port: int | None = None) -> None:
        self.model = model
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.argv = [sys.executable, "-m", "vitedit_ops", "serve", "--model", model,
                     "--port", str(self.port), *options]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.version: str | None = None

    def start(self, timeout: float = START_TIMEOUT) -> ServeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        with ServingClient(self.url) as client:
            while (version := client.ready_version()) is None:
                if self.process.poll() is not None:
                    raise InfrastructureError(
                        f"vitedit-ops serve exited ({self.process.returncode}) before serving "
                        f"{self.model}: {self.last_log_line()} (log: {self.log_path})")
                if time.monotonic() > deadline:
                    self.stop()
                    raise InfrastructureError(
                        f"vitedit-ops serve did not serve {self.model} within {timeout:.0f} s: "
                        f"{self.last_log_line()} (log: {self.log_path})")
                time.sleep(0.25)
        self.version = version
        return self

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "empty log"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (the queued predictions are written), SIGKILL if it outlasts ``timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
