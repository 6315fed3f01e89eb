"""Upload one run: params, metrics, staged files and the pyfunc model (ONNX graph inside).

The run is marked ``vitedit.logged=complete`` only after the store is seen to hold every
staged file and the served ONNX file hashes to what was exported; registration refuses any
other run. A failure marks the run FAILED with the error as a tag and is re-raised as one
``RegistryError`` line.
"""

from __future__ import annotations

import copy
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.models import ModelSignature
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types.schema import Array, ColSpec, DataType, Schema
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_USER
from torch import nn

import vitedit_ops
from vitedit_ops.export import ExportResult, export_onnx, file_sha256
from vitedit_ops.imagefiles import png_bytes
from vitedit_ops.models import ModelSpec
from vitedit_ops.reference.data import digits_pixels

from . import artifacts, pyfunc_model, versions
from .datasets import RunDataset
from .client import Connection, connect, experiment_id, first_line, translate_errors
from .errors import RegistryError
from .promotion import ONNX_FILE, current_user

MODEL_NAME = "model"  # the run's one logged model: the pyfunc the version points to
MAX_PARAM_CHARS = 6000


@dataclass(frozen=True)
class RunContent:
    """What one run logs besides its model: params, metrics, the staged files and the
    datasets (suite, preserved pool) it was judged on."""

    params: dict[str, Any]
    metrics: dict[str, float]
    staged: Path
    datasets: tuple[RunDataset, ...] = ()


def metric_name(name: str) -> str:
    """MLflow accepts alphanumerics, ``_ - . /`` and spaces in metric names."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def metrics_now(values: dict[str, float]) -> list[Metric]:
    """Metrics stamped with the time they are logged (MLflow: ms since the epoch, step 0)."""
    now = int(time.time() * 1000)
    return [Metric(metric_name(k), float(v), now, 0) for k, v in values.items()]


def context_tags() -> dict[str, str]:
    """MLflow's standard run context as fluent runs get it (user, source name and type, git
    commit of the entry point), with the user vitedit-ops records moves under, and the commit
    of vitedit-ops's own code when the entry point is not in a git checkout."""
    tags = resolve_tags({MLFLOW_USER: current_user()})
    if MLFLOW_GIT_COMMIT not in tags:
        commit = get_git_commit(str(Path(__file__).resolve().parent))
        if commit:
            tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def create_run(conn: Connection, experiment_id: str, run_name: str,
               tags: dict[str, str]) -> str:
    """An empty run marked in-progress (so it cannot be registered before ``fill_run``),
    with its context tags (who, from what source and commit)."""
    with translate_errors("create run"):
        run = conn.client.create_run(experiment_id, run_name=run_name,
                                     tags={**context_tags(), **tags,
                                           versions.LOGGED: "in-progress"})
    return run.info.run_id


def fail_orphaned_edit_runs(registered_model: str, older_than: timedelta, marked_by: str,
                            tracking_uri: str | None = None) -> list[str]:
    """Mark FAILED the model's edit runs still RUNNING after ``older_than`` (the longest a
    night may last): their process died mid-logging (a crash, kill -9, the server gone) and
    nothing will finish them. Each gets a ``vitedit.error`` tag saying so and who marked it;
    they were never marked logged, so nothing registers them either way. Returns their ids.
    """
    conn = connect(tracking_uri)
    exp = experiment_id(conn, versions.check_safe(registered_model, "registered model name"))
    cutoff_ms = int((time.time() - older_than.total_seconds()) * 1000)
    with translate_errors("search orphaned runs"):
        runs = conn.client.search_runs(
            [exp], f"attributes.status = 'RUNNING' and attributes.start_time < {cutoff_ms} and "
                   f"tags.`{versions.KIND}` = 'edit'", max_results=1000)
    failed = []
    for run in runs:
        note = (f"orphaned: RUNNING for more than {older_than} (its process died "
                f"before it finished logging); marked FAILED by {marked_by}")
        with translate_errors(f"mark orphaned run {run.info.run_id} failed"):
            conn.client.set_tag(run.info.run_id, versions.ERROR, note)
            conn.client.set_terminated(run.info.run_id, "FAILED")
        failed.append(run.info.run_id)
    return failed


