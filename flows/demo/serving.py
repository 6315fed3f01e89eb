"""Simulated production: ONNX Runtime serving the champion, loaded by alias from MLflow.

Each request is a PNG, decoded and preprocessed as the model's spec says, classified by the
ONNX file registered under ``models:/NAME@champion``, and logged through the monitoring
``PredictionLogger`` (image bytes included). Reviewers' labels arrive later as feedback.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import torch

from monitoring import MonitoringStore, PredictionLogger
from monitoring.feedback import submit_feedback
from registry import artifacts, versions
from registry.client import connect
from registry.loading import model_uri
from vitedit_ops.export import active_provider, load_session, run_session
from vitedit_ops.models import ModelSpec
from vitedit_ops.preprocess import Preprocessor, open_image

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
    """The champion's ONNX graph in onnxruntime, as a serving replica would run it."""

    def __init__(self, name: str, tracking_uri: str) -> None:
        client = connect(tracking_uri).client
        info = versions.by_alias(client, name, versions.CHAMPION)
        if info is None:
            raise LookupError(f"{name} has no champion to serve")
        self.name, self.version = name, info.version
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(model_uri(name), dst_path=tmp))
            self.session = load_session(local / "model.onnx")
            spec_file = client.download_artifacts(info.run_id, artifacts.SPEC, tmp)
            self.preprocessor = Preprocessor(ModelSpec.load(spec_file))

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    def predict(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k classes and probabilities per image (most likely first)."""
        inputs = self.preprocessor.from_pil([open_image(b) for b in images])
        logits = torch.from_numpy(run_session(self.session, inputs))
        probs, classes = logits.softmax(-1).topk(TOP_K, dim=-1)
        return classes.numpy(), probs.numpy()


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
