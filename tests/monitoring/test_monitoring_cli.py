"""``vitedit-ops ingest ...`` and ``vitedit-ops collect`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitoring.cli import parse_since
from vitedit_ops.cli import main
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.groups import ErrorGroup


def cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_ingest_and_collect_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], prediction: Any,
                                       write_jsonl: Any) -> None:
    monkeypatch.setenv("VITEDIT_HOME", str(tmp_path / "home"))  # default SQLite store
    recent = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    predictions = write_jsonl("p.jsonl", [prediction(i, ts=recent, predicted_class=8)
                                          for i in range(4)] + ["{oops"])
    feedback = write_jsonl("f.jsonl", [{"prediction_id": f"pred-{i}", "true_class": 3,
                                        "ts": recent, "source": "review"} for i in range(4)])

    assert cli("ingest", "model", "vit", "--num-classes", "10") == 0
    assert cli("ingest", "predictions", str(predictions)) == 0
    assert "predictions: accepted 4, duplicate 0, quarantined 1 (malformed 1)" in (
        capsys.readouterr().out)
    assert cli("ingest", "predictions", str(predictions)) == 0
    assert "accepted 0, duplicate 4, quarantined 1" in capsys.readouterr().out
    assert cli("ingest", "feedback", str(feedback)) == 0
    assert "feedback: accepted 4, duplicate 0, quarantined 0" in capsys.readouterr().out

    out_file = tmp_path / "groups.json"
    assert cli("collect", "--model", "vit", "--since", "1d", "--seed", "3",
               "-o", str(out_file)) == 0
    printed = capsys.readouterr().out
    assert "3->8" in printed and "1 groups, 2 edit + 2 held-out" in printed
    data = json.loads(out_file.read_text())
    [group] = [ErrorGroup.from_dict(g) for g in data["groups"]]
    assert group.key == "3->8" and group.size == 4
    assert data["summary"]["seed"] == 3
    assert (tmp_path / "home" / "monitoring.db").exists()
    assert len(list((tmp_path / "home" / "images").rglob("*"))) > 4  # the image store


@pytest.mark.parametrize("args, message", [
    (["ingest", "predictions", "/no/such/file.jsonl"], "no such file"),
    (["ingest", "feedback", "{file}", "--format", "xml"], "--format must be"),
    (["ingest", "model", "vit"], "give --num-classes or --labels"),
    (["collect", "--model", "vit", "--since", "last week"], "cannot read 'last week'"),
    (["collect", "--model", "nobody"], "not registered"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, args: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.jsonl").write_text("")
    args = [a.replace("{file}", str(tmp_path / "f.jsonl")) for a in args]
    assert cli(*args, "--store-url", f"sqlite:///{tmp_path / 's.db'}") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_the_installed_command_exits_2_on_bad_input(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from vitedit_ops.cli import main; main()", "ingest",
         "predictions", str(tmp_path / "missing.jsonl")], capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 2 and "no such file" in done.stderr


def test_since_accepts_durations_and_timestamps() -> None:
    now = datetime(2026, 11, 24, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InvalidInputError):
        parse_since("soon", now)


def test_labels_register_the_class_count(tmp_path: Path) -> None:
    from monitoring.store import open_store

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli("ingest", "model", "digits", "--labels", "zero,one,two", "--store-url", url) == 0
    with open_store(url) as store:
        assert store.model_classes() == {"digits": 3}
