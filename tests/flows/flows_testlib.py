"""Real processes and sockets the flow tests start and stop: servers on loopback, a proxy
that can cut the network, a lock holder, and a poll for what another process makes true."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
# Lax enough for the tests' model trained for seconds; tests that need a failing gate tighten it.
LAX_GATE = {"locality_min": 0.85, "sensitive_min": 0.5, "accuracy_drop_max": 10.0,
            "generalization_min": 0.0, "norm_growth_max": 2.0, "retention_min": 0.85}
# the tests' weak model needs the localized editor's own bolder null-space settings to fix
# groups on a second night (the nightly's 0.999 / 1e-3 leave them unfixed in 100 steps)
LAX_EDIT = {"null_space_energy": 0.99, "lr": 3e-3, "group_locality_min": 0.93,
            "group_retention_min": 0.85, "min_group_size": 3, "max_groups": 3}


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
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process, signal.SIGTERM)
            self.log.close()


def new_mlflow_server(root: Path, port: int) -> Server:
    """``mlflow server`` with one worker on a SQLite store under ``root`` (restartable)."""
    return Server([str(BIN / "mlflow"), "server",
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--default-artifact-root", (root / "artifacts").as_uri(),
                   "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
                  f"http://127.0.0.1:{port}", "/health", root,
                  {"MLFLOW_DISABLE_TELEMETRY": "true"})


def new_prefect_server(home: Path, port: int) -> Server:
    """``prefect server start`` on loopback with its own PREFECT_HOME."""
    return Server([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                   "--port", str(port)],
                  f"http://127.0.0.1:{port}", "/api/health", home,
                  {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})


def hold_write_lock(database: Path) -> subprocess.Popen:
    """Another process holding the SQLite write lock (as a long ingest batch would)."""
    code = ("import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(database)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def mlflow_runs_in_progress(database: Path, model: str) -> int:
    """Edit runs of ``model`` being logged right now (read straight from the store)."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(
                "select count(*) from tags a join tags b on a.run_uuid = b.run_uuid "
                "where a.key = 'vitedit.logged' and a.value = 'in-progress' "
                "and b.key = 'vitedit.registered_model' and b.value = ?", (model,)).fetchone()[0]
    except sqlite3.Error:
        return 0


class TcpProxy:
    """A loopback TCP proxy in front of a server: ``cut()`` is a network partition (new
    connections refused, open ones reset), ``restore()`` heals it on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._listener.close()
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
