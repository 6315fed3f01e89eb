"""Where a benchmark keeps its stores: a home of its own, signed as the demo signs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registry.signing import use_local_key
from vitedit_ops.settings import embedded_home, environment

KEY_VARIABLE = "VITEDIT_SIGNING_KEY_FILE"


@contextmanager
def bench_home(path: Path, *also_unset: str) -> Iterator[None]:
    """Every store under ``path`` for the duration (settings are read at use), and a signing
    key of its own beside them when none is configured: serving refuses a champion no signed
    move put on its alias, so a self-contained run must sign what it registers."""
    with embedded_home(path, *also_unset), \
            environment({KEY_VARIABLE: os.environ.get(KEY_VARIABLE)}):
        use_local_key(path)  # the variable it sets is restored on the way out
        yield
