"""The HTTP service: ``/predict``, ``/feedback``, ``/healthz``, ``/readyz``, ``/metrics``, and
``/webhooks/mlflow`` (an authenticated MLflow registry webhook makes the server look at the
champion alias at once; polling stays the fallback).

Every answered image is logged with its bytes through the monitoring ``PredictionLogger``
under a prediction id the answer carries, which is what reviewers send back to ``/feedback``.
An image that cannot be read costs that image only: it gets its own error, the request's other
images are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring import PredictionLogger, open_image_store, open_store
from monitoring.feedback import submit_feedback
from registry.versions import CHAMPION
from vitedit_ops.errors import InvalidInputError

from .batching import Batcher, NoChampionError
from .champion import Champion
from .metrics import ServingMetrics
from .payload import Upload, read_uploads
from .reload import ChampionSlot
from .webhook import WebhookRefused, authenticate

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024 * 1024
RETRY_AFTER_SECONDS = "5"
WEBHOOK_PATH = "/webhooks/mlflow"
ENDPOINTS = frozenset({"/predict", "/feedback", "/healthz", "/readyz", "/metrics",
                       WEBHOOK_PATH})


@dataclass(frozen=True)
class ServeConfig:
    """What one server serves and how it batches; ``None`` URLs mean the settings' defaults."""

    model: str
    tracking_uri: str | None = None
    store_url: str | None = None
    image_store_url: str | None = None
    poll_interval: float = 30.0
    max_batch: int = 32
    batch_window: float = 0.005  # seconds
    top_k: int = 3
    threads: int | None = None   # onnxruntime intra-op threads (default: its own choice)
    webhook_secret: str | None = None  # MLflow webhook secret; None: no webhook endpoint


