"""Delayed feedback: late, early (before its prediction), twice, conflicting, and bad."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitoring.collector import Collector
from monitoring.feedback import record_feedback, submit_feedback
from monitoring.ingest import ingest_file
from monitoring.records import RawRecord
from monitoring.validation import utcnow


def ingest_predictions(ingestor: Any, records: list[dict[str, Any]]) -> None:
    outcome = ingestor.prediction_batch([RawRecord.from_mapping(r, "test") for r in records])
    assert outcome.accepted == len(records), outcome


def feedback(pid: str, true_class: Any, source: Any = "review", **extra: Any) -> dict[str, Any]:
    return {"prediction_id": pid, "true_class": true_class, "source": source,
            "ts": "2026-11-21T09:00:00Z", **extra}


def test_feedback_file_bad_inputs_are_quarantined(store: Any, images: Any, ingestor: Any,
                                                  prediction: Any, write_jsonl: Any) -> None:
    ingest_predictions(ingestor, [prediction(1)])
    path = write_jsonl("feedback.jsonl", [
        feedback("pred-1", 3),
        "not json at all",
        {"true_class": 3, "ts": "2026-11-21T09:00:00Z"},         # no prediction_id
        feedback("pred-1", "three"),                               # not a class index
        feedback("pred-1", 4, source={"who": "x"}),                # source not a string
        feedback("pred-1", 11),                                    # the model has 10 classes
        feedback("pred-1", 5, ts="soon"),
        feedback("pred-1", 6, ts=(utcnow() + timedelta(days=2)).isoformat()),
        feedback("pred-1", 3),                                     # the same label twice
    ])
    report = ingest_file("feedback", path, store=store, images=images)
    assert (report.accepted, report.duplicates, report.pending) == (1, 1, 0)
    assert report.reasons == Counter({"malformed": 1, "missing_field": 1, "invalid_field": 2,
                                      "unknown_class": 1, "bad_timestamp": 1,
                                      "future_timestamp": 1})
    assert {int(q.origin.rsplit(":", 1)[1]): q.reason for q in store.quarantined()} == {
        2: "malformed", 3: "missing_field", 4: "invalid_field", 5: "invalid_field",
        6: "unknown_class", 7: "bad_timestamp", 8: "future_timestamp"}


def test_feedback_may_arrive_before_its_prediction(store: Any, images: Any, ingestor: Any,
                                                   prediction: Any) -> None:
    report = submit_feedback(store, [feedback("pred-1", 4)])
    assert (report.accepted, report.pending) == (1, 1)
    assert store.counts()["pending_feedback"] == 1
    ingest_predictions(ingestor, [prediction(1)])  # predicted 1, truly 4
    assert store.counts()["pending_feedback"] == 0
    groups = Collector(store, images).collect(utcnow() - timedelta(days=3650), "vit").groups
    assert [g.key for g in groups] == ["4->1"]


def test_feedback_whose_prediction_never_arrives_is_quarantined_after_a_grace_period(
        store: Any) -> None:
    record_feedback(store, "ghost", 2, source="downstream")
    assert store.settle_pending_feedback(timedelta(days=7)) == 0  # still within grace
    assert store.settle_pending_feedback(timedelta(0), now=utcnow() + timedelta(seconds=1)) == 1
    [entry] = store.quarantined()
    assert (entry.reason, entry.record_id, entry.kind) == ("unknown_prediction_id", "ghost",
                                                           "feedback")
    assert '"true_class": 2' in entry.raw and '"source": "downstream"' in entry.raw
    assert store.counts()["feedback"] == 0


def test_early_feedback_with_an_unknown_class_is_quarantined_by_the_collector(
        store: Any, images: Any, ingestor: Any, prediction: Any) -> None:
    assert submit_feedback(store, [feedback("pred-1", 12)]).pending == 1  # model unknown yet
    ingest_predictions(ingestor, [prediction(1)])
    result = Collector(store, images).collect(utcnow() - timedelta(days=3650), "vit")
    assert result.groups == () and result.summary.unknown_class == 1
    assert [q.reason for q in store.quarantined()] == ["unknown_class"]
    assert store.counts()["feedback"] == 0


def test_feedback_twice_and_from_two_sources(store: Any, ingestor: Any,
                                             prediction: Any) -> None:
    ingest_predictions(ingestor, [prediction(1)])
    assert submit_feedback(store, [feedback("pred-1", 3)]).accepted == 1
    again = submit_feedback(store, [feedback("pred-1", 3), feedback("pred-1", 3, "downstream")])
    assert (again.accepted, again.duplicates) == (1, 1)  # a second source corroborates
    assert store.counts()["feedback"] == 2


@pytest.mark.parametrize("ts", [None, "2026-11-21T09:00:00+01:00"])
def test_the_python_feedback_api_defaults_the_time(store: Any, ts: str | None, tmp_path: Path,
                                                   ) -> None:
    report = record_feedback(store, "pred-9", 1, ts=ts)  # type: ignore[arg-type]
    assert report.accepted == 1 and report.quarantined == 0


def test_a_conflicting_label_that_came_before_its_prediction_is_still_seen(
        store: Any, images: Any, ingestor: Any, prediction: Any) -> None:
    ingest_predictions(ingestor, [prediction(1)])
    submit_feedback(store, [feedback("pred-1", 3), feedback("pred-1-again", 5)])
    same_image = {**prediction(1), "id": "pred-1-again"}
    ingest_predictions(ingestor, [same_image])  # arrives after its (conflicting) label
    result = Collector(store, images).collect(utcnow() - timedelta(days=3650), "vit")
    assert result.groups == () and result.summary.conflicts == 1
    assert [q.reason for q in store.quarantined()] == ["conflicting_feedback"]
