"""Plain helpers for the monitoring tests (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

from PIL import Image


def png_bytes(seed: int, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small, valid, distinct PNG per seed."""
    image = Image.new("RGB", size, (seed % 256, (seed // 256) % 256, 7 + seed // 65536))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


@lru_cache
def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of all zeros: tiny on disk, huge once decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))
