"""Prediction ingest: JSON Lines / CSV readers and the validate -> image -> store pipeline.

Each batch is validated (fields, then the image: URI policy, fetch, sha256, decode with the
pixel guard, copy into the content-addressed store) and written in one transaction together
with its rejects. Images are copied before the transaction commits, and the store is
content-addressed, so a crash between the two leaves at worst an unreferenced blob.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from vitedit_ops.errors import InvalidInputError

from .feedback import ingest_feedback
from .images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageStore,
    check_image_header,
    decode_image,
    read_source,
    sha256_hex,
)
from .records import IngestReport, RawRecord, batched
from .store import BatchOutcome, MonitoringStore, QuarantineEntry, StagedRecord
from .validation import (
    DEFAULT_MAX_CLOCK_SKEW,
    Reason,
    Rejected,
    UriPolicy,
    check_class,
    check_storable_text,
    loads_strict,
    parse_class_index,
    parse_sha256,
    parse_text,
    parse_timestamp,
    parse_topk,
    require,
    storable_json,
    utcnow,
)

Format = Literal["jsonl", "csv"]
Kind = Literal["predictions", "feedback"]
PREDICTION_FIELDS = ("id", "ts", "model", "model_version", "model_alias", "image_uri",
                     "image_sha256", "predicted_class", "topk", "metadata")
FEEDBACK_FIELDS = ("prediction_id", "true_class", "source", "ts")
MAX_METADATA_BYTES = 16_384
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # undecodable bytes, as surrogateescape keeps them


# -- readers ----------------------------------------------------------------------------
def detect_format(path: Path) -> Format:
    """``.csv`` is CSV; ``.jsonl``, ``.ndjson`` and ``.json`` are JSON Lines."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InvalidInputError(f"{path}: cannot tell the format from '{suffix}'; pass --format")


