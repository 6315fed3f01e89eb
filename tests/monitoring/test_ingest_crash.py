"""Crash safety: a real ``vitedit-ops ingest`` process is killed with SIGKILL mid-run; a re-run
then leaves no duplicates and loses nothing, and every committed batch is whole."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from .monitoring_testlib import png_bytes

from monitoring.schema import Feedback, Prediction, Quarantine
from monitoring.store import open_store

N_LINES = 4000
BATCH = 200          # every batch of 200 lines holds exactly one bad line...
BAD_EVERY = BATCH    # ...so a committed batch adds 199 rows and 1 quarantine row, or nothing
N_IMAGES = 100
CLI = [sys.executable, "-c", "from vitedit_ops.cli import main; main()"]


def write_inputs(src: Path) -> tuple[Path, Path, set[str]]:
    shas = []
    for k in range(N_IMAGES):
        data = png_bytes(k)
        (src / f"img_{k}.png").write_bytes(data)
        shas.append(hashlib.sha256(data).hexdigest())
    good: set[str] = set()
    with (src / "predictions.jsonl").open("w") as preds, \
            (src / "feedback.jsonl").open("w") as feedback:
        for i in range(N_LINES):
            if i % BAD_EVERY == BAD_EVERY // 2:
                preds.write(f'{{"id": "broken-{i}", "ts": \n')
                feedback.write(f'{{"prediction_id": "broken-{i}"\n')
                continue
            k = i % N_IMAGES
            preds.write(json.dumps({
                "id": f"req-{i}", "ts": "2026-11-20T10:00:00Z", "model": "vit",
                "model_version": "1", "image_uri": f"img_{k}.png", "image_sha256": shas[k],
                "predicted_class": k % 10, "topk": [[k % 10, 0.8]]}) + "\n")
            feedback.write(json.dumps({"prediction_id": f"req-{i}", "true_class": (k + 1) % 10,
                                       "ts": "2026-11-21T10:00:00Z", "source": "review"}) + "\n")
            good.add(f"req-{i}")
    return src / "predictions.jsonl", src / "feedback.jsonl", good


class Counter:
    """Counts rows of a table and its quarantine rows over one long-lived engine."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))

    def __call__(self, table: type) -> tuple[int, int]:
        kind = "prediction" if table is Prediction else "feedback"
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            quarantined = conn.execute(sa.select(sa.func.count()).select_from(Quarantine)
                                       .where(Quarantine.kind == kind)).scalar_one()
        return rows, quarantined


def kill_mid_run(args: list[str], count: Counter, table: type) -> tuple[int, int]:
    """Start the CLI, SIGKILL it once two batches are committed; return what survived."""
    process = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while count(table)[0] < 2 * (BATCH - 1):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert process.poll() is None, "the ingest finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return count(table)


def run(args: list[str]) -> str:
    done = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def crash_and_rerun(url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    predictions, feedback, good = write_inputs(src)
    common = ["--store-url", url, "--batch-size", str(BATCH)]
    run(["ingest", "model", "vit", "--num-classes", "10", "--store-url", url])
    images = ["--image-store-url", str(tmp_path / "cas")]
    per_batch = BATCH - 1
    count = Counter(url)

    for kind, path, table, extra in (("predictions", predictions, Prediction, images),
                                     ("feedback", feedback, Feedback, [])):
        rows, quarantined = kill_mid_run(["ingest", kind, str(path), *common, *extra], count,
                                         table)
        assert 0 < rows < len(good)  # killed mid-run...
        assert rows == per_batch * quarantined  # ...with only whole batches committed
        out = run(["ingest", kind, str(path), *common, *extra])
        assert f"accepted {len(good) - rows}, duplicate {rows}," in out
        assert count(table) == (len(good), N_LINES // BAD_EVERY)
    count.engine.dispose()

    with open_store(url) as store:
        with store.read() as conn:
            ids = set(conn.execute(sa.select(Prediction.id)).scalars())
            labelled = conn.execute(sa.select(Feedback.prediction_id)).scalars().all()
        assert ids == good and sorted(labelled) == sorted(good)  # nothing lost, nothing twice
        assert all(q.reason == "malformed" for q in store.quarantined())


def test_sigkill_mid_ingest_then_rerun_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    crash_and_rerun(sqlite_url, tmp_path)


@pytest.mark.postgres
def test_sigkill_mid_ingest_then_rerun_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    crash_and_rerun(pg_url, tmp_path)
