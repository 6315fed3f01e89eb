"""The content-addressed image store and the guarded decoder, on real bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from .monitoring_testlib import bomb_png, png_bytes

from monitoring.images import ImageIntegrityError, ImageStore, decode_image
from monitoring.validation import Reason, Rejected


def test_put_and_open_round_trip_by_hash(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "cas"))
    data = png_bytes(1)
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.put(data, sha) == sha  # idempotent
    assert store.open(sha) == data
    assert store.uri_for(sha).startswith("file://") and store.uri_for(sha).endswith(sha)
    image = store.load_image(sha)
    assert image.size == (8, 8) and image.mode == "RGB"
    assert not list((tmp_path / "cas").rglob(".tmp-*"))  # atomic writes leave no temp files


def test_write_verifies_the_declared_hash(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "cas"))
    with pytest.raises(Rejected) as info:
        store.put(png_bytes(1), "0" * 64)
    assert info.value.reason == Reason.HASH_MISMATCH
    assert not store.exists("0" * 64)


def test_read_verifies_the_hash_of_a_blob_altered_at_rest(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "cas"))
    sha = store.put(png_bytes(1))
    blob = tmp_path / "cas" / sha[:2] / sha
    blob.write_bytes(png_bytes(2))
    with pytest.raises(ImageIntegrityError, match="hash mismatch"):
        store.open(sha)
    with pytest.raises(ImageIntegrityError):
        store.load_image(sha)
    with pytest.raises(ImageIntegrityError, match="not in the store"):
        store.open("f" * 64)


def test_any_fsspec_url_works(tmp_path: Path) -> None:
    store = ImageStore(f"memory://vitedit-test-{tmp_path.name}")
    sha = store.put(png_bytes(3))
    assert store.uri_for(sha).startswith("memory://")
    assert store.load_image(sha).size == (8, 8)


def test_decompression_bombs_are_refused_from_the_header() -> None:
    bomb = bomb_png(12_000, 12_000)  # 144 Mpx in ~20 KB
    assert len(bomb) < 100_000
    with pytest.raises(Rejected) as info:
        decode_image(bomb)
    assert info.value.reason == Reason.DECOMPRESSION_BOMB
    assert decode_image(bomb_png(64, 64)).size == (64, 64)  # same format, sane size: fine


def test_the_pixel_limit_applies_to_stored_images_too(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "cas"))
    sha = store.put(png_bytes(1, size=(100, 100)))
    with pytest.raises(ImageIntegrityError, match="decompression_bomb"):
        store.load_image(sha, max_pixels=5_000)


@pytest.mark.parametrize("data", [png_bytes(1)[:-12], png_bytes(1)[:-20], png_bytes(1)[:-30],
                                  png_bytes(1)[:40], b"GIF89a garbage",
                                  b"%!PS-Adobe-3.0 EPSF-3.0\n", b"\x00" * 64])
def test_truncated_or_corrupt_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(Rejected) as info:
        decode_image(data)
    assert info.value.reason == Reason.CORRUPT_IMAGE
