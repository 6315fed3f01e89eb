"""Content-addressed image store (any fsspec URL) and the image checks ingest applies.

Blobs are named by their sha256, so the same production image logged a thousand times is
stored once, and every read re-hashes the bytes: a blob altered at rest is refused instead of
being edited on. Decoding goes through one guarded function so a decompression bomb is
refused from its header, before a pixel is allocated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
import warnings
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, UnidentifiedImageError

from vitedit_ops.errors import InfrastructureError, InvalidInputError

from .validation import Reason, Rejected

#: Largest image (width x height) decoded anywhere; a 8K x 5K photo fits, a bomb does not.
DEFAULT_MAX_PIXELS = 40_000_000
#: Largest encoded image read from a source URI.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Formats PIL may decode here; the rest (EPS calls Ghostscript, ...) are refused.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class ImageIntegrityError(InvalidInputError):
    """A stored blob does not hash to its name, or is missing."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decoded image, refusing bombs by header size and truncated/corrupt bytes.

    ``verify()`` checks the container (PNG chunk CRCs, a missing IEND) that a lenient
    ``load()`` would decode past; ``load()`` then catches truncated pixel data.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise Rejected(Reason.DECOMPRESSION_BOMB,
                               f"{width}x{height} exceeds the {max_pixels}-pixel limit")
            image.verify()
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(Reason.DECOMPRESSION_BOMB, str(exc)) from None
    except UnidentifiedImageError:
        raise Rejected(Reason.CORRUPT_IMAGE, "not a supported image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Rejected(Reason.CORRUPT_IMAGE, f"undecodable image: {exc}") from None
    return image


def check_image_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """The format and size checks of ``decode_image`` from the header alone, for bytes the
    caller has already decoded in full (the server, to predict on them): a fraction of a
    full decode's cost, and the same formats and pixel limit are refused."""
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise Rejected(Reason.CORRUPT_IMAGE, "not a supported image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Rejected(Reason.CORRUPT_IMAGE, f"undecodable image: {exc}") from None
    if width * height > max_pixels:
        raise Rejected(Reason.DECOMPRESSION_BOMB,
                       f"{width}x{height} exceeds the {max_pixels}-pixel limit")


def read_source(location: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes behind an already policy-checked local path or fsspec URL."""
    try:
        if "://" in location:
            with fsspec.open(location, "rb") as handle:
                data = handle.read(max_bytes + 1)
        else:  # plain open: several times faster than fsspec for local files
            with open(location, "rb") as handle:
                data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise Rejected(Reason.IMAGE_MISSING, f"no image at {location!r}") from None
    except (OSError, ValueError) as exc:
        raise Rejected(Reason.IMAGE_UNREADABLE, f"cannot read {location!r}: {exc}") from None
    if len(data) > max_bytes:
        raise Rejected(Reason.IMAGE_TOO_LARGE, f"image is larger than {max_bytes} bytes")
    if not data:
        raise Rejected(Reason.CORRUPT_IMAGE, "image file is empty")
    return data


@dataclass
class ImageStore:
    """Blobs under ``url`` as ``<sha[:2]>/<sha>``; ``url`` is a directory or fsspec URL."""

    url: str

    def __post_init__(self) -> None:
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._root = self._root.rstrip("/")
        self._local = isinstance(self._fs, LocalFileSystem)
        self._uri_root = self._fs.unstrip_protocol(self._root)  # once: fsspec's is slow
        self._made: set[str] = set()  # local fan-out directories known to exist
        if self._local:
            try:
                os.makedirs(self._root, exist_ok=True)
            except OSError as exc:
                raise InfrastructureError(f"image store {self.url} cannot be created: "
                                          f"{exc}") from exc

    def _path(self, sha256: str) -> str:
        return f"{self._root}/{sha256[:2]}/{sha256}"

    def uri_for(self, sha256: str) -> str:
        """Where a blob lives, as a URL another process can open with fsspec."""
        return f"{self._uri_root}/{sha256[:2]}/{sha256}"

    def exists(self, sha256: str) -> bool:
        path = self._path(sha256)
        return os.path.exists(path) if self._local else bool(self._fs.exists(path))

    def put(self, data: bytes, expected_sha256: str | None = None) -> str:
        """Store bytes (verifying ``expected_sha256`` when given) and return their sha256.

        Local writes go through a temporary file and an atomic rename, so a crash never
        leaves a half-written blob under a valid name.
        """
        digest = sha256_hex(data)
        if expected_sha256 is not None and digest != expected_sha256:
            raise Rejected(Reason.HASH_MISMATCH,
                           f"bytes hash to {digest}, record says {expected_sha256}")
        return self.put_hashed(data, digest)

    def put_hashed(self, data: bytes, digest: str) -> str:
        """``put`` for bytes the caller has just hashed to ``digest`` (ingest does, to check
        the record's hash): the bytes are not hashed a second time."""
        if self.exists(digest):
            return digest
        path = self._path(digest)
        try:
            if self._local:
                self._write_local(path, data, self._made)
            else:
                self._fs.pipe_file(path, data)
        except OSError as exc:  # a full disk, permissions, an unreachable bucket
            raise InfrastructureError(f"image store {self.url} could not store image "
                                      f"{digest[:12]}: {exc}") from exc
        return digest

    @staticmethod
    def _write_local(path: str, data: bytes, made: set[str]) -> None:
        """Write through a temporary file and an atomic rename; a failed write (a full disk)
        removes its temporary file instead of leaving a 0-byte one behind. ``made``: the
        directories already created (a makedirs per blob cost as much as the write)."""
        directory = os.path.dirname(path)
        if directory not in made:
            os.makedirs(directory, exist_ok=True)
            made.add(directory)
        tmp = f"{directory}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def open(self, sha256: str) -> bytes:
        """The blob's bytes, re-hashed: a missing or altered blob raises."""
        path = self._path(sha256)
        try:
            if self._local:
                with open(path, "rb") as handle:
                    data = handle.read()
            else:
                data = self._fs.cat_file(path)
        except FileNotFoundError:
            raise ImageIntegrityError(f"image {sha256} is not in the store") from None
        if sha256_hex(data) != sha256:
            raise ImageIntegrityError(f"stored image {sha256} is corrupt (hash mismatch)")
        return data

    def load_image(self, sha256: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   mode: str | None = "RGB") -> Image.Image:
        """Verified, decoded pixels (converted to ``mode`` unless None) for the editor."""
        try:
            image = decode_image(self.open(sha256), max_pixels=max_pixels)
        except Rejected as exc:
            raise ImageIntegrityError(f"stored image {sha256}: {exc}") from None
        return image.convert(mode) if mode and image.mode != mode else image


def open_image_store(url: str | None = None) -> ImageStore:
    """The image store at ``url`` or the configured one (VITEDIT_IMAGE_STORE_URL, else a
    directory under VITEDIT_HOME)."""
    if url is None:
        from vitedit_ops.settings import get_settings
        url = get_settings().resolved_image_store_url()
    return ImageStore(url)
