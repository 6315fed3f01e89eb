"""The batch thread's decoding: an unreadable image costs that image, an unexpected error that
request, and every other request of the batch is answered from the same onnxruntime call."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from serving.batching import Answered, _predict_batch
from serving.payload import Upload


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), value).save(buffer, format="PNG")
    return buffer.getvalue()


class _Pixels:
    """A stand-in preprocessor: one channel's mean, refusing the image of value 13."""

    def pixels_from_pil(self, image: Image.Image) -> torch.Tensor:
        if image.getpixel((0, 0)) == 13:
            raise RuntimeError("unforeseen")
        return torch.full((1,), image.getpixel((0, 0)) / 255.0)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels


@pytest.fixture
def champion() -> SimpleNamespace:
    calls: list[int] = []

    def probabilities(inputs: torch.Tensor) -> np.ndarray:
        calls.append(len(inputs))
        return np.repeat(inputs.numpy(), 2, axis=1).astype(np.float32)
    return SimpleNamespace(preprocessor=_Pixels(), spec=SimpleNamespace(num_classes=2),
                           probabilities=probabilities, calls=calls)


def test_each_request_gets_its_own_rows_and_errors(champion) -> None:
    requests = [[Upload("a", _png(51))],
                [Upload("bad", b"not an image"), Upload("b", _png(102))],
                [Upload("boom", _png(13)), Upload("c", _png(153))],
                [Upload("d", _png(204))]]
    first, second, third, fourth = _predict_batch(champion, requests)
    assert champion.calls == [3]  # one call for every readable image of the batch
    assert isinstance(first, Answered) and first.slots == [0]
    assert first.probs[:, 0].tolist() == pytest.approx([0.2])
    assert isinstance(second.slots[0], str) and second.slots[1] == 0
    assert second.probs[:, 0].tolist() == pytest.approx([0.4])
    assert isinstance(third, RuntimeError)  # its own request only: "c" is not predicted
    assert fourth.slots == [0] and fourth.probs[:, 0].tolist() == pytest.approx([0.8])


def test_a_batch_without_a_readable_image_runs_no_model(champion) -> None:
    (answer,) = _predict_batch(champion, [[Upload("bad", b"")]])
    assert champion.calls == [] and len(answer.probs) == 0 and isinstance(answer.slots[0], str)
