"""Records the database would refuse: each costs itself only, on SQLite and PostgreSQL.

They are refused by validation in the form the store keeps them (strict JSON, no NUL, the
columns' integer range); a row that still reaches the database and is refused there is found
by inserting the batch row by row and quarantined as ``store_refused``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitoring.images import ImageStore
from monitoring.ingest import ingest_file
from monitoring.store import MonitoringStore, QuarantineEntry, StagedRecord

TS = "2026-11-20T10:00:00Z"


def reasons(store: MonitoringStore) -> dict[str, str]:
    """record id (or raw payload) -> reason of everything quarantined."""
    return {q.record_id or q.raw: q.reason for q in store.quarantined()}


def test_a_bad_prediction_costs_only_itself(store: MonitoringStore, images: ImageStore,
                                            src: Path, prediction: Any) -> None:
    good = [prediction(i) for i in range(6)]
    lines = [json.dumps(r) for r in good[:3]]
    lines += [
        json.dumps(prediction(10, metadata={"score": float("nan")})),   # NaN token
        json.dumps(prediction(11, metadata={"note": "a\u0000b"})),      # escaped NUL
        json.dumps(prediction(12, model_alias="champ\u0000ion")),
        json.dumps(prediction(13, metadata={"deep": {"x": 1e400}})),   # Infinity token
        json.dumps(prediction(14, predicted_class=3e9)),
        json.dumps(prediction(15))[:-1] + ', "id": "dup"}',             # duplicate key
        '{"id": "raw-nul\x00", "model": "vit"}',                        # a NUL byte in the line
    ]
    lines += [json.dumps(r) for r in good[3:]]
    path = src / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")

    report = ingest_file("predictions", path, store=store, images=images, batch_size=100)
    assert (report.accepted, report.quarantined) == (6, 7), report.to_dict()
    assert store.counts()["predictions"] == 6
    found = reasons(store)
    assert found["pred-11"] == found["pred-12"] == found["pred-14"] == "invalid_field"
    assert {r.reason for r in store.quarantined() if r.record_id is None} == {"malformed"}
    [nul_line] = [q for q in store.quarantined() if "raw-nul" in q.raw]
    assert "raw-nul\\x00" in nul_line.raw  # kept, NUL spelled out (PostgreSQL text has none)

    again = ingest_file("predictions", path, store=store, images=images, batch_size=100)
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 6, 7)
    assert store.counts()["quarantine"] == 7


def test_feedback_beyond_the_integer_column_is_refused_not_fatal(
        store: MonitoringStore, images: ImageStore, src: Path) -> None:
    lines = [{"prediction_id": f"later-{i}", "true_class": 3, "ts": TS} for i in range(4)]
    lines.insert(2, {"prediction_id": "later-x", "true_class": 3e9, "ts": TS})
    path = src / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = ingest_file("feedback", path, store=store, images=images)
    assert (report.accepted, report.pending, report.quarantined) == (4, 4, 1)
    [refused] = store.quarantined()
    assert refused.reason == "invalid_field" and "3000000000" in refused.detail


def staged_prediction(i: int, **row: Any) -> StagedRecord:
    base = {"id": f"direct-{i}", "ts": datetime(2026, 11, 20, tzinfo=UTC), "model_name": "vit",
            "model_version": "1", "model_alias": None, "image_uri": f"file:///img/{i}",
            "image_sha256": f"{i:064x}", "predicted_class": 1, "topk": [],
            "request_metadata": {}, "content_hash": f"{i:064x}",
            "ingested_at": datetime(2026, 11, 21, tzinfo=UTC)}
    return StagedRecord({**base, **row}, f"test:{i}", json.dumps({"i": i}))


def poisons(store: MonitoringStore) -> list[dict[str, Any]]:
    """Rows validation would refuse, handed to the store directly; every backend refuses a
    numpy float in a JSON column, PostgreSQL also NaN and a class beyond 32 bits."""
    rows = [{"request_metadata": {"p": np.float32(0.5)}}]
    if store.dialect == "postgresql":
        rows += [{"request_metadata": {"p": float("nan")}}, {"predicted_class": 3_000_000_000}]
    return rows


def test_rows_the_database_refuses_are_quarantined_one_by_one(store: MonitoringStore) -> None:
    bad = poisons(store)
    staged = [staged_prediction(i) for i in range(3)]
    staged += [staged_prediction(100 + k, **row) for k, row in enumerate(bad)]
    staged += [staged_prediction(i) for i in range(3, 6)]
    earlier = QuarantineEntry("prediction", "malformed", "not JSON", "test:x", "{oops")
    outcome = store.write_predictions(staged, [earlier])
    assert (outcome.accepted, outcome.duplicates) == (6, 0)
    assert outcome.reasons == {"store_refused": len(bad), "malformed": 1}
    assert store.counts()["predictions"] == 6
    refused = [q for q in store.quarantined() if q.reason == "store_refused"]
    assert sorted(q.record_id for q in refused) == [f"direct-{100 + k}" for k in range(len(bad))]
    assert all(q.detail.startswith("the store refused the row: ") for q in refused)


def test_feedback_rows_the_database_refuses_are_quarantined(store: MonitoringStore) -> None:
    def staged(i: int, **row: Any) -> StagedRecord:
        base = {"prediction_id": f"p-{i}", "true_class": 1, "source": "review",
                "ts": datetime(2026, 11, 20, tzinfo=UTC),
                "ingested_at": datetime(2026, 11, 21, tzinfo=UTC)}
        return StagedRecord({**base, **row}, f"test:{i}", "{}")

    naive = datetime(2026, 11, 20)  # the store's UTC column refuses it on every backend
    bad = [staged(9, ts=naive)]
    if store.dialect == "postgresql":
        bad.append(staged(8, true_class=3_000_000_000))
    outcome = store.write_feedback([staged(0), *bad, staged(1)], [])
    assert (outcome.accepted, outcome.reasons) == (2, {"store_refused": len(bad)})
    assert store.counts()["feedback"] == 2


@pytest.mark.parametrize("count", [0, 2**31])
def test_model_class_counts_must_fit_the_store(store: MonitoringStore, count: int) -> None:
    from vitedit_ops.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        store.register_model("too-many", count)
