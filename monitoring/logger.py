"""PredictionLogger: what serving code calls once per request.

``log()`` only puts a small tuple on a bounded queue, so a slow or locked database never slows
a request; a background thread validates and writes batches (on size, on time, on ``flush()``,
``close()`` and interpreter exit). When the queue is full the record is dropped and counted
rather than blocking the caller: serving latency wins over completeness, and ``stats()`` says
what was lost. A write that fails because of the store is retried; one that fails because of
a record is written again record by record, and the record that fails alone is quarantined,
so one bad record never holds up the others.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .images import ImageStore
from .ingest import Ingestor
from .records import RawRecord
from .store import BatchOutcome, MonitoringStore, unavailable
from .validation import Reason, Rejected, UriPolicy, utcnow

log = logging.getLogger(__name__)
_LIVE: weakref.WeakSet[PredictionLogger] = weakref.WeakSet()


@dataclass(frozen=True)
class LoggerStats:
    """Counters since the logger started."""

    logged: int = 0        # accepted onto the queue by log()
    accepted: int = 0      # stored as new predictions
    duplicates: int = 0    # replays of an id already stored with the same content
    quarantined: int = 0   # refused and kept in quarantine
    dropped: int = 0       # refused by log() because the queue was full or the logger closed
    failed_writes: int = 0  # batch writes the store failed (retried)
    lost: int = 0          # records still unwritten when close() gave up


class _Control:
    def __init__(self, stop: bool) -> None:
        self.stop = stop
        self.done = threading.Event()


class PredictionLogger:
    """Thread-safe, batching, non-blocking prediction log for serving code.

    Images can be handed over as bytes (copied into the image store) or referenced by
    ``image_uri`` (+ ``image_sha256``), which ``policy`` must allow.
    """

    def __init__(self, store: MonitoringStore, images: ImageStore, *, batch_size: int = 256,
                 flush_interval: float = 1.0, max_queue: int = 10_000,
                 retry_interval: float = 2.0, policy: UriPolicy | None = None,
                 image_workers: int = 2) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        # image hashing and file writes release the GIL: a second thread overlaps them
        self._ingestor = Ingestor(store, images, policy=policy, batch_size=batch_size,
                                  workers=image_workers)
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._counts = dict.fromkeys(LoggerStats.__dataclass_fields__, 0)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._last_drop_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # -- caller side ----------------------------------------------------------------------
    def log(self, prediction_id: str, *, model: str, model_version: str, predicted_class: int,
            topk: Any = None, image: bytes | None = None, image_uri: str | None = None,
            image_sha256: str | None = None, model_alias: str | None = None,
            ts: datetime | None = None, metadata: dict[str, Any] | None = None,
            image_decoded: bool = False) -> bool:
        """Queue one prediction; returns False (and counts a drop) instead of ever blocking.

        ``image_decoded``: the caller decoded ``image`` in full already (a server does, to
        predict), so the logger checks its format and size from the header instead of
        decoding it a second time."""
        record = {"id": prediction_id, "ts": ts or utcnow(), "model": model,
                  "model_version": model_version, "model_alias": model_alias,
                  "predicted_class": predicted_class, "topk": topk, "image_uri": image_uri,
                  "image_sha256": image_sha256, "metadata": metadata}
        if not self._closing.is_set():
            try:
                self._queue.put_nowait((record, image, image_decoded))
                self._count(logged=1)
                return True
            except queue.Full:
                pass
        self._count(dropped=1)
        now = time.monotonic()
        if now - self._last_drop_warning > 60:
            self._last_drop_warning = now
            log.warning("prediction logger: %d record(s) dropped so far (queue full or logger "
                        "closed; see stats().dropped)", self.stats().dropped)
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything logged before this call is stored or quarantined; False on
        timeout, or, once closed, if close() lost records."""
        if self._closing.is_set():
            self._thread.join(timeout)
            return not self._thread.is_alive() and self.stats().lost == 0
        deadline = None if timeout is None else time.monotonic() + timeout
        control = _Control(stop=False)
        try:
            self._queue.put(control, timeout=timeout)
        except queue.Full:
            return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return control.done.wait(left)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued (one attempt if the store is failing) and stop the thread."""
        if self._closing.is_set():
            self._thread.join(timeout)
            return
        self._closing.set()
        try:
            self._queue.put(_Control(stop=True), timeout=timeout)
        except queue.Full:
            log.error("prediction logger: could not stop cleanly; queued records are lost")
        self._thread.join(timeout)
        self._ingestor.close()
        _LIVE.discard(self)
        stats = self.stats()
        if stats.dropped or stats.lost:
            log.warning("prediction logger closed: %d record(s) dropped, %d lost (%s)",
                        stats.dropped, stats.lost, stats)

    def stats(self) -> LoggerStats:
        with self._lock:
            return LoggerStats(**self._counts)

    def __enter__(self) -> PredictionLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                self._counts[key] += delta

    # -- background side --------------------------------------------------------------------
    def _run(self) -> None:
        buffer: list[RawRecord] = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            control = item if isinstance(item, _Control) else None
            items = [item] if item is not None and control is None else []
            if control is not None and control.stop:
                items += self._drain()  # records that raced close() past the stop marker
            for record, image, decoded in items:
                buffer.append(RawRecord.from_mapping(record, "logger", image=image,
                                                     image_decoded=decoded))
                deadline = deadline or time.monotonic() + self.flush_interval
            due = len(buffer) >= self.batch_size or control is not None or (
                deadline is not None and time.monotonic() >= deadline)
            if buffer and due:
                self._write(buffer)
            if not buffer:
                deadline = None
            if control is not None:
                control.done.set()
                if control.stop:
                    return

    def _drain(self) -> list[Any]:
        items: list[Any] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if isinstance(item, _Control):
                item.done.set()
            else:
                items.append(item)

    def _write(self, buffer: list[RawRecord]) -> None:
        """Write the buffer in batches; when the store fails, retry (the queue bounds memory
        meanwhile), except when closing, where one failed attempt means the rest is lost."""
        while buffer:
            batch = buffer[:self.batch_size]
            try:
                written = self._write_batch(batch)
            except Exception:  # noqa: BLE001 - the store failed: retried, never raised
                log.exception("prediction logger: writing %d records failed", len(batch))
                self._count(failed_writes=1)
                if self._closing.is_set():
                    self._count(lost=len(buffer))
                    buffer.clear()
                    return
                self._closing.wait(self.retry_interval)
                continue
            del buffer[:written]

    def _write_batch(self, batch: list[RawRecord]) -> int:
        """Write one batch; returns how many of its records are done. Raises only when the
        store failed (``store.unavailable``). Any other failure comes from a record, so the
        batch is written again one record at a time and a record that fails alone is
        quarantined with the error."""
        try:
            self._add(self._ingestor.prediction_batch(batch))
            return len(batch)
        except Exception as exc:  # noqa: BLE001 - sorted: the store's fault or a record's
            if unavailable(exc):
                raise
            log.warning("prediction logger: a batch of %d failed (%s: %s); writing its "
                        "records one by one", len(batch), type(exc).__name__, exc)
        for done, record in enumerate(batch):
            try:
                self._write_alone(record)
            except Exception:
                if done:
                    return done  # the store failed: the rest is retried with the next batch
                raise
        return len(batch)

    def _write_alone(self, record: RawRecord) -> None:
        """Write one record, quarantining it if it fails on its own; raises only when the
        store failed."""
        try:
            self._add(self._ingestor.prediction_batch([record]))
            return
        except Exception as exc:  # noqa: BLE001 - sorted: the store's fault or the record's
            if unavailable(exc):
                raise
            detail = f"could not be stored: {type(exc).__name__}: {exc}"
        entry = record.reject("prediction", Rejected(Reason.STORE_REFUSED, detail))
        log.warning("prediction logger: record %r quarantined (%s)", entry.record_id, detail)
        try:
            self._add(self._ingestor.store.add_quarantine([entry]))
        except Exception as exc:  # noqa: BLE001 - the last resort: counted, never silent
            if unavailable(exc):
                raise
            log.exception("prediction logger: record %r could not be quarantined either",
                          entry.record_id)
            self._count(lost=1)

    def _add(self, outcome: BatchOutcome) -> None:
        self._count(accepted=outcome.accepted, duplicates=outcome.duplicates,
                    quarantined=outcome.quarantined)


@atexit.register
def _close_live_loggers() -> None:
    """Flush every open logger at interpreter exit, so the last second of traffic is kept."""
    for logger in list(_LIVE):
        logger.close(timeout=30.0)
