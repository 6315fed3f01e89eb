"""Simulated production: a day of requests classified by the served champion.

The demo sends its days over HTTP to a real ``vitedit-ops serve`` on loopback
(``serve_day_over_http``, ``review_over_http``): a few concurrent clients post multipart
requests of several PNGs, the server batches them, answers with its prediction ids and logs
every prediction with its image; reviewers' labels go back to its ``/feedback``. The
continual benchmark, which serves hundreds of days, keeps the in-process path
(``ChampionServer``: the same verified ONNX graph, preprocessing and ``PredictionLogger``,
without a process per day).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import torch

from monitoring import MonitoringStore, PredictionLogger
from monitoring.feedback import submit_feedback
from registry import versions
from serving import champion as champions
from serving.client import ServingClient
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.preprocess import open_image

TOP_K = 3
BATCH = 64
REQUEST_IMAGES = 8   # images per HTTP request
CLIENTS = 4          # concurrent HTTP clients
FEEDBACK_CHUNK = 200


@dataclass(frozen=True)
class Request:
    """One production request and the truth a reviewer will report later."""

    prediction_id: str
    image: bytes
    true_class: int
    subpopulation: str


class ChampionServer:
    """The champion's verified ONNX graph in onnxruntime, as ``vitedit-ops serve`` loads it."""

    def __init__(self, name: str, tracking_uri: str) -> None:
        self.champion = champions.load(champions.resolve(name, tracking_uri), tracking_uri)
        self.name, self.version = name, self.champion.version

    @property
    def provider(self) -> str:
        return self.champion.provider

    def predict(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k classes and probabilities per image (most likely first)."""
        preprocessor = self.champion.preprocessor
        inputs = preprocessor.from_pil([open_image(b) for b in images])
        probs = torch.from_numpy(self.champion.probabilities(inputs))
        top, classes = probs.topk(TOP_K, dim=-1)
        return classes.numpy(), top.numpy()


def serve_day(server: ChampionServer, logger: PredictionLogger, requests: list[Request],
              start: datetime, on_batch: Callable[[int], None]) -> dict[str, int]:
    """Classify and log every request, spread over one day from ``start``; returns errors per
    subpopulation (what the reviewers will find)."""
    errors: dict[str, int] = {}
    step = timedelta(days=1) / max(1, len(requests))
    for offset in range(0, len(requests), BATCH):
        batch = requests[offset:offset + BATCH]
        classes, probs = server.predict([r.image for r in batch])
        for i, request in enumerate(batch):
            predicted = int(classes[i, 0])
            logger.log(request.prediction_id, model=server.name, model_version=server.version,
                       model_alias=versions.CHAMPION, predicted_class=predicted,
                       topk=[[int(c), float(p)] for c, p in zip(classes[i], probs[i])],
                       image=request.image, ts=start + step * (offset + i),
                       metadata={"subpopulation": request.subpopulation})
            if predicted != request.true_class:
                errors[request.subpopulation] = errors.get(request.subpopulation, 0) + 1
        on_batch(len(batch))
    logger.flush()
    return errors


def review(store: MonitoringStore, requests: list[Request], when: datetime) -> int:
    """Reviewers' labels for the day's requests, arriving ``when``; returns how many."""
    report = submit_feedback(store, [{"prediction_id": r.prediction_id,
                                      "true_class": r.true_class, "source": "human_review",
                                      "ts": when} for r in requests])
    return report.accepted


def serve_day_over_http(url: str, requests: list[Request], on_batch: Callable[[int], None],
                        ) -> tuple[dict[str, int], dict[str, str]]:
    """Send the day to the server at ``url``; returns errors per subpopulation and the
    server's prediction id of every request (what the reviewers' labels refer to)."""
    chunks = [requests[i:i + REQUEST_IMAGES] for i in range(0, len(requests), REQUEST_IMAGES)]
    local = threading.local()

    def send(chunk: list[Request]) -> list[dict[str, Any]]:
        if not hasattr(local, "client"):
            local.client = ServingClient(url)
        answer = local.client.predict([(r.prediction_id, r.image) for r in chunk])
        on_batch(len(chunk))
        return answer["predictions"]

    errors: dict[str, int] = {}
    ids: dict[str, str] = {}
    with ThreadPoolExecutor(CLIENTS, thread_name_prefix="demo-client") as pool:
        for chunk, answers in zip(chunks, pool.map(send, chunks)):
            for request, answer in zip(chunk, answers, strict=True):
                if "error" in answer:
                    raise InvalidInputError(f"the server refused {request.prediction_id}: "
                                            f"{answer['error']}")
                ids[request.prediction_id] = answer["prediction_id"]
                if answer["predicted_class"] != request.true_class:
                    errors[request.subpopulation] = errors.get(request.subpopulation, 0) + 1
    return errors, ids


def review_over_http(client: ServingClient, requests: list[Request],
                     ids: dict[str, str]) -> int:
    """Reviewers' labels for the day's requests, posted to ``/feedback``; returns how many
    the server accepted."""
    items = [{"prediction_id": ids[r.prediction_id], "true_class": r.true_class,
              "source": "human_review"} for r in requests]
    return sum(client.feedback(items[i:i + FEEDBACK_CHUNK])["accepted"]
               for i in range(0, len(items), FEEDBACK_CHUNK))
