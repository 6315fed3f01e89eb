"""``vitedit-ops serve``, registered via entry point.

Import-light on purpose: this module is imported by every ``vitedit-ops`` invocation, so
FastAPI, uvicorn, onnxruntime and the stores are imported inside the command.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Annotated

import typer


class HTTPParser(str, Enum):
    auto = "auto"
    h11 = "h11"
    httptools = "httptools"


class EventLoop(str, Enum):
    auto = "auto"
    asyncio = "asyncio"
    uvloop = "uvloop"


def serve(
    model: Annotated[str | None, typer.Option(
        "--model", help="Registered model to serve [default: VITEDIT_REGISTERED_MODEL].")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", min=1, help="Most images per onnxruntime call "
        "[default: VITEDIT_SERVE_MAX_BATCH].")] = None,
    batch_window_ms: Annotated[float | None, typer.Option(
        "--batch-window-ms", min=0, help="How long a batch waits for more requests "
        "[default: VITEDIT_SERVE_BATCH_WINDOW_MS].")] = None,
    poll_interval: Annotated[float | None, typer.Option(
        "--poll-interval", min=0.1, help="Seconds between looks at the champion alias "
        "[default: VITEDIT_SERVE_POLL_INTERVAL].")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes per answer.")] = 3,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="onnxruntime intra-op threads [default: one per core].")] = None,
    http: Annotated[HTTPParser, typer.Option(
        "--http", help="HTTP parser: auto takes httptools (C) when installed, else h11.")
    ] = HTTPParser.auto,
    loop: Annotated[EventLoop, typer.Option(
        "--loop", help="Event loop: auto takes uvloop when installed, else asyncio.")
    ] = EventLoop.auto,
) -> None:
    """Serve models:/MODEL@champion over HTTP (POST /predict, POST /feedback, GET /healthz,
    /readyz, /metrics, POST /webhooks/mlflow); follows the alias, verifying every new champion
    and that vitedit-ops moved the alias onto it, before the swap."""
    import torch
    import uvicorn

    from vitedit_ops.settings import get_settings

    from .app import ServeConfig, create_app

    settings = get_settings()
    config = ServeConfig(
        model=model or settings.registered_model,
        tracking_uri=settings.resolved_mlflow_uri(), store_url=settings.store_url,
        image_store_url=settings.image_store_url,
        poll_interval=poll_interval or settings.serve_poll_interval,
        max_batch=max_batch or settings.serve_max_batch,
        batch_window=(settings.serve_batch_window_ms if batch_window_ms is None
                      else batch_window_ms) / 1000, top_k=top_k, threads=threads,
        webhook_secret=(settings.serve_webhook_secret.get_secret_value()
                        if settings.serve_webhook_secret else None))
    # torch only does elementwise work around the model here; its idle OpenMP threads spin
    # on the cores onnxruntime and the event loop need (~1 ms of CPU per image on 2 cores)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", access_log=False,
                http=http.value, loop=loop.value)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``vitedit-ops`` app (the ``vitedit_ops.commands`` entry point)."""
    app.command("serve")(serve)
