"""Fixtures for the serving tests: a tiny timm ViT lineage registered on the session's real
``mlflow server`` (base v1 champion, a gated edit v2 challenger, another edit v3), and real
``vitedit-ops serve`` processes on loopback, each with its own monitoring store."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from torch import nn

from vitedit_ops.export import export_onnx
from vitedit_ops.models import ModelSpec, save_model

from ..helpers.edits import edit_record
from ..helpers.servers import Server, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SERVE = "import typer; from serving.cli import serve; typer.run(serve)"


@dataclass(frozen=True)
class Lineage:
    """A registered model: its torch models by version and the edit runs not yet promoted."""

    name: str
    spec: ModelSpec
    models: dict[str, nn.Module]
    runs: dict[str, str]          # version -> run id
    tracking_uri: str


@pytest.fixture(scope="session")
def spec() -> ModelSpec:
    return replace(ModelSpec.for_timm_model("vit_tiny_patch16_224", num_classes=10, img_size=32,
                                            patch_size=8, embed_dim=64, depth=2, num_heads=2),
                   class_names=CLASS_NAMES)


@pytest.fixture(scope="session")
def base_model(spec) -> nn.Module:
    torch.manual_seed(0)
    return spec.build().eval()


@pytest.fixture(scope="session")
def registered(tmp_path_factory, spec, base_model, mlflow_server_process
               ) -> Callable[[str], Lineage]:
    """Register a lineage under ``name``: v1 (base, champion), v2 (edit, challenger), v3
    (another edit, challenger); all three pass verification as registered."""
    from registry.base import register_base
    from registry.mlflow_registry import publish_edit

    uri = mlflow_server_process.url
    root = tmp_path_factory.mktemp("served-lineage")
    checkpoint = save_model(base_model, spec, root / "base" / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(96, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (96,), generator=generator)
    suite_dir = root / "suite"
    suite_dir.mkdir()
    save_file({"images": images, "labels": labels}, str(suite_dir / "suite.safetensors"))
    base_onnx = export_onnx(base_model, spec.input_size, root / "base.onnx")
    edits = []
    for seed, keys in ((2, ["3->8"]), (4, ["5->6"])):
        record = edit_record(base_model, spec, (suite_dir, images, labels), keys, scale=0.003,
                             seed=seed)
        assert record.gate_report.passed
        onnx = export_onnx(record.model, spec.input_size, root / f"edit-{seed}.onnx")
        edits.append(replace(record, onnx=onnx))

    def make(name: str) -> Lineage:
        base = register_base(checkpoint, suite_dir, name=name, onnx=base_onnx,
                             tracking_uri=uri)
        models, runs = {base.version: base_model}, {base.version: base.run_id}
        for record in edits:
            registration = publish_edit(replace(record, registered_model=name), uri)
            models[registration.version] = record.model
            runs[registration.version] = registration.run_id
        assert sorted(models) == ["1", "2", "3"]
        return Lineage(name, spec, models, runs, uri)
    return make


class Serve(Server):
    """A ``vitedit-ops serve`` process; ``ready()`` waits for ``/readyz``."""

    def predict(self, *images: tuple[str, bytes]) -> requests.Response:
        if len(images) == 1 and images[0][0] == "raw":
            return requests.post(self.url + "/predict", data=images[0][1], timeout=60,
                                 headers={"Content-Type": "image/png"})
        return requests.post(self.url + "/predict", timeout=60,
                             files=[("images", (n, data, "image/png")) for n, data in images])

    def metric(self, name: str, **labels: str) -> float:
        """A sample of ``/metrics`` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(self.url + "/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return sample.value
        return 0.0

    def up(self) -> bool:
        """``/healthz`` answers (the process is up, with or without a champion)."""
        try:
            return requests.get(self.url + "/healthz", timeout=5).ok
        except requests.ConnectionError:
            return False

    def ready_version(self) -> str | None:
        response = requests.get(self.url + "/readyz", timeout=30)
        return response.json().get("version") if response.status_code == 200 else None


@pytest.fixture
def serve(tmp_path) -> Iterator[Callable[..., Serve]]:
    """Start ``vitedit-ops serve`` for a registered model (own VITEDIT_HOME and SQLite store);
    ``ready=False`` returns before it has a champion."""
    started: list[Serve] = []

    def start(name: str, tracking_uri: str, *options: str, ready: bool = True) -> Serve:
        home = tmp_path / f"serve-{len(started)}"
        port = free_port()
        env = {"VITEDIT_HOME": str(home), "VITEDIT_MLFLOW_TRACKING_URI": tracking_uri,
               "VITEDIT_SERVE_POLL_INTERVAL": "0.5", "PYTHONPATH": str(ROOT),
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        home.mkdir()
        server = Serve([sys.executable, "-c", SERVE, "--model", name, "--port",
                        str(port), *options], f"http://127.0.0.1:{port}", "/readyz", home, env)
        started.append(server)
        server.launch()
        return server.ready() if ready else server
    yield start
    for server in started:
        server.stop()


def png(pixels: torch.Tensor) -> bytes:
    from vitedit_ops.imagefiles import png_bytes

    return png_bytes(pixels)


def photo(width: int, height: int, seed: int) -> bytes:
    """A random RGB picture of any size, as a PNG a client would upload."""
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def torch_probabilities(lineage, version: str, image: bytes) -> torch.Tensor:
    """What the torch model of ``version`` says, with timm's own transform of its spec."""
    transform = create_transform(**resolve_data_config(lineage.spec.data_config))
    with torch.no_grad():
        inputs = transform(Image.open(io.BytesIO(image)).convert("RGB"))[None]
        return lineage.models[version](inputs).softmax(-1)[0]


def store_predictions(home: Path) -> dict[str, tuple[str, str]]:
    """prediction id -> (model version, image sha256) in a server's monitoring store."""
    import sqlalchemy as sa

    from monitoring import open_store
    from monitoring.schema import Prediction

    store = open_store(f"sqlite:///{home / 'monitoring.db'}")
    try:
        with store.read() as conn:
            return {row.id: (row.model_version, row.image_sha256) for row in conn.execute(
                sa.select(Prediction.id, Prediction.model_version, Prediction.image_sha256))}
    finally:
        store.close()


def wait_stored(server: Serve, ids: set[str]) -> dict[str, tuple[str, str]]:
    """The server's store once it holds every prediction of ``ids`` (the logger writes in the
    background)."""
    def stored() -> dict[str, tuple[str, str]] | None:
        found = store_predictions(server.root)
        return found if ids <= set(found) else None
    return wait_for(stored, 120, f"{len(ids)} predictions in the monitoring store", 0.5)


def hammer(server: Serve, clients: int, requests_each: int,
           images: Callable[[int, int], list[tuple[str, bytes]]]) -> list[requests.Response]:
    """``clients`` threads, each sending ``requests_each`` requests one after another."""
    def client(c: int) -> list[requests.Response]:
        return [server.predict(*images(c, r)) for r in range(requests_each)]
    with ThreadPoolExecutor(clients) as pool:
        return [r for batch in pool.map(client, range(clients)) for r in batch]

