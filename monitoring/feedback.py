"""Delayed feedback: true labels for predictions, from files or from Python.

Feedback may come days late, before its prediction, or twice. A repeat of the same
(prediction, class, source) is a duplicate; a different class for the same image is kept and
left to the collector, which quarantines the conflict instead of guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from .records import IngestReport, RawRecord, batched
from .store import MonitoringStore, QuarantineEntry, StagedRecord
from .validation import (
    DEFAULT_MAX_CLOCK_SKEW,
    Rejected,
    parse_class_index,
    parse_text,
    parse_timestamp,
    require,
    utcnow,
)

DEFAULT_SOURCE = "unspecified"


def parse_feedback(data: dict[str, Any], *, now: datetime,
                   max_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW) -> dict[str, Any]:
    """A feedback row from a record with ``prediction_id``, ``true_class``, ``ts``, ``source``."""
    prediction_id = parse_text(require(data, "prediction_id"), "prediction_id")
    true_class = parse_class_index(require(data, "true_class"), "true_class")
    ts = parse_timestamp(require(data, "ts"), now=now, max_skew=max_skew)
    source = data.get("source")
    source = parse_text(source, "source") if source not in (None, "") else DEFAULT_SOURCE
    return {"prediction_id": prediction_id, "true_class": true_class, "source": source,
            "ts": ts, "ingested_at": now}


def ingest_feedback(store: MonitoringStore, records: Iterable[RawRecord], *,
                    batch_size: int = 1000,
                    max_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW) -> IngestReport:
    """Validate and store feedback, one transaction per batch."""
    report = IngestReport()
    for batch in batched(records, batch_size):
        now = utcnow()
        staged: list[StagedRecord] = []
        rejected: list[QuarantineEntry] = []
        for record in batch:
            try:
                staged.append(StagedRecord(parse_feedback(record.parsed(), now=now,
                                                          max_skew=max_skew),
                                           record.origin, record.raw))
            except Rejected as exc:
                rejected.append(record.reject("feedback", exc))
        report.add(store.write_feedback(staged, rejected))
    return report


def submit_feedback(store: MonitoringStore, items: Iterable[Mapping[str, Any]], *,
                    origin: str = "api") -> IngestReport:
    """The Python feedback API: mappings shaped like the JSON Lines records.

    ``ts`` defaults to now, so a review tool can send just the id, class and source.
    """
    now = utcnow()
    records = (RawRecord.from_mapping({"ts": now, **item}, origin) for item in items)
    return ingest_feedback(store, records)


def record_feedback(store: MonitoringStore, prediction_id: str, true_class: int, *,
                    source: str = DEFAULT_SOURCE, ts: datetime | None = None) -> IngestReport:
    """One label for one prediction (see ``submit_feedback``)."""
    item: dict[str, Any] = {"prediction_id": prediction_id, "true_class": true_class,
                            "source": source}
    if ts is not None:
        item["ts"] = ts
    return submit_feedback(store, [item])
