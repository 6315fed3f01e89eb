"""Files at the edge of their formats: encodings, byte-order marks, nesting, duplicate keys,
broken clocks, and files with nothing usable in them."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from monitoring.images import ImageStore
from monitoring.ingest import ingest_file
from monitoring.store import MonitoringStore
from vitedit_ops.errors import InvalidInputError

FIELDS = ["id", "ts", "model", "model_version", "image_uri", "image_sha256", "predicted_class",
          "topk", "metadata"]
CLI = [sys.executable, "-c", "from vitedit_ops.cli import main; main()"]


def csv_line(record: dict[str, Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([json.dumps(record[f]) if f in ("topk", "metadata")
                                 else record.get(f, "") for f in FIELDS])
    return buffer.getvalue()


def by_id(store: MonitoringStore) -> dict[str | None, tuple[str, str]]:
    return {q.record_id: (q.reason, q.detail) for q in store.quarantined()}


def test_csv_bytes_that_are_not_utf8_are_quarantined_not_rewritten(
        store: MonitoringStore, images: ImageStore, src: Path, prediction: Any) -> None:
    path = src / "p.csv"
    body = (",".join(FIELDS) + "\n" + csv_line(prediction(1))).encode()
    body += csv_line(prediction(2)).replace("test", "caf\u00e9").encode("latin-1")
    body += csv_line(prediction(3)).encode()
    path.write_bytes(body)
    report = ingest_file("predictions", path, store=store, images=images)
    assert (report.accepted, dict(report.reasons)) == (2, {"malformed": 1})
    [refused] = store.quarantined()
    assert refused.detail == "not UTF-8" and refused.origin.endswith(":3")
    assert "caf\ufffd" in refused.raw and refused.raw.startswith("pred-2,")


def test_a_csv_with_a_byte_order_mark_is_read(store: MonitoringStore, images: ImageStore,
                                              src: Path, prediction: Any) -> None:
    path = src / "p.csv"
    text = ",".join(FIELDS) + "\n" + "".join(csv_line(prediction(i)) for i in range(3))
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    report = ingest_file("predictions", path, store=store, images=images)
    assert (report.accepted, report.quarantined) == (3, 0), report.summary()


def test_a_csv_header_naming_a_column_twice_is_bad_input(store: MonitoringStore,
                                                         images: ImageStore, src: Path) -> None:
    path = src / "f.csv"
    path.write_text("prediction_id,true_class,true_class,ts\np,1,2,2026-11-20T10:00:00Z\n")
    with pytest.raises(InvalidInputError, match=r"\['true_class'\] twice"):
        ingest_file("feedback", path, store=store, images=images)


def test_an_oversized_csv_field_costs_its_row_only(store: MonitoringStore, images: ImageStore,
                                                   src: Path, prediction: Any) -> None:
    path = src / "p.csv"
    huge = csv_line(prediction(2)).replace('"{""client"": ""test""}"', '"' + "x" * 200_000 + '"')
    path.write_text(",".join(FIELDS) + "\n" + csv_line(prediction(1)) + huge
                    + csv_line(prediction(3)))
    report = ingest_file("predictions", path, store=store, images=images)
    assert (report.accepted, dict(report.reasons)) == (2, {"malformed": 1})
    [refused] = store.quarantined()
    assert "field larger than field limit" in refused.detail and refused.origin.endswith(":3")


def test_json_nested_100k_deep_is_quarantined_and_the_good_lines_kept(
        store: MonitoringStore, images: ImageStore, src: Path, prediction: Any,
        write_jsonl: Any) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = write_jsonl("p.jsonl", [prediction(1), '{"id": "deep", "metadata": ' + deep + "}",
                                   prediction(2)])
    report = ingest_file("predictions", path, store=store, images=images)
    assert (report.accepted, dict(report.reasons)) == (2, {"malformed": 1})
    assert "nested too deeply" in store.quarantined()[0].detail

    csv_path = src / "p.csv"  # 60k deep: still beyond the parser, within the CSV field limit
    deep = "[" * 60_000 + "]" * 60_000
    line = csv_line(prediction(3)).replace('"{""client"": ""test""}"', '"' + deep + '"')
    csv_path.write_text(",".join(FIELDS) + "\n" + line + csv_line(prediction(4)))
    report = ingest_file("predictions", csv_path, store=store, images=images)
    assert (report.accepted, dict(report.reasons)) == (1, {"invalid_field": 1})
    assert by_id(store)["pred-3"][0] == "invalid_field"


def test_duplicate_json_keys_are_refused_with_the_key(store: MonitoringStore,
                                                      images: ImageStore, src: Path,
                                                      prediction: Any, write_jsonl: Any) -> None:
    twice = json.dumps(prediction(1))[:-1] + ', "predicted_class": 9}'
    path = write_jsonl("p.jsonl", [twice, prediction(2, metadata=None)])
    path.write_text(path.read_text().replace('"metadata": null', '"metadata": {"a": 1, "a": 2}')
                    + json.dumps(prediction(3)) + "\n")
    report = ingest_file("predictions", path, store=store, images=images)
    assert (report.accepted, dict(report.reasons)) == (1, {"malformed": 2}), report.summary()
    details = [q.detail for q in store.quarantined()]
    assert "duplicate key 'predicted_class'" in details[0] and "duplicate key 'a'" in details[1]


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", -86400])
def test_timestamps_before_1970_are_refused(store: MonitoringStore, images: ImageStore,
                                            prediction: Any, write_jsonl: Any, ts: Any) -> None:
    path = write_jsonl("p.jsonl", [prediction(1), prediction(2, ts=ts)])
    feedback = write_jsonl("f.jsonl", [{"prediction_id": "pred-1", "true_class": 1, "ts": ts},
                                       {"prediction_id": "pred-1", "true_class": 2,
                                        "ts": "2026-11-21T00:00:00Z"}])
    assert ingest_file("predictions", path, store=store, images=images).reasons == {
        "bad_timestamp": 1}
    assert ingest_file("feedback", feedback, store=store, images=images).reasons == {
        "bad_timestamp": 1}
    assert store.counts()["predictions"] == store.counts()["feedback"] == 1


def test_a_file_with_no_usable_record_exits_2_with_one_line(
        tmp_path: Path, prediction: Any, write_jsonl: Any) -> None:
    url = ["--store-url", f"sqlite:///{tmp_path / 's.db'}"]
    store = [*url, "--image-store-url", str(tmp_path / "cas")]
    subprocess.run([*CLI, "ingest", "model", "vit", "--num-classes", "10", *url], check=True,
                   capture_output=True, timeout=600)
    bad = write_jsonl("bad.jsonl", ["{oops", prediction(1, ts="0001-01-01T00:00:00Z"),
                                    '{"id": ' + "[" * 100_000 + "]" * 100_000 + "}"])
    done = subprocess.run([*CLI, "ingest", "predictions", str(bad), *store],
                          capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "no record could be stored" in lines[0] and "quarantined 3" in lines[0]

    mixed = write_jsonl("mixed.jsonl", ["{oops", prediction(2)])
    done = subprocess.run([*CLI, "ingest", "predictions", str(mixed), *store],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "accepted 1" in done.stdout, done.stderr
