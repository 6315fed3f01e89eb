"""MLflow runs in the states a crash leaves behind, made for real by a killed process."""

from __future__ import annotations

import subprocess
import sys


def run_left_running(tracking_uri: str, registered_model: str, kind: str = "edit") -> str:
    """The id of a run a process created the way a night does (``registry.runs.create_run``)
    and was then killed with SIGKILL before it finished logging: it stays RUNNING."""
    script = f"""
import os, signal
from registry.client import connect, experiment_id
from registry.runs import create_run
conn = connect({tracking_uri!r})
run_id = create_run(conn, experiment_id(conn, {registered_model!r}), "doomed",
                    {{"vitedit.kind": {kind!r}}})
print(run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    return done.stdout.split()[0]
