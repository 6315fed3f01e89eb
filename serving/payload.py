"""The images of a ``POST /predict`` body: raw image bytes, or a multipart form of several.

Multipart bodies are read with the standard library's MIME parser (``email``), so the server
needs no multipart package beyond what the project already depends on. Every part with a body
is an image, named by its filename (or field name) in the answer.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass

from vitedit_ops.errors import InvalidInputError

MAX_IMAGES_PER_REQUEST = 256


@dataclass(frozen=True)
class Upload:
    """One image of a request, as received."""

    name: str
    data: bytes


def read_uploads(content_type: str, body: bytes) -> list[Upload]:
    """The request's images; refuses an empty body, a multipart body without parts and more
    than ``MAX_IMAGES_PER_REQUEST`` images (``InvalidInputError``, answered 400). An empty
    part is kept: it gets its own "not a readable image" answer."""
    if not body:
        raise InvalidInputError("empty request body: send image bytes or a multipart form")
    if not content_type.lower().startswith("multipart/"):
        return [Upload("image", body)]
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise InvalidInputError("multipart body without a boundary or parts")
    uploads = []
    for index, part in enumerate(message.iter_parts()):
        data = part.get_payload(decode=True) or b""
        name = part.get_filename() or part.get_param("name", header="content-disposition") \
            or f"part-{index}"
        uploads.append(Upload(str(name), data))
    if len(uploads) > MAX_IMAGES_PER_REQUEST:
        raise InvalidInputError(f"{len(uploads)} images in one request; at most "
                                f"{MAX_IMAGES_PER_REQUEST}")
    return uploads
