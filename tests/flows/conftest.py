"""Fixtures for the flow tests: a tiny digits ViT with its suite and hypernetwork, an embedded
MLflow store shared by the session (one registered model per test), a monitoring store per
test filled with real production predictions and feedback, and a Prefect test server for the
tests that run flows (``night`` and ``prefect_test_api`` ask for it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# before Prefect is imported: the tests never touch the user's Prefect state
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="vitedit-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# quiet consoles; the runs still send INFO lines to the API, which tests read back
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

import pytest  # noqa: E402
import torch  # noqa: E402

from vitedit_ops.export import ExportResult, export_onnx  # noqa: E402
from vitedit_ops.models import ModelSpec, save_model  # noqa: E402

from ..helpers.digits import digit_pixels, train_digits_vit  # noqa: E402
from .flows_testlib import LAX_EDIT, LAX_GATE  # noqa: E402

NUM_CLASSES = 10
TRAIN, SUITE, PRODUCTION = 700, 300, 400


@dataclass(frozen=True)
class TinyLineage:
    """A base model, its suite and hypernetwork, and production images it partly gets wrong."""

    spec: ModelSpec
    checkpoint: Path
    onnx: ExportResult
    suite_dir: Path
    hypernet_dir: Path
    production: torch.Tensor     # pixels in [0, 1]: digits written with a thicker pen
    labels: torch.Tensor
    predictions: torch.Tensor    # the base model's, as serving saw them
    clean: torch.Tensor          # clean digits none of the above holds (held-out pools)


@pytest.fixture(scope="session")
def lineage(tmp_path_factory: pytest.TempPathFactory) -> TinyLineage:
    """Trained for ~15 s on the digits: right on ~87% of clean images, ~60% of production's
    thick-pen digits, so production has error groups of 4-8 images per 200 requests."""
    from vitedit_ops.gate import build_suite
    from vitedit_ops.metatrain import MetaTrainConfig, meta_train
    from vitedit_ops.preprocess import Preprocessor
    from vitedit_ops.reference.shifts import apply_shift

    root = tmp_path_factory.mktemp("lineage")
    pixels, labels = digit_pixels(32)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, suite = order[:TRAIN], order[TRAIN:TRAIN + SUITE]
    production = order[TRAIN + SUITE:TRAIN + SUITE + PRODUCTION]
    spec = ModelSpec(architecture="vit_tiny_patch16_224", num_classes=NUM_CLASSES,
                     model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 32,
                                   "depth": 4, "num_heads": 2},
                     input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3,
                     interpolation="bilinear")
    model = train_digits_vit(spec, pixels[train], labels[train], steps=1200, batch_size=32,
                             lr=1e-3)
    inputs = Preprocessor(spec).normalize(pixels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checkpoint = save_model(model, spec, root / "base" / "model.safetensors")
        suite_dir = root / "suite"
        build_suite(suite_dir, model, spec, pixels[suite], labels[suite],
                    [f"digit-{i}" for i in suite.tolist()])
        meta_train(model, inputs[train], MetaTrainConfig(iterations=3, batch_size=4),
                   out_dir=root / "hypernet", architecture=spec.architecture)
        shifted = apply_shift("thicken", pixels[production], seed=0, min_width=3, max_width=3)
        with torch.no_grad():
            predictions = model(Preprocessor(spec).normalize(shifted)).argmax(-1)
    finally:
        torch.set_num_threads(threads)
    onnx = export_onnx(model, spec.input_size, root / "base.onnx")
    return TinyLineage(spec, checkpoint, onnx, suite_dir, root / "hypernet", shifted,
                       labels[production], predictions,
                       pixels[order[TRAIN + SUITE + PRODUCTION:]])


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded MLflow store for the session (creating one takes ~10 s)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    saved = os.environ.get("VITEDIT_MLFLOW_TRACKING_URI")
    os.environ["VITEDIT_MLFLOW_TRACKING_URI"] = uri
    yield uri
    if saved is None:
        os.environ.pop("VITEDIT_MLFLOW_TRACKING_URI", None)
    else:
        os.environ["VITEDIT_MLFLOW_TRACKING_URI"] = saved



@dataclass
class Night:
    """A registered lineage and its production log, for one test."""

    name: str
    lineage: TinyLineage
    tracking_uri: str

    def serve(self, indices: range | list[int], *, day: int = 0) -> None:
        """Log production predictions of ``indices`` and their (delayed) feedback."""
        lineage = self.lineage
        self.serve_images(lineage.production[list(indices)], lineage.labels[list(indices)],
                          lineage.predictions[list(indices)],
                          [f"{self.name}-{day}-{i}" for i in indices],
                          datetime.now(UTC) - timedelta(days=2 - day, hours=1))

    def serve_images(self, pixels: torch.Tensor, labels: torch.Tensor,
                     predicted: torch.Tensor, ids: list[str], when: datetime) -> None:
        """Log predictions of ``pixels`` (through the serving logger) and their labels."""
        from vitedit_ops.imagefiles import png_bytes as png
        from monitoring import PredictionLogger, open_image_store, open_store
        from monitoring.feedback import submit_feedback

        store = open_store()
        try:
            with PredictionLogger(store, open_image_store()) as logger:
                for pid, image, cls in zip(ids, pixels, predicted.tolist()):
                    logger.log(pid, model=self.name, model_version="1", predicted_class=cls,
                               ts=when, model_alias="champion", image=png(image))
            submit_feedback(store, [{"prediction_id": pid, "true_class": int(label),
                                     "source": "review"} for pid, label in zip(ids, labels)])
        finally:
            store.close()

    def run(self, **parameters: Any):
        """The nightly flow on this lineage (lax settings unless overridden)."""
        from flows.config import EditSettings
        from flows.nightly import nightly_edit

        edit = EditSettings(**{**LAX_EDIT, **parameters.pop("edit", {})})
        gate = {**LAX_GATE, **parameters.pop("gate", {})}
        return nightly_edit(model=self.name, edit_settings=edit, gate=gate, **parameters)

    def versions(self) -> list[str]:
        """Every version number of the registered model, ready or not."""
        from mlflow import MlflowClient

        found = MlflowClient(self.tracking_uri).search_model_versions(f"name = '{self.name}'")
        return sorted((str(v.version) for v in found), key=int)

    def ledger_images(self) -> list[tuple[str, str]]:
        """(prediction id, image sha256) of every prediction in the edit ledger."""
        import sqlalchemy as sa

        from monitoring import open_store
        from monitoring.schema import EditLedger

        store = open_store()
        try:
            with store.read() as conn:
                return [tuple(r) for r in conn.execute(
                    sa.select(EditLedger.prediction_id, EditLedger.image_sha256))]
        finally:
            store.close()

    def ledger_states(self) -> dict[str, dict[str, int]]:
        """Ledger rows of this model per version and state."""
        from monitoring import open_store

        with open_store() as store:
            return store.ledger_states(self.name)

    def ledger(self) -> list[tuple[str, str, str]]:
        import sqlalchemy as sa

        from monitoring import open_store
        from monitoring.schema import EditLedger

        store = open_store()
        try:
            with store.read() as conn:
                return [tuple(r) for r in conn.execute(
                    sa.select(EditLedger.run_id, EditLedger.model_version,
                              EditLedger.prediction_id))]
        finally:
            store.close()


@pytest.fixture
def night(request: pytest.FixtureRequest, lineage: TinyLineage, tracking_uri: str,
          prefect_test_api: None) -> Callable[..., Night]:
    """Register the tiny base (v1, champion) with its hypernetwork under a per-test name (in
    the session's store, or ``uri``) and log its first production day (predictions of half the
    production images, feedback for every one)."""
    from registry.lineage_assets import register_hypernet
    from monitoring import open_store
    from registry.base import register_base

    def make(suffix: str = "", serve: bool = True, uri: str | None = None,
             preserved: torch.Tensor | None = None) -> Night:
        name = ("f-" + request.node.name + suffix).replace("[", "-").replace("]", "")[:90]
        uri = uri or tracking_uri
        register_base(lineage.checkpoint, lineage.suite_dir, name=name, onnx=lineage.onnx,
                      tracking_uri=uri)
        register_hypernet(name, "1", lineage.hypernet_dir, preserved, tracking_uri=uri)
        store = open_store()
        store.register_model(name, NUM_CLASSES)
        store.close()
        result = Night(name, lineage, uri)
        if serve:
            result.serve(range(PRODUCTION // 2))
        return result
    return make


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's I/O tasks retry at once (their real delays are seconds), and MLflow's HTTP
    client gives up on a dead server without its own backoff."""
    import flows.nightly as nightly

    for name in ("crash_orphaned_flow_runs", "fail_orphaned_runs", "collect_errors",
                 "pin_champion", "find_registered", "register", "record_ledger",
                 "reconcile_ledger",
                 "promote_challenger"):
        monkeypatch.setattr(nightly, name,
                            getattr(nightly, name).with_options(retry_delay_seconds=0))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
