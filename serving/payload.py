"""The images of a ``POST /predict`` body: raw image bytes, or a multipart form of several.

Multipart bodies are split with Werkzeug's sans-IO decoder (installed with Flask, which
MLflow's server needs): the standard library's MIME parser (``email``) read every part line
by line and cost about 1 ms of CPU per image of a request, more than the rest of the server's
work on it; the decoder finds each boundary with one regular-expression search (about 50 us
per image, docs/serving.md). Every part with a body is an image, named by its filename (or
field name) in the answer. Content-Transfer-Encoding is not decoded: RFC 7578 (4.7) has
form-data senders not use it, and a part so encoded is answered as an unreadable image.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, State

from vitedit_ops.errors import InvalidInputError

MAX_IMAGES_PER_REQUEST = 256


@dataclass(frozen=True)
class Upload:
    """One image of a request, as received."""

    name: str
    data: bytes


def read_uploads(content_type: str, body: bytes) -> list[Upload]:
    """The request's images; refuses an empty body, a multipart body without parts, a
    malformed one and more than ``MAX_IMAGES_PER_REQUEST`` images (``InvalidInputError``,
    answered 400). An empty part is kept: it gets its own "not a readable image" answer."""
    if not body:
        raise InvalidInputError("empty request body: send image bytes or a multipart form")
    kind, options = parse_options_header(content_type)
    if not kind.lower().startswith("multipart/"):
        return [Upload("image", body)]
    boundary = options.get("boundary", "").encode("latin-1", "replace")
    if not boundary:
        raise InvalidInputError("multipart body without a boundary or parts")
    decoder = MultipartDecoder(boundary, max_parts=MAX_IMAGES_PER_REQUEST)
    decoder.receive_data(body)
    decoder.receive_data(None)
    uploads: list[Upload] = []
    name, chunks = "", []
    try:
        while not isinstance(event := decoder.next_event(), Epilogue):
            if isinstance(event, File | Field):
                filename = event.filename if isinstance(event, File) else None
                name = filename or event.name or f"part-{len(uploads)}"
                chunks = []
            elif isinstance(event, Data):
                chunks.append(event.data)
                if not event.more_data:
                    uploads.append(Upload(str(name), b"".join(chunks)))
    except RequestEntityTooLarge:
        raise InvalidInputError(f"more than {MAX_IMAGES_PER_REQUEST} images in one request; "
                                f"at most {MAX_IMAGES_PER_REQUEST}") from None
    except ValueError as exc:
        if decoder.state is State.PREAMBLE:  # no boundary anywhere in the body
            raise InvalidInputError("multipart body without a boundary or parts") from None
        raise InvalidInputError(f"malformed multipart body: {exc}") from None
    if not uploads:
        raise InvalidInputError("multipart body without a boundary or parts")
    return uploads
