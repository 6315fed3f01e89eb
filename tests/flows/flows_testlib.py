"""Faults the flow tests cause for real: a proxy that can cut the network, a process holding
the store's write lock, a look into the MLflow store while a run uploads; and the lax settings
the tests' weak model needs. Servers and polling: ``tests/helpers/servers.py``."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from ..helpers.servers import free_port

# Lax enough for the tests' model trained for seconds; tests that need a failing gate tighten it.
# The norm limit is the product's (3.0): the bolder null-space edits below grow an fc2 norm
# 1.5-2.6x on this model (2.61 measured on a night of the supersede test), as the product's do
LAX_GATE = {"locality_min": 0.85, "sensitive_min": 0.5, "accuracy_drop_max": 10.0,
            "generalization_min": 0.0, "norm_growth_max": 3.0, "retention_min": 0.85}
# the tests' weak model needs the localized editor's own bolder null-space settings to fix
# groups on a second night (the nightly's 0.999 / 1e-3 leave them unfixed in 100 steps)
LAX_EDIT = {"null_space_energy": 0.99, "lr": 3e-3, "group_locality_min": 0.93,
            "group_retention_min": 0.85, "group_generalization_min": 0.0,
            "group_min_heldout": 0,
            "min_group_size": 3, "max_groups": 3}


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
