"""Quarantine reasons and the field checks that produce them.

Every record the store refuses is kept in quarantine with one of these reasons, so a bad line
never stops a batch and never silently disappears. The checks here are pure (no I/O) so that
the ingest paths (files, the serving logger, the feedback API) reject the same things the same
way.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


class Reason(StrEnum):
    """Why a record was quarantined (stored verbatim in ``quarantine.reason``)."""

    MALFORMED = "malformed"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_CLASS = "unknown_class"
    UNKNOWN_PREDICTION_ID = "unknown_prediction_id"
    IMAGE_MISSING = "image_missing"
    IMAGE_UNREADABLE = "image_unreadable"
    IMAGE_TOO_LARGE = "image_too_large"
    HASH_MISMATCH = "hash_mismatch"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    DISALLOWED_URI = "disallowed_uri"
    DUPLICATE_ID = "duplicate_id"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    CONFLICTING_FEEDBACK = "conflicting_feedback"
    STORE_REFUSED = "store_refused"


class Rejected(Exception):
    """A record cannot be stored; carries the quarantine reason and a human detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


#: Schemes an image URI may use. Plain paths and ``file://`` are checked against a root;
#: http(s) is off by default because fetching arbitrary URLs from ingest is an SSRF hole.
DEFAULT_ALLOWED_SCHEMES = frozenset({"file", "s3", "gs", "gcs", "az", "abfs", "abfss", "memory"})
DEFAULT_MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 200
#: Largest value of the store's INTEGER columns (32-bit on PostgreSQL).
MAX_STORED_INT = 2**31 - 1
#: Deepest nesting of a JSON field (metadata) kept in the store.
MAX_JSON_DEPTH = 32
#: Earliest timestamp accepted: a record claiming to predate 1970 has a broken clock.
EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def loads_strict(text: str) -> Any:
    """Parse JSON text refusing what ``json.loads`` lets through: duplicate keys (the last
    would silently win), NaN/Infinity, and nesting too deep to parse (a ``RecursionError``
    otherwise). Every refusal is a ``ValueError``."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def require(record: dict[str, Any], name: str) -> Any:
    """The value of a required field; absent, null and empty string all count as missing."""
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise Rejected(Reason.MISSING_FIELD, f"field '{name}' is required")
    return value


def plain_scalar(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (serving code passes ``argmax`` results and
    float32 probabilities); anything else unchanged. Duck-typed: no numpy import here."""
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return value.item()
    return value


def check_storable_text(text: str, name: str) -> str:
    """Refuse text a store column cannot hold: NUL (PostgreSQL text) or lone surrogates
    (not encodable as UTF-8)."""
    if "\x00" in text:
        raise Rejected(Reason.INVALID_FIELD, f"field '{name}' contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(Reason.INVALID_FIELD,
                       f"field '{name}' contains a lone surrogate (not UTF-8)") from None
    return text


