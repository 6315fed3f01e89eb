"""Scratch directories that name their owning process, so a dead process's are swept.

A directory a process holds for its lifetime (a downloaded champion's suite, a local Prefect
server's home) is removed at normal exit, but not when the process is killed or leaves
through ``os._exit`` (process-pool workers do): those piled up in the temp directory. Each
directory's name carries its owner's pid; making a new one first removes those of the same
kind whose owner no longer runs.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"^vitedit-(?P<kind>[a-z]+)-(?P<pid>\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True


def sweep_orphans(kind: str, root: str | Path | None = None) -> list[Path]:
    """Remove the ``kind`` scratch directories under ``root`` (default: the temp directory)
    whose owning process has exited; returns what was removed. A pid reused since is taken
    for the owner, so a directory may outlive its owner: never the other way round."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"vitedit-{kind}-*"):
        match = _NAME.match(path.name)
        if (match is None or match["kind"] != kind or not path.is_dir()
                or _alive(int(match["pid"]))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


def scratch_prefix(kind: str) -> str:
    """The name prefix of this process's ``kind`` scratch directories, after sweeping dead
    processes' (for ``tempfile.mkdtemp`` / ``TemporaryDirectory``)."""
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"scratch kind {kind!r}: lower-case letters only")
    sweep_orphans(kind)
    return f"vitedit-{kind}-{os.getpid()}-"
