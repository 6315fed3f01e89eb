"""docs/BENCHMARKS.md holds one section per benchmark; each run rewrites only its own.

A section sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; a section not yet in
the file is appended, and text outside every section (the page's title) is kept.
"""

from __future__ import annotations

import re
from pathlib import Path

TITLE = "# Benchmarks\n"


def write_section(path: Path, name: str, text: str) -> Path:
    """Replace (or append) section ``name`` of ``path`` with ``text``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    current = path.read_text() if path.is_file() else TITLE
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _m: block, current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(updated)
    return path