def logged_run(conn: Connection, experiment_id: str, key: str) -> str | None:
    """A run completely logged under idempotency ``key`` (its registration may not have
    finished): registering it again beats logging everything twice."""
    with translate_errors("search runs"):
        runs = conn.client.search_runs(
            [experiment_id], f"tags.`{versions.IDEMPOTENCY_KEY}` = '{key}' and "
                             f"tags.`{versions.LOGGED}` = 'complete'",
            order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def fill_run(conn: Connection, run_id: str, content: RunContent, model: nn.Module,
             spec: ModelSpec, onnx_export: ExportResult | None) -> None:
    """Upload everything and finish the run; exports ONNX itself if not given."""
    try:
        _upload(conn, run_id, content, model, spec, onnx_export)
    except Exception as exc:
        _mark_failed(conn, run_id, exc)
        if isinstance(exc, RegistryError):
            raise
        raise RegistryError(f"logging run {run_id} failed, nothing registered: "
                            f"{first_line(exc)}") from exc


def _upload(conn: Connection, run_id: str, content: RunContent, model: nn.Module,
            spec: ModelSpec, onnx_export: ExportResult | None) -> None:
    client = conn.client
    params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in content.params.items()]
    metrics = metrics_now(content.metrics)
    client.log_batch(run_id, metrics=metrics, params=params)
    manifest = artifacts.write_manifest(content.staged)
    client.log_artifacts(run_id, str(content.staged))

    with tempfile.TemporaryDirectory() as tmp:
        if onnx_export is None:
            onnx_export = export_onnx(copy.deepcopy(model).to("cpu").eval(),
                                      tuple(spec.input_size), Path(tmp) / "model.onnx")
        # start_run() ends the run as FINISHED on exit; the caller marks it complete (or
        # FAILED) only after checking the upload, and registration looks at that mark.
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            for dataset in content.datasets:
                dataset.log()
            model_id, served_sha = _log_model(spec, onnx_export, Path(tmp))
    if served_sha != onnx_export.sha256:
        raise RegistryError(f"the store holds an ONNX file {served_sha[:12]} that differs from "
                            f"the exported {onnx_export.sha256[:12]}; nothing registered")

    stored = _list_files(client, run_id)
    missing = artifacts.missing_files(manifest, stored, content.staged)
    if missing:
        raise RegistryError(f"upload incomplete, store lacks {', '.join(missing[:5])}")
    client.set_tag(run_id, versions.ONNX_MODEL_ID, model_id)
    client.set_tag(run_id, versions.ONNX_SHA256, served_sha)
    client.set_tag(run_id, versions.LOGGED, "complete")
    client.set_terminated(run_id, "FINISHED")


def _log_model(spec: ModelSpec, onnx_export: ExportResult, tmp: Path) -> tuple[str, str]:
    """Log the pyfunc model (models-from-code: the ONNX graph + spec, the serving
    preprocessing shipped as code) into the active run; return its model id and the sha256
    of the ONNX file the store now holds. Nothing in it is a pickle; the editable torch
    weights are the run's ``weights/`` safetensors artifact."""
    spec_file = tmp / "model.json"
    spec_file.write_text(spec.to_json())
    onnx_file = tmp / "served" / Path(ONNX_FILE).name  # the name serving downloads
    onnx_file.parent.mkdir()
    shutil.copyfile(onnx_export.path, onnx_file)
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME, python_model=str(Path(pyfunc_model.__file__)),
        artifacts={pyfunc_model.ONNX_ARTIFACT: str(onnx_file),
                   pyfunc_model.SPEC_ARTIFACT: str(spec_file)},
        code_paths=[str(_vitedit_ops_code(tmp))], signature=_signature(),
        input_example=pd.DataFrame({pyfunc_model.IMAGE_COLUMN: [example_image()]}),
        pip_requirements=_pins("torch", "torchvision", "timm", "safetensors", "numpy",
                               "pandas", "pillow", _onnxruntime_dist()))
    served = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{info.artifact_path.rstrip('/')}/{ONNX_FILE}", dst_path=str(tmp / "dl"))
    return info.model_id, file_sha256(served)


def example_image() -> bytes:
    """A real picture for the input example: the first digit of the reference data, as the
    PNG file a client would send."""
    pixels, _ = digits_pixels()
    return png_bytes(pixels[0])


def _vitedit_ops_code(tmp: Path) -> Path:
    """A clean copy of the ``vitedit_ops`` package (no bytecode caches) to ship as code."""
    source = Path(vitedit_ops.__file__).resolve().parent
    return Path(shutil.copytree(source, tmp / "code" / "vitedit_ops",
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


def _signature() -> ModelSignature:
    """Encoded image files in (base64 in JSON), the top class and every probability out."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, pyfunc_model.IMAGE_COLUMN)]),
        outputs=Schema([ColSpec(DataType.long, "label"), ColSpec(DataType.string, "class_name"),
                        ColSpec(DataType.double, "probability"),
                        ColSpec(Array(DataType.double), "probabilities")]))


def _onnxruntime_dist() -> str:
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            version(dist)
            return dist
        except PackageNotFoundError:
            continue
    raise RegistryError("onnxruntime is not installed; install vitedit-ops[cpu] or [gpu]")


def _pins(*dists: str) -> list[str]:
    """Exact versions of what the model needs: skips MLflow's slow requirement inference."""
    return [f"{d}=={version(d).split('+')[0]}" for d in dists]


def _list_files(client, run_id: str, path: str | None = None) -> list[tuple[str, int]]:
    files = []
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            files += _list_files(client, run_id, info.path)
        else:
            files.append((info.path, info.file_size))
    return files


def _mark_failed(conn: Connection, run_id: str, exc: BaseException) -> None:
    """Best effort: with the store gone, the run stays unfinished, which is never registered."""
    try:
        conn.client.set_tag(run_id, versions.ERROR, first_line(exc)[:5000])
        conn.client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
