"""Simulated production: the served champion classifying a day of requests in-process.

Each request is a PNG, preprocessed as the model's spec says (timm's eval transform),
classified by the ONNX file of the version that holds ``models:/NAME@champion``, verified as
``vitedit-ops serve`` verifies it, and logged through the monitoring ``PredictionLogger``
(image bytes included). Reviewers' labels arrive later as feedback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import torch

from monitoring import MonitoringStore, PredictionLogger
from monitoring.feedback import submit_feedback
from registry import versions
from serving import champion as champions
from vitedit_ops.preprocess import open_image

TOP_K = 3
BATCH = 64


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