def _top_k(champion: Champion, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, most probable first (ties: the lower class)."""
    names = champion.class_names
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": c, "label": names[c], "probability": p}
            for c, p in zip(order.tolist(), probs[order].tolist())]


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class Service:
    """State of one running server: store, logger, champion slot, batcher, metrics."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = open_store(config.store_url)
        self.logger = PredictionLogger(self.store, open_image_store(config.image_store_url))
        self.metrics = ServingMetrics(self.logger.stats)
        self.slot = ChampionSlot(config.model, config.tracking_uri,
                                 poll_interval=config.poll_interval,
                                 before_swap=self._declare_classes, on_outcome=self._loaded,
                                 threads=config.threads)
        self.batcher = Batcher(lambda: self.slot.current, max_batch=config.max_batch,
                               window=config.batch_window,
                               on_batch=self.metrics.batch_size.observe)

    def _declare_classes(self, champion: Champion) -> None:
        """The class set ingest validates served predictions against, declared before the
        champion answers (a prediction of an undeclared model is quarantined)."""
        try:
            self.store.register_model(champion.name, champion.spec.num_classes,
                                      champion.class_names)
        except Exception:  # noqa: BLE001 - the store being down must not stop serving
            log.exception("serving %s: declaring its classes in the store failed",
                          champion.name)

    def _loaded(self, outcome: str, current: Champion | None) -> None:
        self.metrics.reloads.labels(outcome).inc()
        self.metrics.champion.set(int(current.version) if current else 0)

    async def start(self) -> None:
        self.batcher.start()
        self.slot.start()

    async def stop(self) -> None:
        await self.slot.stop()
        await self.batcher.stop()
        await asyncio.to_thread(self.logger.close)
        self.store.close()

    async def predict(self, request: Request) -> Response:
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        if self.slot.current is None:
            return _error(503, "no verified champion loaded yet", **{
                "Retry-After": RETRY_AFTER_SECONDS})
        try:
            uploads = read_uploads(request.headers.get("content-type", ""),
                                   await request.body())
        except InvalidInputError as exc:
            return _error(400, str(exc))
        try:
            answered = await self.batcher.predict(uploads)
        except NoChampionError as exc:
            return _error(503, str(exc), **{"Retry-After": RETRY_AFTER_SECONDS})
        served = answered.champion if len(answered.probs) else None
        answers = [self._answer(upload, slot, served, answered.probs)
                   for upload, slot in zip(uploads, answered.slots)]
        body = {"model": self.config.model, "version": served.version if served else None,
                "predictions": answers}
        # orjson: Starlette's JSONResponse took ~15 us per answer, orjson ~2 (same bytes)
        return Response(orjson.dumps(body), status_code=200 if served is not None else 422,
                        media_type="application/json")

    def _answer(self, upload: Upload, slot: int | str, champion: Champion | None,
                probs: np.ndarray) -> dict[str, Any]:
        if isinstance(slot, str) or champion is None:
            self.metrics.images.labels("unreadable").inc()
            return {"name": upload.name, "error": slot}
        top = _top_k(champion, probs[slot], self.config.top_k)
        prediction_id = uuid.uuid4().hex
        logged = self.logger.log(
            prediction_id, model=champion.name, model_version=champion.version,
            model_alias=CHAMPION, predicted_class=top[0]["class"],
            topk=[[t["class"], t["probability"]] for t in top], image=upload.data,
            image_decoded=True,  # the batch opened it in full to predict on it
            metadata={"filename": upload.name})
        self.metrics.images.labels("predicted").inc()
        return {"name": upload.name, "prediction_id": prediction_id,
                "version": champion.version, "predicted_class": top[0]["class"],
                "label": top[0]["label"], "top_k": top, "logged": logged}

    async def feedback(self, request: Request) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            return _error(400, "feedback must be JSON: an object or a list of objects with "
                               "prediction_id and true_class")
        items = payload if isinstance(payload, list) else [payload]
        if not items or not all(isinstance(item, dict) for item in items):
            return _error(400, "feedback must be an object or a non-empty list of objects")
        report = await asyncio.to_thread(submit_feedback, self.store, items, origin="http")
        status = 200 if report.quarantined < len(items) else 422
        return JSONResponse(report.to_dict(), status_code=status)

    def ready(self) -> Response:
        champion = self.slot.current
        if champion is None:
            return JSONResponse({"ready": False, "model": self.config.model,
                                 "reason": "no verified champion loaded yet"}, status_code=503)
        return JSONResponse({"ready": True, "model": champion.name,
                             "version": champion.version, "provider": champion.provider,
                             "onnx_sha256": champion.onnx_sha256})

    async def webhook(self, request: Request) -> Response:
        if not self.config.webhook_secret:
            return _error(404, "no webhook secret configured (VITEDIT_SERVE_WEBHOOK_SECRET)")
        body = await request.body()
        try:
            delivery = authenticate(self.config.webhook_secret, request.headers, body,
                                    time.time())
        except WebhookRefused as exc:
            log.warning("serving %s: webhook delivery refused: %s", self.config.model, exc)
            self.metrics.webhooks.labels("refused").inc()
            return _error(401, str(exc))
        if not delivery.concerns(self.config.model):
            self.metrics.webhooks.labels("ignored").inc()
            return JSONResponse({"event": delivery.event, "checking": False})
        self.metrics.webhooks.labels("accepted").inc()
        self.slot.wake()
        return JSONResponse({"event": delivery.event, "checking": True}, status_code=202)

    def metrics_page(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _Count:
    """Requests by endpoint and status, and latency, as a plain ASGI middleware: Starlette's
    ``@app.middleware("http")`` runs every request through a task group and memory streams,
    which cost more event-loop time than the rest of the framework."""

    def __init__(self, app: ASGIApp, holder: dict[str, Service]) -> None:
        self.app = app
        self.holder = holder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        await self.app(scope, receive, note_status)
        service = self.holder.get("service")
        if service is not None:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            service.metrics.requests.labels(endpoint, str(status)).inc()
            if endpoint in ("/predict", "/feedback"):
                service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``models:/MODEL@champion``."""
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service = await asyncio.to_thread(Service, config)
        holder["service"] = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="vitedit-ops serve", lifespan=lifespan,
                  description=f"Serves models:/{config.model}@{CHAMPION} with onnxruntime.")

    app.add_middleware(_Count, holder=holder)

    @app.post("/predict", summary="Classify one image (raw bytes) or several (multipart)")
    async def predict(request: Request) -> Response:
        return await holder["service"].predict(request)

    @app.post("/feedback", summary="Reviewers' labels: {prediction_id, true_class[, source]}")
    async def feedback(request: Request) -> Response:
        return await holder["service"].feedback(request)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready once a verified champion is loaded")
    async def readyz() -> Response:
        return holder["service"].ready()

    @app.post(WEBHOOK_PATH, summary="MLflow registry webhook (HMAC-signed): look at the "
              "champion alias now")
    async def webhook(request: Request) -> Response:
        return await holder["service"].webhook(request)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return holder["service"].metrics_page()

    return app
