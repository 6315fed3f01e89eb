"""Field checks and the image URI policy (pure functions, no store)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy as np

from monitoring.validation import (
    MAX_JSON_DEPTH,
    Reason,
    Rejected,
    UriPolicy,
    loads_strict,
    parse_class_index,
    parse_text,
    parse_timestamp,
    parse_topk,
    storable_json,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value, expected", [
    ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ("2026-11-20T12:00:00+02:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ("2026-11-20T10:00:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),  # naive means UTC
    (1795168800, datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ("1795168800.0", datetime(2026, 11, 20, 10, tzinfo=UTC)),
])
def test_timestamps_parse_to_aware_utc(value: object, expected: datetime) -> None:
    assert parse_timestamp(value, now=NOW) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", "", True, [1], 1e300,
                                   float("nan"), "0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z",
                                   -1])
def test_unparsable_timestamps_are_rejected(value: object) -> None:
    with pytest.raises(Rejected) as info:
        parse_timestamp(value, now=NOW)
    assert info.value.reason == Reason.BAD_TIMESTAMP


def test_future_timestamps_are_rejected_beyond_the_clock_skew() -> None:
    assert parse_timestamp(NOW + timedelta(minutes=4), now=NOW)  # within 5 min skew
    with pytest.raises(Rejected) as info:
        parse_timestamp((NOW + timedelta(hours=1)).isoformat(), now=NOW)
    assert info.value.reason == Reason.FUTURE_TIMESTAMP


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2026, 11, 24),
                    timezones=st.just(UTC)))
def test_iso_and_epoch_forms_agree(ts: datetime) -> None:
    assert parse_timestamp(ts.isoformat(), now=NOW) == ts
    assert abs(parse_timestamp(ts.timestamp(), now=NOW) - ts) < timedelta(microseconds=2)


@pytest.mark.parametrize("value", [-1, "x", True, 1.5, None, "1e3", 3e9, 2**31, "2147483648"])
def test_class_index_must_be_a_non_negative_int(value: object) -> None:
    with pytest.raises(Rejected) as info:
        parse_class_index(value, "predicted_class")
    assert info.value.reason == Reason.INVALID_FIELD


def test_numpy_scalars_become_python_numbers() -> None:
    index = parse_class_index(np.int64(7), "c")
    assert index == 7 and type(index) is int
    assert parse_topk([[np.int64(3), np.float32(0.5)]], 10) == [[3, 0.5]]
    assert parse_text(np.int64(3), "model_version") == "3"
    stored = storable_json({"p": np.float32(0.25), "n": [np.int32(2)]}, "metadata")
    assert stored == {"p": 0.25, "n": [2]} and type(stored["p"]) is float


@pytest.mark.parametrize("value", [
    {"p": float("nan")}, {"p": [float("inf")]}, {"p": np.float32("nan")}, {"t": "a\x00b"},
    {"a\x00": 1}, {1: "int key"}, {"s": {1, 2}}, {"t": "\ud800"}, {"o": object()},
])
def test_values_the_store_cannot_keep_as_json_are_refused(value: object) -> None:
    with pytest.raises(Rejected) as info:
        storable_json(value, "metadata")
    assert info.value.reason == Reason.INVALID_FIELD


def test_json_nested_beyond_the_limit_is_refused() -> None:
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        nested = [nested]
    with pytest.raises(Rejected):
        storable_json({"deep": nested}, "metadata")


@pytest.mark.parametrize("text, error", [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"), ('{"a": NaN}', "NaN is not JSON"),
    ('{"a": -Infinity}', "-Infinity is not JSON"), ("[" * 100_000 + "]" * 100_000, "nested"),
])
def test_strict_json_refuses_what_json_loads_lets_through(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        loads_strict(text)


def test_topk_accepts_pairs_and_mappings_and_sorts() -> None:
    assert parse_topk([[1, 0.2], [3, 0.7]], 10) == [[3, 0.7], [1, 0.2]]
    assert parse_topk({"3": 0.7, "1": 0.2}, 10) == [[3, 0.7], [1, 0.2]]
    assert parse_topk(None, 10) == []


@pytest.mark.parametrize("topk, reason", [
    ([[1, 1.5]], Reason.INVALID_FIELD), ([[1, 0.6], [2, 0.6]], Reason.INVALID_FIELD),
    ([[1]], Reason.INVALID_FIELD), ("3:0.5", Reason.INVALID_FIELD),
    ([[12, 0.5]], Reason.UNKNOWN_CLASS),
])
def test_bad_topk_is_rejected(topk: object, reason: Reason) -> None:
    with pytest.raises(Rejected) as info:
        parse_topk(topk, 10)
    assert info.value.reason == reason


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


@pytest.mark.parametrize("uri", [
    "../outside/x.png", "sub/../../outside/x.png", "/etc/passwd", "file:///etc/passwd",
    "file://localhost/%2e%2e/%2e%2e/etc/passwd", "s3://bucket/a/../../b.png",
    "s3://bucket/a/%2e%2e/b.png", "a\x00b.png",
])
def test_path_traversal_is_refused(root: Path, uri: str) -> None:
    with pytest.raises(Rejected) as info:
        UriPolicy(root=root).resolve(uri)
    assert info.value.reason == Reason.DISALLOWED_URI


def test_symlinks_out_of_the_root_are_refused(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside", root / "link")
    with pytest.raises(Rejected):
        UriPolicy(root=root).resolve("link/x.png")


@pytest.mark.parametrize("uri", ["ftp://host/x.png", "http://169.254.169.254/latest",
                                 "https://example.org/x.png", "data:image/png;base64,AAAA",
                                 "javascript:alert(1)", "ssh://host/x.png"])
def test_disallowed_schemes_are_refused(root: Path, uri: str) -> None:
    with pytest.raises(Rejected) as info:
        UriPolicy(root=root).resolve(uri)
    assert info.value.reason == Reason.DISALLOWED_URI


def test_allowed_uris_resolve(root: Path) -> None:
    policy = UriPolicy(root=root)
    assert policy.resolve("sub/x.png") == str((root / "sub" / "x.png").resolve())
    assert policy.resolve(f"file://{root}/sub/x.png") == str((root / "sub/x.png").resolve())
    assert policy.resolve("s3://bucket/images/x.png") == "s3://bucket/images/x.png"
    assert UriPolicy().resolve("/data/x.png") == "/data/x.png"  # no root: trusted absolute
    with pytest.raises(Rejected):
        UriPolicy().resolve("relative/x.png")  # ...but nothing to resolve a relative path


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="./ab%2e\\~:", min_size=1, max_size=30))
def test_a_resolved_local_path_never_leaves_the_root(tmp_path_factory: pytest.TempPathFactory,
                                                    text: str) -> None:
    root = tmp_path_factory.getbasetemp() / "policy-root"
    root.mkdir(exist_ok=True)
    try:
        resolved = UriPolicy(root=root, allowed_schemes=frozenset({"file"})).resolve(text)
    except Rejected:
        return
    real_root = Path(os.path.realpath(root))
    assert Path(resolved) == real_root or real_root in Path(resolved).parents
