"""The bulk insert path (PostgreSQL COPY, SQLite executemany) on big batches, on both backends:
a row the database refuses costs itself only, even in a batch of thousands, and what the bulk
path stores is exactly what the row-by-row path would have stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import monitoring.ingest
from monitoring.images import ImageStore
from monitoring.logger import PredictionLogger
from monitoring.schema import Prediction
from monitoring.store import MonitoringStore

from .monitoring_testlib import png_bytes
from .test_unstorable_records import poisons, staged_prediction

BIG = 3000


def test_a_poison_row_in_a_big_batch_costs_only_itself(store: MonitoringStore) -> None:
    bad = poisons(store)
    staged = [staged_prediction(i) for i in range(BIG)]
    where = [0, BIG // 2, BIG - 1][:len(bad)]
    for k, (at, row) in enumerate(zip(where, bad, strict=False)):
        staged.insert(at + k, staged_prediction(10_000 + k, **row))
    outcome = store.write_predictions(staged, [])
    assert (outcome.accepted, outcome.duplicates) == (BIG, 0)
    assert outcome.reasons == {"store_refused": len(bad)}
    assert store.counts()["predictions"] == BIG
    refused = {q.record_id for q in store.quarantined(reason="store_refused")}
    assert refused == {f"direct-{10_000 + k}" for k in range(len(bad))}

    again = store.write_predictions(staged, [])  # a replay: nothing new, nothing twice
    assert (again.accepted, again.duplicates) == (0, BIG)
    assert store.counts()["predictions"] == BIG
    assert store.counts()["quarantine"] == len(bad)


def test_the_bulk_path_stores_the_rows_as_given(store: MonitoringStore) -> None:
    """Timestamps (UTC), JSON columns and NULLs come back as an INSERT would store them."""
    ts = datetime(2026, 11, 20, 10, 30, 15, 123456, tzinfo=UTC)
    rows = [staged_prediction(i, ts=ts, model_alias=None if i % 2 else "champion",
                              topk=[[1, 0.75], [2, 0.25]], request_metadata={"k": [i, "é"]})
            for i in range(600)]
    assert store.write_predictions(rows, []).accepted == 600
    with store.read() as conn:
        got = {r.id: r for r in conn.execute(
            Prediction.__table__.select().where(Prediction.id.in_(["direct-0", "direct-1"])))}
    first, second = got["direct-0"], got["direct-1"]
    assert first.ts == ts and first.ts.tzinfo is not None
    assert (first.model_alias, second.model_alias) == ("champion", None)
    assert first.topk == [[1, 0.75], [2, 0.25]]
    assert second.request_metadata == {"k": [1, "é"]}


def test_the_logger_loses_nothing_around_a_poison_row_in_a_big_batch(
        store: MonitoringStore, images: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation bug, injected (no real record is known to get past validation and then be
    refused): one row of a 2,000-record batch carries a numpy float into a JSON column,
    which the database driver refuses; the other 1,999 and the next batch are stored."""
    real = monitoring.ingest.parse_prediction

    def leaky(data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        row = real(data, **kwargs)
        if row["id"] == "req-777":
            row["request_metadata"] = {"score": np.float32(0.5)}
        return row

    monkeypatch.setattr(monitoring.ingest, "parse_prediction", leaky)
    with PredictionLogger(store, images, batch_size=2000, flush_interval=0.5,
                          max_queue=5000) as logger:
        for i in range(2500):
            assert logger.log(f"req-{i}", model="vit", model_version="1",
                              predicted_class=i % 10, topk=[[i % 10, 0.9]],
                              image=png_bytes(i % 50), image_decoded=i % 2 == 0)
        # the header check that replaces a second decode still refuses what is no image
        assert logger.log("req-junk", model="vit", model_version="1", predicted_class=1,
                          image=b"not an image", image_decoded=True)
        assert logger.flush(timeout=120)
        stats = logger.stats()
    assert (stats.accepted, stats.quarantined, stats.lost, stats.dropped) == (2499, 2, 0, 0)
    assert {q.record_id: q.reason for q in store.quarantined()} == {
        "req-777": "store_refused", "req-junk": "corrupt_image"}
    assert store.counts()["predictions"] == 2499
