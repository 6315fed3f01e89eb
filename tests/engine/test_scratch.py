"""Scratch directories of a killed process are swept by the next one; a live owner's stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vitedit_ops.scratch import scratch_prefix, sweep_orphans


def _dead_pid() -> int:
    """The pid of a process killed with SIGKILL (no cleanup of its own ran)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.pid


def test_a_killed_owners_directories_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead = _dead_pid()
    orphan = tmp_path / f"vitedit-champion-{dead}-abc"
    (orphan / "suite").mkdir(parents=True)
    (orphan / "suite" / "v0001.safetensors").write_bytes(b"x" * 100)
    mine = tmp_path / f"vitedit-champion-{os.getpid()}-def"
    mine.mkdir()
    other_kind = tmp_path / f"vitedit-serve-{dead}-ghi"
    other_kind.mkdir()
    not_ours = tmp_path / "vitedit-champion-notapid"
    not_ours.mkdir()
    assert sweep_orphans("champion", tmp_path) == [orphan]
    assert not orphan.exists()
    assert mine.is_dir() and other_kind.is_dir() and not_ours.is_dir()
    assert sweep_orphans("serve", tmp_path) == [other_kind]


def test_the_prefix_names_this_process_and_sweeps_first(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    orphan = tmp_path / f"vitedit-serve-{_dead_pid()}-x"
    orphan.mkdir()
    prefix = scratch_prefix("serve")
    assert prefix == f"vitedit-serve-{os.getpid()}-"
    assert not orphan.exists()
    made = Path(tempfile.mkdtemp(prefix=prefix))
    assert made.parent == tmp_path and sweep_orphans("serve") == []
    with pytest.raises(ValueError, match="lower-case"):
        scratch_prefix("Serve-1")
