"""Monitoring benchmark: batched ingest throughput (SQLite, PostgreSQL) and collector latency.

``run_benchmark(quick=False)`` measures ingest records/s on both backends and the
collector's latency on SQLite with 1,000,000 predictions and 100,000 feedback
rows (goal < 2 s). ``quick=True`` shrinks both sizes tenfold and says so in its output.
PostgreSQL is used through a throwaway database on ``VITEDIT_BENCH_PG_URL`` (default: the
local server) and skipped, with the reason, when none answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image

from monitoring.collector import Collector
from monitoring.images import ImageStore
from monitoring.ingest import Kind, ingest_file
from monitoring.logger import PredictionLogger
from monitoring.schema import EditLedger, Feedback, Prediction, table_of
from monitoring.store import MonitoringStore, open_store

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
COLLECTOR_GOAL_S = 2.0
NUM_CLASSES = 10


def _png(i: int) -> bytes:
    image = Image.new("RGB", (16, 16), (i % 256, (i // 256) % 256, (i // 65536) % 256))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _write_inputs(root: Path, n: int) -> tuple[Path, Path]:
    """n prediction records, each with its own PNG file, and n feedback records."""
    (root / "img").mkdir(parents=True)
    ts = "2026-11-20T10:00:00Z"
    with (root / "predictions.jsonl").open("w") as preds, \
            (root / "feedback.jsonl").open("w") as feedback:
        for i in range(n):
            data = _png(i)
            (root / "img" / f"{i}.png").write_bytes(data)
            preds.write(json.dumps({
                "id": f"req-{i}", "ts": ts, "model": "vit", "model_version": "1",
                "model_alias": "champion", "image_uri": f"img/{i}.png",
                "image_sha256": hashlib.sha256(data).hexdigest(),
                "predicted_class": i % NUM_CLASSES, "topk": [[i % NUM_CLASSES, 0.9]],
                "metadata": {"client": "bench"}}) + "\n")
            feedback.write(json.dumps({"prediction_id": f"req-{i}",
                                       "true_class": (i * 7) % NUM_CLASSES,
                                       "ts": ts, "source": "review"}) + "\n")
    return root / "predictions.jsonl", root / "feedback.jsonl"


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def _bench_ingest(url: str, inputs: tuple[Path, Path], n: int, root: Path) -> dict[str, Any]:
    """records/s for: new predictions (image fetched, verified, decoded, stored), a replay of
    the same file (all duplicates), feedback, and the logger's per-call cost."""
    predictions, feedback = inputs
    images = ImageStore(str(root / f"cas-{uuid.uuid4().hex[:6]}"))
    with open_store(url) as store:
        store.register_model("vit", NUM_CLASSES)
        runs: dict[str, float] = {}
        plan: list[tuple[str, Kind, Path]] = [("predictions_new", "predictions", predictions),
                                              ("predictions_replay", "predictions", predictions),
                                              ("feedback", "feedback", feedback)]
        for label, kind, path in plan:
            start = time.perf_counter()
            report = ingest_file(kind, path, store=store, images=images)
            runs[label] = time.perf_counter() - start
            if label != "predictions_replay" and report.accepted != n:
                raise RuntimeError(f"benchmark ingest lost records: {report.summary()}")
        logger = PredictionLogger(store, images, batch_size=500, max_queue=n + 1)
        image = _png(0)
        start = time.perf_counter()
        for i in range(n):
            logger.log(f"log-{i}", model="vit", model_version="1", predicted_class=1,
                       image=image)
        call_s = time.perf_counter() - start
        logger.flush()
        logged_s = time.perf_counter() - start
        logger.close()
    return {"records": n, "batch_size": 1000,
            **{f"{label}_per_s": _rate(n, s) for label, s in runs.items()},
            "logger_call_us": round(call_s / n * 1e6, 2),
            "logger_end_to_end_per_s": _rate(n, logged_s)}


