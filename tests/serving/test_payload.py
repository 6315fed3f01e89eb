"""Request bodies as clients send them (``requests``' own multipart encoder), and the command."""

from __future__ import annotations

import pytest
import requests
import typer
from typer.testing import CliRunner

from serving.cli import register
from serving.payload import MAX_IMAGES_PER_REQUEST, read_uploads
from vitedit_ops.errors import InvalidInputError


def _multipart(files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[str, bytes]:
    prepared = requests.Request("POST", "http://127.0.0.1/predict", files=files).prepare()
    return prepared.headers["Content-Type"], prepared.body


def test_multipart_parts_keep_their_bytes_and_names():
    binary = bytes(range(256)) + b"\r\n--\r\n" + bytes(range(255, -1, -1))
    content_type, body = _multipart([("images", ("a.png", binary, "image/png")),
                                     ("images", ("b.jpg", b"\xff\xd8\xff", "image/jpeg")),
                                     ("extra", ("", b"raw field", "application/octet-stream"))])
    uploads = read_uploads(content_type, body)
    assert [(u.name, u.data) for u in uploads] == [("a.png", binary), ("b.jpg", b"\xff\xd8\xff"),
                                                   ("extra", b"raw field")]


def test_hand_written_bodies_as_curl_and_browsers_send_them():
    # a quoted boundary, a preamble and an epilogue, a filename with a quote and a
    # semicolon, a part without a filename (its field name), bare LF line ends in the last
    body = (b"preamble\r\n--a b\r\n"
            b'Content-Disposition: form-data; name="images"; filename="x \\"1\\"; y.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\r\n--a b\r\n"
            b'Content-Disposition: form-data; name="second"\r\n\r\n'
            b"bytes\r\n--a b\n"
            b'Content-Disposition: form-data; name="third"\n\n\n--a b--\r\nepilogue')
    uploads = read_uploads('multipart/form-data; boundary="a b"', body)
    assert [(u.name, u.data) for u in uploads] == [('x "1"; y.png', b"\x89PNG\r\n"),
                                                   ("second", b"bytes"), ("third", b"")]


def test_a_raw_body_is_one_image():
    [upload] = read_uploads("image/png", b"\x89PNG...")
    assert (upload.name, upload.data) == ("image", b"\x89PNG...")


@pytest.mark.parametrize("content_type, body, message", [
    ("image/png", b"", "empty request body"),
    ("multipart/form-data; boundary=xyz", b"no parts at all", "without a boundary or parts"),
    ("multipart/form-data; boundary=xyz", b"--xyz--\r\n", "without a boundary or parts"),
    ("multipart/form-data", b"--xyz--\r\n", "without a boundary or parts"),
    ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Type: image/png\r\n\r\nx\r\n"
     b"--xyz--\r\n", "malformed multipart body: Missing Content-Disposition"),
    ("multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; '
     b'name="a"\r\n\r\nno closing boundary', "malformed multipart body"),
])
def test_bodies_without_an_image_are_refused(content_type, body, message):
    with pytest.raises(InvalidInputError, match=message):
        read_uploads(content_type, body)


def test_too_many_images_in_one_request_are_refused():
    files = [("images", (f"{i}.png", b"x", "image/png"))
             for i in range(MAX_IMAGES_PER_REQUEST + 1)]
    with pytest.raises(InvalidInputError, match=f"at most {MAX_IMAGES_PER_REQUEST}"):
        read_uploads(*_multipart(files))


def test_serve_is_a_command_with_its_batching_and_reload_options():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """A group, as vitedit-ops is."""

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--model", "--port", "--max-batch", "--batch-window-ms", "--poll-interval"):
        assert option in result.output
