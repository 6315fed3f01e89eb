"""Fixtures for the registry tests: a tiny timm ViT, a suite, real patches and gate reports,
an embedded MLflow store and, for ``@pytest.mark.server("mlflow")``, the session's real
``mlflow server``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from registry.record import EditRunRecord
from vitedit_ops.export import ExportResult, export_onnx
from vitedit_ops.models import ModelSpec, save_model

from ..helpers.edits import edit_record
from ..helpers.servers import free_port


@pytest.fixture(scope="session")
def spec() -> ModelSpec:
    return ModelSpec.for_timm_model("vit_tiny_patch16_224", num_classes=10, img_size=32,
                                    patch_size=8, embed_dim=64, depth=2, num_heads=2)


@pytest.fixture(scope="session")
def base_model(spec):
    torch.manual_seed(0)
    return spec.build().eval()


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory, base_model, spec) -> Path:
    return save_model(base_model, spec, tmp_path_factory.mktemp("base") / "reference.safetensors")


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A suite directory (images + labels) and its tensors."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(96, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (96,), generator=generator)
    root = tmp_path_factory.mktemp("suite")
    save_file({"images": images, "labels": labels}, str(root / "suite.safetensors"))
    (root / "README.txt").write_text("locality suite of the registry tests\n")
    return root, images, labels


@dataclass
class Edit:
    """A real edit of the base: the record and the exported ONNX of the edited model."""

    record: EditRunRecord
    onnx: ExportResult


@pytest.fixture(scope="session")
def good_edit(base_model, spec, suite, tmp_path_factory) -> Edit:
    """Two small patches: the gate passes."""
    record = edit_record(base_model, spec, suite, ["3->8", "5->6"], scale=1e-3, seed=2)
    assert record.gate_report.passed
    onnx = export_onnx(record.model, spec.input_size, tmp_path_factory.mktemp("good-onnx") /
                       "model.onnx")
    return Edit(replace(record, onnx=onnx), onnx)


@pytest.fixture(scope="session")
def bad_edit(base_model, spec, suite, tmp_path_factory) -> Edit:
    """One large patch: locality collapses and the gate fails."""
    record = edit_record(base_model, spec, suite, ["7->1"], scale=3.0, seed=3)
    assert not record.gate_report.passed
    onnx = export_onnx(record.model, spec.input_size, tmp_path_factory.mktemp("bad-onnx") /
                       "model.onnx")
    return Edit(replace(record, onnx=onnx), onnx)


@pytest.fixture(scope="session")
def embedded_uri(tmp_path_factory) -> Iterator[str]:
    """One SQLite store for the session (creating its tables takes ~10 s); tests use their
    own registered model names. VITEDIT_HOME points at a temp dir for the artifacts."""
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("VITEDIT_HOME")
    os.environ["VITEDIT_HOME"] = str(home)
    yield f"sqlite:///{home / 'mlflow.db'}"
    if saved is None:
        os.environ.pop("VITEDIT_HOME", None)
    else:
        os.environ["VITEDIT_HOME"] = saved


@pytest.fixture
def model_name(request) -> str:
    """A registered model name unique to the test."""
    return "t-" + request.node.name.replace("[", "-").replace("]", "")[:80]


@pytest.fixture
def for_model() -> Callable[[Edit, str], EditRunRecord]:
    """The edit's record retargeted at another registered model."""
    def make(edit: Edit, name: str, **changes) -> EditRunRecord:
        return replace(edit.record, registered_model=name, **changes)
    return make


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process) -> str:
    """URL of the session's real ``mlflow server`` (tests marked
    ``@pytest.mark.server("mlflow")``; see tests/conftest.py)."""
    return mlflow_server_process.url


@pytest.fixture(scope="session")
def base_onnx(base_model, spec, tmp_path_factory) -> ExportResult:
    """The base exported once, so registering a base in a test costs seconds, not an export."""
    return export_onnx(base_model, spec.input_size, tmp_path_factory.mktemp("base-onnx") /
                       "model.onnx")


@pytest.fixture(scope="session")
def register_base_as(base_checkpoint, suite, base_onnx) -> Callable[..., object]:
    """Register the test base under a name (v1, champion)."""
    from registry.base import register_base

    def make(name: str, uri: str, audit=None):
        return register_base(base_checkpoint, suite[0], name=name, onnx=base_onnx,
                             tracking_uri=uri, audit=audit)
    return make


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., object]:
    """Runs the registry commands on a fresh typer app; returns click's Result."""
    import typer
    from typer.testing import CliRunner

    from registry.cli import register

    app = typer.Typer()
    register(app)
    # wide terminal: rich would otherwise wrap the history table into 80 columns
    return lambda *args: CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