@contextmanager
def _throwaway_pg_database() -> Iterator[str | None]:
    """A fresh database on the benchmark server (dropped afterwards), or None if none."""
    admin_url = os.environ.get("VITEDIT_BENCH_PG_URL", DEFAULT_PG_ADMIN_URL)
    try:
        import psycopg

        admin = psycopg.connect(sa.make_url(admin_url).set(drivername="postgresql")
                                .render_as_string(hide_password=False),
                                autocommit=True, connect_timeout=3)
    except Exception:
        yield None
        return
    name = f"vitedit_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _populate(store: MonitoringStore, n_predictions: int, n_feedback: int,
              now: datetime) -> None:
    """A production-like store: 60 days of traffic, 3 versions, ~10% repeated images, 30% of
    feedback disagreeing with its prediction, ~1% conflicting labels, 2,000 used images, and
    1,000 orphan feedback rows (their predictions never arrived)."""
    rng = random.Random(0)
    n_images = int(n_predictions * 0.9)
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n_images)]
    start = now - timedelta(days=60)
    store.register_model("vit", NUM_CLASSES)
    chunk = 50_000
    predicted: list[int] = []
    image_of: list[int] = []
    with store.write() as conn:
        for base in range(0, n_predictions, chunk):
            rows = []
            for i in range(base, min(base + chunk, n_predictions)):
                image = i if i < n_images else rng.randrange(n_images)
                cls = rng.randrange(NUM_CLASSES)
                predicted.append(cls)
                image_of.append(image)
                rows.append({
                    "id": f"req-{i:08d}", "model_name": "vit",
                    "ts": start + timedelta(seconds=i * 60 * 86400 / n_predictions),
                    "model_version": str(1 + i * 3 // n_predictions), "model_alias": "champion",
                    "image_uri": f"s3://prod/{shas[image]}.png", "image_sha256": shas[image],
                    "predicted_class": cls, "topk": [[cls, 0.8]], "request_metadata": {},
                    "content_hash": shas[image], "ingested_at": now})
            conn.execute(sa.insert(table_of(Prediction)), rows)
        labelled = rng.sample(range(n_predictions), n_feedback)
        feedback = []
        for k, i in enumerate(labelled):
            true = predicted[i] if rng.random() < 0.7 else (predicted[i] + 1) % NUM_CLASSES
            # labels arrive 0-3 days after the prediction, so most are past the orphan grace
            # period and the orphan check has real work to do, as it would in production
            arrived = min(now, start + timedelta(seconds=i * 60 * 86400 / n_predictions,
                                                 hours=rng.uniform(0, 72)))
            sha = shas[image_of[i]]
            feedback.append({"prediction_id": f"req-{i:08d}", "true_class": true,
                             "source": "review", "ts": arrived, "ingested_at": arrived,
                             "image_sha256": sha})
            if k % 100 == 0:  # a second reviewer disagreeing: a conflict
                feedback.append({"prediction_id": f"req-{i:08d}",
                                 "true_class": (true + 3) % NUM_CLASSES, "source": "audit",
                                 "ts": arrived, "ingested_at": arrived, "image_sha256": sha})
        feedback += [{"prediction_id": f"lost-{k}", "true_class": 1, "source": "review",
                      "ts": now, "ingested_at": now - timedelta(days=10),
                      "image_sha256": None} for k in range(1000)]
        for base in range(0, len(feedback), chunk):
            conn.execute(sa.insert(table_of(Feedback)), feedback[base:base + chunk])
        conn.execute(sa.insert(table_of(EditLedger)), [
            {"run_id": "bench-run", "model_name": "vit", "model_version": "2",
             "prediction_id": f"req-{i:08d}", "image_sha256": shas[image_of[i]],
             "recorded_at": now} for i in labelled[:2000]])
        if store.dialect == "sqlite":
            conn.exec_driver_sql("ANALYZE")


def _bench_collector(root: Path, n_predictions: int, n_feedback: int) -> dict[str, Any]:
    url = f"sqlite:///{root / 'collector.db'}"
    now = datetime.now(UTC)
    with open_store(url) as store:
        start = time.perf_counter()
        _populate(store, n_predictions, n_feedback, now)
        populate_s = time.perf_counter() - start
        collector = Collector(store, ImageStore(str(root / "collector-images")))
        orphans = collector.collect(now, "vit").summary.orphans_expired  # quarantines 1,000
        timings: dict[str, list[float]] = {"full_window": [], "last_7_days": [],
                                           "confirmed_correct_1000": []}
        result = None
        for _ in range(3):
            for label, since in (("full_window", now - timedelta(days=61)),
                                 ("last_7_days", now - timedelta(days=7))):
                begin = time.perf_counter()
                collected = collector.collect(since, "vit")
                timings[label].append(time.perf_counter() - begin)
                result = collected if label == "full_window" else result
            begin = time.perf_counter()
            collector.confirmed_correct(now - timedelta(days=61), "vit", limit=1000)
            timings["confirmed_correct_1000"].append(time.perf_counter() - begin)
    assert result is not None
    summary = result.summary
    worst_median = statistics.median(timings["full_window"])
    return {"backend": "sqlite", "predictions": n_predictions, "feedback": n_feedback,
            "populate_s": round(populate_s, 1),
            **{f"{label}_s_median": round(statistics.median(v), 3)
               for label, v in timings.items()},
            **{f"{label}_s_runs": [round(x, 3) for x in v] for label, v in timings.items()},
            "full_window_result": {"groups": summary.groups,
                                   "orphans_expired_first_run": orphans,
                                   "misclassified_feedback": summary.misclassified_feedback,
                                   "images": summary.images, "conflicts": summary.conflicts,
                                   "already_used": summary.already_used},
            "goal_s": COLLECTOR_GOAL_S, "goal_met": worst_median < COLLECTOR_GOAL_S}


def run_benchmark(quick: bool) -> dict[str, Any]:
    """Ingest throughput (SQLite, PostgreSQL) and collector latency; see the module doc."""
    n_ingest = 2_000 if quick else 20_000
    n_predictions, n_feedback = (100_000, 10_000) if quick else (1_000_000, 100_000)
    out: dict[str, Any] = {
        "quick": quick,
        "note": ("QUICK MODE: 1/10 of the full sizes (100,000 predictions, 10,000 feedback "
                 "for the collector); run without --quick for the real figures") if quick
        else "full sizes: 1,000,000 predictions and 100,000 feedback for the collector",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
    }
    with tempfile.TemporaryDirectory(prefix="vitedit-bench-") as tmp:
        root = Path(tmp)
        inputs = _write_inputs(root / "inputs", n_ingest)
        out["ingest"] = {"sqlite": _bench_ingest(f"sqlite:///{root / 'ingest.db'}", inputs,
                                                 n_ingest, root)}
        with _throwaway_pg_database() as pg_url:
            out["ingest"]["postgresql"] = (
                _bench_ingest(pg_url, inputs, n_ingest, root) if pg_url else
                {"skipped": "no PostgreSQL server answered (set VITEDIT_BENCH_PG_URL)"})
        out["collector"] = _bench_collector(root, n_predictions, n_feedback)
    return out
