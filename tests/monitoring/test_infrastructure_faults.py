"""Store and disk failures through the real ``vitedit-ops`` process: one line and exit 4 (a
scheduler retries later), nothing half-written left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitoring.store import open_store
from tests.helpers.servers import free_port

from .monitoring_testlib import png_bytes

CLI = [sys.executable, "-c", "from vitedit_ops.cli import main; main()"]


def vitedit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    return lines[0]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: writes beyond it fail with ENOSPC, for real (needs mount rights)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def noise_png(seed: int, side: int = 128) -> bytes:
    """An incompressible PNG (~50 KB) so a few of them fill a 1 MiB disk."""
    import io

    from PIL import Image

    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def predictions_file(src: Path, count: int, image: Any) -> Path:
    path = src / "p.jsonl"
    with path.open("w") as handle:
        for i in range(count):
            (src / f"img_{i}.png").write_bytes(image(i))
            handle.write(json.dumps({"id": f"p-{i}", "ts": "2026-11-20T10:00:00Z",
                                     "model": "vit", "model_version": "1",
                                     "image_uri": f"img_{i}.png", "predicted_class": 1}) + "\n")
    return path


def test_an_unreachable_postgresql_store_is_one_line_and_exit_4(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text("{}\n")
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/vitedit"  # nobody listens
    line = one_line(vitedit("ingest", "predictions", tmp_path / "p.jsonl", "--store-url", url), 4)
    assert "monitoring store" in line and "Connection refused" in line
    assert "secret" not in line  # the password is hidden
    line = one_line(vitedit("collect", "--model", "vit", "--store-url", url), 4)
    assert "Connection refused" in line


@pytest.mark.postgres
def test_a_missing_postgresql_database_is_one_line_and_exit_4(pg_admin: Any,
                                                              tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text("{}\n")
    url = "postgresql://postgres@127.0.0.1:5432/vitedit_no_such_database"
    line = one_line(vitedit("ingest", "predictions", tmp_path / "p.jsonl", "--store-url", url), 4)
    assert 'database "vitedit_no_such_database" does not exist' in line


def test_a_full_image_disk_is_exit_4_and_leaves_no_temporary_files(
        tiny_disk: Path, tmp_path: Path, src: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url) as store:
        store.register_model("vit", 10)
    path = predictions_file(src, 40, noise_png)  # ~2 MB of images for a 1 MiB disk
    cas = tiny_disk / "cas"
    done = vitedit("ingest", "predictions", path, "--store-url", url, "--image-store-url", cas,
                   "--batch-size", "5")
    line = one_line(done, 4)
    assert "image store" in line and "No space left on device" in line
    leftovers = [p for p in cas.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
    assert leftovers == []
    with open_store(url) as store:
        stored = store.counts()["predictions"]
    blobs = [p for p in cas.rglob("*") if p.is_file()]
    assert stored % 5 == 0 and stored <= len(blobs)  # whole batches committed, images present

    subprocess.run(["umount", str(tiny_disk)], check=True)  # "free space": a fresh mount
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(tiny_disk)],
                   check=True)
    done = vitedit("ingest", "predictions", path, "--store-url", url, "--image-store-url", cas)
    assert done.returncode == 0 and "accepted" in done.stdout, done.stderr
    with open_store(url) as store:
        assert store.counts()["predictions"] == 40


def test_a_full_store_disk_is_exit_4(tiny_disk: Path, src: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tiny_disk / 'store.db'}"
    with open_store(url) as store:
        store.register_model("vit", 10)
    fd = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    path = predictions_file(src, 200, png_bytes)
    done = vitedit("ingest", "predictions", path, "--store-url", url,
                   "--image-store-url", tmp_path / "cas")
    line = one_line(done, 4)
    assert "monitoring store" in line and "full" in line