def read_records(path: Path, fmt: Format | None = None) -> Iterator[RawRecord]:
    """Records of a JSON Lines or CSV file; unparsable lines come back with ``data=None``."""
    fmt = fmt or detect_format(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    origin = str(path.resolve())
    return _read_jsonl(path, origin) if fmt == "jsonl" else _read_csv(path, origin)


def _read_jsonl(path: Path, origin: str) -> Iterator[RawRecord]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{origin}:{number}"
            try:
                text = line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield RawRecord(where, line.decode("utf-8", "replace").rstrip("\r\n"), None,
                                f"not UTF-8 ({exc.reason})")
                continue
            try:
                data = loads_strict(text)
            except ValueError as exc:
                yield RawRecord(where, text, None,
                                f"invalid JSON ({getattr(exc, 'msg', None) or exc})")
                continue
            if not isinstance(data, dict):
                yield RawRecord(where, text, None, "a record must be a JSON object")
                continue
            yield RawRecord(where, text, data)


class _Lines:
    """A text file's lines, remembering the ones the CSV reader consumed for its current row
    (a quoted field can span lines), so a refused row is kept as it was written."""

    def __init__(self, handle: Iterable[str]) -> None:
        self._lines = iter(handle)
        self._taken: list[str] = []
        self.number = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.number += 1
        self._taken.append(line)
        return line

    def take(self) -> tuple[int, str]:
        """(first line number, text) of the row just read."""
        first, text = self.number - len(self._taken) + 1, "".join(self._taken)
        self._taken = []
        return first, text.rstrip("\r\n")


def _read_csv(path: Path, origin: str) -> Iterator[RawRecord]:
    """CSV rows as records. A UTF-8 byte-order mark is skipped; bytes that are not UTF-8 are
    carried as surrogates so their row is refused (like a JSON line), not rewritten to U+FFFD.
    """
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        lines = _Lines(handle)
        reader = csv.reader(lines)
        header: list[str] | None = None
        while True:
            try:
                fields = next(reader)
                error = None
            except StopIteration:
                return
            except csv.Error as exc:
                fields, error = [], f"unreadable CSV row ({exc})"
            number, text = lines.take()
            if header is None:
                header = _csv_header(path, fields, error)
                continue
            where = f"{origin}:{number}"
            if _NOT_UTF8.search(text):
                raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                yield RawRecord(where, raw, None, "not UTF-8")
            elif error is not None:
                yield RawRecord(where, text, None, error)
            elif not fields:
                continue  # a blank line
            elif len(fields) != len(header):
                more = "more" if len(fields) > len(header) else "fewer"
                yield RawRecord(where, text, None, f"{more} fields than the header")
            else:
                yield RawRecord(where, text, {k: v for k, v in zip(header, fields, strict=True)
                                              if v != ""})


def _csv_header(path: Path, fields: list[str], error: str | None) -> list[str]:
    """The column names; a header that cannot be read, or names a column twice (which value
    would count?), makes the whole file unusable."""
    names = [name.strip() for name in fields]
    if error is not None or not names or any(_NOT_UTF8.search(n) for n in names):
        raise InvalidInputError(f"{path}: the CSV header is unreadable"
                                + (f" ({error})" if error else ""))
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidInputError(f"{path}: the CSV header names column(s) {twice} twice")
    return names


# -- prediction records -----------------------------------------------------------------
def _json_field(value: Any, name: str) -> Any:
    """CSV carries lists and objects as JSON text."""
    if isinstance(value, str):
        try:
            return loads_strict(value)
        except ValueError as exc:
            raise Rejected(Reason.INVALID_FIELD,
                           f"field '{name}' is not valid JSON ({exc})") from None
    return value


def parse_prediction(data: dict[str, Any], *, now: datetime, model_classes: dict[str, int],
                     max_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
                     image_given: bool = False) -> dict[str, Any]:
    """A prediction row (image not yet checked) from a record; raises ``Rejected``."""
    row: dict[str, Any] = {"id": parse_text(require(data, "id"), "id")}
    row["model_name"] = parse_text(require(data, "model"), "model")
    row["model_version"] = parse_text(require(data, "model_version"), "model_version")
    alias = data.get("model_alias")
    row["model_alias"] = parse_text(alias, "model_alias") if alias not in (None, "") else None
    predicted = parse_class_index(require(data, "predicted_class"), "predicted_class")
    uri = data.get("image_uri") if image_given else require(data, "image_uri")
    if uri is not None and not isinstance(uri, str):
        raise Rejected(Reason.INVALID_FIELD, "field 'image_uri' must be a string")
    row["image_uri"] = check_storable_text(uri, "image_uri") if uri is not None else None
    sha = data.get("image_sha256")
    row["image_sha256"] = parse_sha256(sha) if sha not in (None, "") else None
    ts = parse_timestamp(require(data, "ts"), now=now, max_skew=max_skew)
    metadata = _json_field(data.get("metadata") or {}, "metadata")
    if not isinstance(metadata, dict):
        raise Rejected(Reason.INVALID_FIELD, "field 'metadata' must be an object")
    metadata = storable_json(metadata, "metadata")
    if len(json.dumps(metadata).encode()) > MAX_METADATA_BYTES:
        raise Rejected(Reason.INVALID_FIELD, f"metadata larger than {MAX_METADATA_BYTES} bytes")
    num_classes = model_classes.get(row["model_name"])
    if num_classes is None:
        raise Rejected(Reason.UNKNOWN_MODEL,
                       f"model {row['model_name']!r} is not registered (register its classes)")
    check_class(predicted, num_classes, "predicted_class")
    row.update(ts=ts, predicted_class=predicted, request_metadata=metadata,
               topk=parse_topk(_json_field(data.get("topk"), "topk"), num_classes),
               ingested_at=now)
    return row


def content_hash(row: dict[str, Any]) -> str:
    """Identity of a prediction's content: a replay hashes the same, a clash does not."""
    fields = [row["id"], row["ts"].isoformat(), row["model_name"], row["model_version"],
              row["model_alias"], row["image_uri"], row["image_sha256"],
              row["predicted_class"], row["topk"], row["request_metadata"]]
    return sha256_hex(json.dumps(fields, sort_keys=True, default=str).encode())


class Ingestor:
    """Validates and stores predictions (files, the serving logger) and feedback."""

    def __init__(self, store: MonitoringStore, images: ImageStore, *,
                 policy: UriPolicy | None = None, batch_size: int = 1000,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW, workers: int = 4) -> None:
        self.store = store
        self.images = images
        self.policy = policy or UriPolicy()
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.max_skew = max_skew
        self._workers = workers
        self._pool = ThreadPoolExecutor(workers, "ingest-image") if workers > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ingest_predictions(self, records: Iterable[RawRecord]) -> IngestReport:
        report = IngestReport()
        for batch in batched(records, self.batch_size):
            report.add(self.prediction_batch(batch))
        return report

    def ingest_feedback(self, records: Iterable[RawRecord]) -> IngestReport:
        return ingest_feedback(self.store, records, batch_size=self.batch_size,
                               max_skew=self.max_skew)

    def prediction_batch(self, batch: list[RawRecord]) -> BatchOutcome:
        """Validate one batch, copy its images, and write it in one transaction."""
        now = utcnow()
        classes = self.store.model_classes()
        parsed: list[tuple[RawRecord, dict[str, Any]]] = []
        rejected: list[QuarantineEntry] = []
        for record in batch:
            try:
                row = parse_prediction(record.parsed(), now=now, model_classes=classes,
                                       max_skew=self.max_skew,
                                       image_given=record.image is not None)
                parsed.append((record, row))
            except Rejected as exc:
                rejected.append(record.reject("prediction", exc))
        staged: list[StagedRecord] = []
        for (record, row), error in zip(parsed, self._check_images(parsed), strict=True):
            if error is not None:
                rejected.append(record.reject("prediction", error))
            else:
                row["content_hash"] = content_hash(row)
                staged.append(StagedRecord(row, record.origin, lambda r=record: r.raw))
        return self.store.write_predictions(staged, rejected)

    def _check_images(self, items: list[tuple[RawRecord, dict[str, Any]]],
                      ) -> list[Rejected | None]:
        """Image checks are I/O and C-heavy, so they run on the pool: one slice per worker
        (a future per record would cost more than a cached image's check)."""
        if self._pool is None or len(items) < 2:
            return [self._check_image(item) for item in items]
        step = -(-len(items) // self._workers)
        slices = [items[i:i + step] for i in range(0, len(items), step)]
        results = self._pool.map(lambda part: [self._check_image(x) for x in part], slices)
        return [error for part in results for error in part]

    def _check_image(self, item: tuple[RawRecord, dict[str, Any]]) -> Rejected | None:
        """Fill in the row's sha256 and URI, or say why its image is refused."""
        record, row = item
        try:
            declared = row["image_sha256"]
            if record.image is not None:
                if not isinstance(record.image, bytes | bytearray | memoryview):
                    raise Rejected(Reason.INVALID_FIELD, "image must be bytes, not "
                                                         f"{type(record.image).__name__}")
                data: bytes | None = bytes(record.image)
            else:
                location = self.policy.resolve(row["image_uri"])
                data = None if declared and self.images.exists(declared) else read_source(
                    location, max_bytes=self.max_bytes)
            if data is not None:
                digest = sha256_hex(data)
                if declared and digest != declared:
                    raise Rejected(Reason.HASH_MISMATCH,
                                   f"image bytes hash to {digest}, record says {declared}")
                if record.image_decoded:
                    check_image_header(data, max_pixels=self.max_pixels)
                else:
                    decode_image(data, max_pixels=self.max_pixels)
                row["image_sha256"] = self.images.put_hashed(data, digest)
            if row["image_uri"] is None:
                row["image_uri"] = self.images.uri_for(row["image_sha256"])
        except Rejected as exc:
            return exc
        return None


def ingest_file(kind: Kind, path: Path, *,
                store: MonitoringStore, images: ImageStore, fmt: Format | None = None,
                image_root: Path | None = None, batch_size: int = 1000) -> IngestReport:
    """Ingest a JSON Lines or CSV file; relative image paths resolve against ``image_root``
    (default: the file's directory), and no local image may lie outside it."""
    records = read_records(path, fmt)
    root = image_root if image_root is not None else path.resolve().parent
    with Ingestor(store, images, policy=UriPolicy(root=root), batch_size=batch_size) as ing:
        if kind == "predictions":
            return ing.ingest_predictions(records)
        return ing.ingest_feedback(records)
