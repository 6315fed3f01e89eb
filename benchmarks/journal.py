"""Rows of a benchmark grid written as each job finishes, so a long run can resume.

The full grid runs for well over an hour; a run stopped late must not lose what it measured.
Every finished (method point, k) job is appended to ``rows.jsonl`` and flushed; ``--resume``
reads it back and skips the jobs it holds. The first line records what the rows depend on
(reference model, seed, cases, editor defaults, ...): resuming under anything else is refused,
because mixing rows from two settings would make the paired comparisons meaningless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vitedit_ops.errors import InvalidInputError

from .grid import MethodPoint

Row = dict[str, Any]
JOURNAL = "rows.jsonl"


def job_key(point: MethodPoint, k: int) -> str:
    """A job's identity: everything that decides its rows besides the shared header."""
    return json.dumps([point.family, point.editor, point.knob, point.lr,
                       [list(option) for option in point.options], k], default=str)


class RowJournal:
    """Append-only JSON-lines record of finished jobs under a fixed header."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.header = json.loads(json.dumps(header, default=str))
        self.completed: dict[str, list[Row]] = {}
        if resume and path.is_file():
            self._read()
            self._handle = open(path, "a")
        else:
            self._handle = open(path, "w")
            self._write({"header": self.header})

    def _read(self) -> None:
        lines = self.path.read_text().splitlines()
        if not lines:
            raise InvalidInputError(f"{self.path} is empty: nothing to resume")
        found = json.loads(lines[0]).get("header")
        if found != self.header:
            changed = sorted(k for k in set(found or {}) | set(self.header)
                             if (found or {}).get(k) != self.header.get(k))
            raise InvalidInputError(
                f"cannot resume from {self.path}: it was written under other settings "
                f"({', '.join(changed)} differ); start a fresh run in another directory")
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # a job cut off mid-write: it reruns
            self.completed[entry["job"]] = entry["rows"]

    def _write(self, entry: dict[str, Any]) -> None:
        self._handle.write(json.dumps(entry, default=str) + "\n")
        self._handle.flush()

    def record(self, key: str, rows: Iterable[Row]) -> None:
        rows = list(rows)
        self.completed[key] = rows
        self._write({"job": key, "rows": rows})

    def close(self) -> None:
        self._handle.close()
