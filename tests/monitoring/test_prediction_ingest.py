"""Prediction ingest from files: every bad-input reason is quarantined with its raw payload,
the rest of the batch proceeds, and a re-run adds nothing twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from .monitoring_testlib import bomb_png, png_bytes

from monitoring.ingest import Ingestor, ingest_file, read_records
from monitoring.records import RawRecord
from monitoring.schema import Prediction
from monitoring.validation import UriPolicy
from vitedit_ops.errors import InvalidInputError


def stored_predictions(store: Any) -> dict[str, Any]:
    with store.read() as conn:
        return {r.id: r for r in conn.execute(sa.select(Prediction))}


def quarantine_by_line(store: Any) -> dict[int, tuple[str, str]]:
    return {int(q.origin.rsplit(":", 1)[1]): (q.reason, q.raw) for q in store.quarantined()}


@pytest.fixture
def bad_file(src: Path, prediction: Any, make_image: Any) -> tuple[Path, dict[int, str]]:
    """A JSON Lines file with three good records and one line per bad-input reason."""
    (src / "adir").mkdir()
    (src.parent / "outside.png").write_bytes(png_bytes(99))
    truncated, truncated_sha = make_image(50, "truncated.png", png_bytes(50)[:-30])
    bomb, bomb_sha = make_image(51, "bomb.png", bomb_png(12_000, 12_000))
    good = [prediction(i) for i in range(3)]
    cases: list[tuple[Any, str | None]] = [
        *((g, None) for g in good),
        ("{not json", "malformed"),
        ("[1, 2, 3]", "malformed"),
        (prediction(10, id=...), "missing_field"),
        (prediction(11, image_uri=...), "missing_field"),
        (prediction(12, predicted_class="abc"), "invalid_field"),
        (prediction(13, image_sha256="xyz"), "invalid_field"),
        (prediction(14, metadata=[1, 2]), "invalid_field"),
        (prediction(15, model="not-registered"), "unknown_model"),
        (prediction(16, predicted_class=12), "unknown_class"),
        (prediction(17, topk=[[42, 0.5]]), "unknown_class"),
        (prediction(18, image_uri="nowhere.png", image_sha256=...), "image_missing"),
        (prediction(19, image_uri="adir", image_sha256=...), "image_unreadable"),
        (prediction(20, image_sha256=hashlib.sha256(b"other").hexdigest()), "hash_mismatch"),
        (prediction(21, image_uri=truncated, image_sha256=truncated_sha), "corrupt_image"),
        (prediction(22, image_uri=bomb, image_sha256=bomb_sha), "decompression_bomb"),
        (prediction(23, image_uri="../outside.png", image_sha256=...), "disallowed_uri"),
        (prediction(24, image_uri="ftp://host/x.png"), "disallowed_uri"),
        (prediction(25, image_uri="http://169.254.169.254/img.png"), "disallowed_uri"),
        ({**good[0], "predicted_class": 9}, "duplicate_id"),
        (good[0], None),  # an exact replay: a duplicate, counted but not quarantined
        (prediction(26, ts="last tuesday"), "bad_timestamp"),
        (prediction(27, ts="2999-01-01T00:00:00Z"), "future_timestamp"),
    ]
    path = src / "predictions.jsonl"
    expected: dict[int, str] = {}
    with path.open("wb") as handle:
        for number, (record, reason) in enumerate(cases, start=1):
            line = record if isinstance(record, str) else json.dumps(record)
            handle.write(line.encode() + b"\n")
            if reason:
                expected[number] = reason
        handle.write(b'{"id": "\xff\xfe"}\n')  # not UTF-8
        expected[len(cases) + 1] = "malformed"
    return path, expected


def test_every_bad_record_is_quarantined_and_the_rest_proceeds(
        store: Any, images: Any, src: Path, bad_file: tuple[Path, dict[int, str]]) -> None:
    path, expected = bad_file
    report = ingest_file("predictions", path, store=store, images=images, batch_size=1000)

    assert report.accepted == 3 and report.duplicates == 1 and report.batches == 1
    assert report.reasons == Counter(expected.values())
    assert set(stored_predictions(store)) == {"pred-0", "pred-1", "pred-2"}
    assert stored_predictions(store)["pred-0"].predicted_class == 0  # not overwritten
    by_line = quarantine_by_line(store)
    assert {line: reason for line, (reason, _) in by_line.items()} == expected
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    assert all(raw == lines[line - 1] for line, (_, raw) in by_line.items())  # raw payload kept
    for record in stored_predictions(store).values():
        assert images.open(record.image_sha256)  # copied into the content-addressed store
        assert record.image_uri.startswith("img_")  # the producer's URI is kept as given


def test_a_rerun_adds_nothing_twice(store: Any, images: Any,
                                    bad_file: tuple[Path, dict[int, str]]) -> None:
    path, expected = bad_file
    first = ingest_file("predictions", path, store=store, images=images, batch_size=7)
    second = ingest_file("predictions", path, store=store, images=images, batch_size=7)
    assert first.batches == second.batches > 1
    assert second.accepted == 0 and second.duplicates == 4
    assert second.reasons == first.reasons
    assert store.counts()["predictions"] == 3
    assert store.counts()["quarantine"] == len(expected)


def test_csv_files_are_read_like_json_lines(store: Any, images: Any, src: Path,
                                            prediction: Any) -> None:
    fields = ["id", "ts", "model", "model_version", "model_alias", "image_uri", "image_sha256",
              "predicted_class", "topk", "metadata"]
    def line(record: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
        buffer = io.StringIO()
        csv.writer(buffer).writerow([json.dumps(record[f]) if f in ("topk", "metadata")
                                     else record.get(f, "") for f in fields] + list(extra))
        return buffer.getvalue().rstrip("\r\n")

    good = prediction(1)
    path = src / "predictions.csv"
    path.write_text("\n".join([
        ",".join(fields), line(good), line(prediction(2, image_sha256="", model_alias="")),
        "pred-3,2026-11-20T10:00:00Z,vit",  # fewer fields than the header
        line({**good, "id": "pred-4"}, ("surplus",)),  # more fields than the header
        line({**good, "id": "pred-5"}).replace("[[1, 0.6]", "[[1, oops"),  # topk not JSON
    ]) + "\n")
    report = ingest_file("predictions", path, store=store, images=images)
    assert report.accepted == 2, report.summary()
    assert report.reasons == Counter({"malformed": 2, "invalid_field": 1})
    stored = stored_predictions(store)
    assert stored["pred-1"].topk == [[1, 0.6], [2, 0.3]]
    assert stored["pred-1"].request_metadata == {"client": "test"}
    assert stored["pred-2"].image_sha256 == hashlib.sha256(png_bytes(2)).hexdigest()
    assert stored["pred-2"].model_alias is None


def test_oversized_images_are_refused_before_hashing(store: Any, images: Any, src: Path,
                                                     prediction: Any) -> None:
    record = RawRecord.from_mapping(prediction(1), "test")
    with Ingestor(store, images, policy=UriPolicy(root=src), max_bytes=50) as ingestor:
        outcome = ingestor.prediction_batch([record])
    assert outcome.reasons == Counter({"image_too_large": 1})


def test_known_images_are_not_fetched_again(store: Any, images: Any, src: Path,
                                            prediction: Any) -> None:
    """The store is content-addressed: a second record of a stored image needs no source."""
    with Ingestor(store, images, policy=UriPolicy(root=src)) as ingestor:
        first = prediction(1)
        ingestor.prediction_batch([RawRecord.from_mapping(first, "test")])
        (src / first["image_uri"]).unlink()
        again = {**first, "id": "pred-again"}
        assert ingestor.prediction_batch([RawRecord.from_mapping(again, "test")]).accepted == 1
        unknown = {**again, "id": "pred-unknown", "image_sha256": ...}
        outcome = ingestor.prediction_batch([RawRecord.from_mapping(
            {k: v for k, v in unknown.items() if v is not ...}, "test")])
        assert outcome.reasons == Counter({"image_missing": 1})


def test_unreadable_input_files_are_a_clear_error(src: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        list(read_records(src / "missing.jsonl"))
    with pytest.raises(InvalidInputError, match="format"):
        list(read_records(src / "data.parquet"))
