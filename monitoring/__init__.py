"""monitoring adapter of vitedit-ops: production prediction log, feedback, error collection.

The public API is re-exported lazily, so ``import monitoring.cli`` (done by every
``vitedit-ops`` invocation) does not import SQLAlchemy, Alembic or PIL::

    from monitoring import open_store, open_image_store, Collector, PredictionLogger
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "open_store": "store", "MonitoringStore": "store", "QuarantinedRecord": "store",
    "StoreUnavailableError": "store",
    "ImageStore": "images", "open_image_store": "images", "ImageIntegrityError": "images",
    "Ingestor": "ingest", "ingest_file": "ingest", "read_records": "ingest",
    "IngestReport": "records", "RawRecord": "records",
    "submit_feedback": "feedback", "record_feedback": "feedback",
    "PredictionLogger": "logger", "LoggerStats": "logger",
    "Collector": "collector", "Collection": "collector", "CollectSummary": "collector",
    "LabeledImage": "collector", "EditedImage": "collector",
    "Reason": "validation", "UriPolicy": "validation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'monitoring' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