def storable_json(value: Any, name: str, depth: int = 0) -> Any:
    """``value`` in the form the store's JSON columns hold, or ``Rejected``.

    Strict JSON on every backend (PostgreSQL refuses NaN and infinities, SQLite would store
    them and hand back something no other JSON reader accepts): string keys, finite numbers,
    text without NUL, at most ``MAX_JSON_DEPTH`` levels; numpy scalars become Python numbers.
    """
    if depth > MAX_JSON_DEPTH:
        raise Rejected(Reason.INVALID_FIELD, f"field '{name}' is nested deeper than "
                                             f"{MAX_JSON_DEPTH} levels")
    value = plain_scalar(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Rejected(Reason.INVALID_FIELD, f"field '{name}' holds {value} (not JSON)")
        return value
    if isinstance(value, str):
        return check_storable_text(value, name)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise Rejected(Reason.INVALID_FIELD,
                               f"field '{name}' has a {type(key).__name__} key (JSON keys are "
                               "strings)")
            out[check_storable_text(key, name)] = storable_json(item, name, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [storable_json(item, name, depth + 1) for item in value]
    raise Rejected(Reason.INVALID_FIELD,
                   f"field '{name}' holds a {type(value).__name__} (not a JSON value)")


def parse_text(value: Any, name: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A short identifier-like string (ids, model names, versions, sources)."""
    value = plain_scalar(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Rejected(Reason.INVALID_FIELD, f"field '{name}' must be a string")
    text = str(value).strip()
    if not text or len(text) > max_length or not text.isprintable():
        raise Rejected(Reason.INVALID_FIELD,
                       f"field '{name}' must be 1-{max_length} printable characters")
    return text


def parse_class_index(value: Any, name: str) -> int:
    """A class index: a non-negative int that fits the store's INTEGER column (digit strings
    accepted, since CSV has no ints; numpy integers accepted)."""
    value = plain_scalar(value)
    if isinstance(value, bool):
        raise Rejected(Reason.INVALID_FIELD, f"field '{name}' must be a class index, not a bool")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise Rejected(Reason.INVALID_FIELD, f"field '{name}' must be a non-negative integer")
    if value > MAX_STORED_INT:
        raise Rejected(Reason.INVALID_FIELD,
                       f"field '{name}' is {value}, beyond the largest class index "
                       f"{MAX_STORED_INT} the store holds")
    return value


def check_class(index: int, num_classes: int, name: str) -> None:
    """Refuse a class index the model does not have."""
    if index >= num_classes:
        raise Rejected(Reason.UNKNOWN_CLASS,
                       f"{name} {index} is not one of the model's {num_classes} classes")


def parse_sha256(value: Any) -> str:
    """A lowercase hex sha256 digest."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text is None or not _SHA256.fullmatch(text):
        raise Rejected(Reason.INVALID_FIELD, "image_sha256 must be 64 hex digits")
    return text


def parse_timestamp(value: Any, *, now: datetime,
                    max_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW) -> datetime:
    """An aware UTC datetime from ISO 8601 text or epoch seconds; naive text means UTC.

    Timestamps further in the future than ``max_skew`` are refused: they would sort after
    every real record and hide in every ``since`` window; those before 1970 come from a
    broken clock (year 0001 is what an unset timestamp field serialises to).
    """
    try:
        if isinstance(value, bool):
            raise ValueError("bool")
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise ValueError("not finite")
            ts = datetime.fromtimestamp(value, tz=UTC)
        elif isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"-?\d+(\.\d+)?", text):
                ts = datetime.fromtimestamp(float(text), tz=UTC)
            else:
                ts = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        elif isinstance(value, datetime):
            ts = value
        else:
            raise ValueError(type(value).__name__)
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise Rejected(Reason.BAD_TIMESTAMP, f"unparsable timestamp {value!r} ({exc})") from None
    if ts < EARLIEST_TIMESTAMP:
        raise Rejected(Reason.BAD_TIMESTAMP,
                       f"timestamp {ts.isoformat()} is before {EARLIEST_TIMESTAMP.date()}")
    if ts > now + max_skew:
        raise Rejected(Reason.FUTURE_TIMESTAMP,
                       f"timestamp {ts.isoformat()} is in the future (now {now.isoformat()})")
    return ts


def parse_topk(value: Any, num_classes: int) -> list[list[float]]:
    """Top-k as ``[[class, prob], ...]`` sorted by probability, from pairs or a mapping."""
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = value
    else:
        raise Rejected(Reason.INVALID_FIELD, "topk must be a list of [class, prob] or a mapping")
    out: list[list[float]] = []
    for pair in pairs:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise Rejected(Reason.INVALID_FIELD, "topk entries must be [class, prob] pairs")
        cls = parse_class_index(pair[0], "topk class")
        check_class(cls, num_classes, "topk class")
        prob = plain_scalar(pair[1])
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 <= prob <= 1:
            raise Rejected(Reason.INVALID_FIELD, "topk probabilities must be numbers in [0, 1]")
        out.append([cls, float(prob)])
    if sum(p for _, p in out) > 1.0 + 1e-3:
        raise Rejected(Reason.INVALID_FIELD, "topk probabilities sum to more than 1")
    return sorted(out, key=lambda cp: (-cp[1], cp[0]))


@dataclass(frozen=True)
class UriPolicy:
    """Which image URIs ingest may read.

    Local paths (plain or ``file://``) must resolve, symlinks followed, inside ``root``;
    relative ones are taken relative to it. Without a root, relative paths are refused and
    absolute ones accepted as given (trusted serving code). Remote URIs need an allowed scheme
    and no ``..`` segment.
    """

    root: Path | None = None
    allowed_schemes: frozenset[str] = DEFAULT_ALLOWED_SCHEMES
    _real_root: Path | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        # resolved once: realpath costs several syscalls and this runs per record
        real = Path(os.path.realpath(self.root)) if self.root is not None else None
        object.__setattr__(self, "_real_root", real)

    def resolve(self, uri: str) -> str:
        """The location to read (a local path or an fsspec URL), or ``Rejected``."""
        if "\x00" in uri:
            raise Rejected(Reason.DISALLOWED_URI, "NUL byte in image URI")
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if len(scheme) == 1:  # a Windows drive letter, not a scheme
            scheme = ""
        if scheme and scheme not in self.allowed_schemes:
            raise Rejected(Reason.DISALLOWED_URI, f"URI scheme '{scheme}' is not allowed")
        if scheme in ("", "file"):
            return self._local(unquote(parts.path) if scheme == "file" else uri)
        segments = unquote(parts.path).replace("\\", "/").split("/")
        if ".." in segments or ".." in unquote(parts.netloc).split("/"):
            raise Rejected(Reason.DISALLOWED_URI, "path traversal ('..') in image URI")
        return uri

    def _local(self, path_text: str) -> str:
        path = Path(path_text)
        root = self._real_root
        if root is None:
            if not path.is_absolute():
                raise Rejected(Reason.DISALLOWED_URI,
                               f"relative image path {path_text!r} without an image root")
            if ".." in path.parts:
                raise Rejected(Reason.DISALLOWED_URI, "path traversal ('..') in image path")
            return str(path)
        resolved = Path(os.path.realpath(root / path))
        if resolved != root and root not in resolved.parents:
            raise Rejected(Reason.DISALLOWED_URI,
                           f"image path {path_text!r} escapes the image root {str(root)!r}")
        return str(resolved)


def utcnow() -> datetime:
    """The current time, aware, in UTC (the one clock every check uses)."""
    return datetime.now(UTC)
