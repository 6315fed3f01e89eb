"""``register-base``: the first version of a registered model, champion from the start.

The base is the root of every nightly lineage: its weights (safetensors + timm spec) are
what the first edit loads, and its suite directory is what gates every descendant.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from vitedit_ops.audit import AuditTrail
from vitedit_ops.export import ExportResult
from vitedit_ops.models import ModelDescription, ModelSpec, fingerprint, load_model
from vitedit_ops.settings import get_settings

from . import artifacts, description, versions
from .client import connect, experiment_id
from .datasets import suite_files_dataset
from .errors import RegistryError
from .mlflow_registry import Registration, register_run
from .runs import RunContent, create_run, fill_run, logged_run


def register_base(checkpoint: str | Path, suite_dir: str | Path, name: str | None = None,
                  spec: ModelSpec | str | Path | None = None, onnx: ExportResult | None = None,
                  tracking_uri: str | None = None,
                  audit: AuditTrail | None = None) -> Registration:
    """Register ``checkpoint`` (safetensors + spec JSON beside it, or ``spec``) with its suite
    as the first version of ``name`` (default: the settings' registered model) and make it
    champion. Registering the same weights and suite again returns the existing version.
    ``onnx`` is an export of exactly these weights if the caller has one; else it is made here.
    The champion alias's first move is recorded in ``audit`` (and the MLflow mirror).
    """
    name = versions.check_safe(name or get_settings().registered_model, "registered model name")
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir() or not any(p.is_file() for p in suite_dir.rglob("*")):
        raise RegistryError(f"suite {suite_dir} is not a directory with files")
    model, spec = (spec.load(checkpoint) if isinstance(spec, ModelDescription)
                   else load_model(checkpoint, spec))
    weights_fp = fingerprint(model)
    suite_hash = artifacts.directory_sha256(suite_dir)
    key = f"base-{weights_fp[:32]}-{suite_hash[:32]}"

    conn = connect(tracking_uri)
    existing = versions.ready_by_key(conn.client, name, key)
    if existing is not None:  # register_run finishes it if its alias is still pending
        return register_run(existing.run_id, tracking_uri=conn.tracking_uri)
    others = [v.version for v in versions.search(conn.client, f"name = '{name}'") if v.ready]
    if others:
        raise RegistryError(f"{name} already has version(s) {', '.join(sorted(others, key=int))}"
                            f"; register-base starts a lineage: pick another --model name")
    exp = experiment_id(conn, name)
    run_id = logged_run(conn, exp, key)
    if run_id is None:
        tags = {versions.REGISTERED_MODEL: name, versions.KIND: "base",
                versions.FINGERPRINT: weights_fp, versions.LINEAGE_ROOT_FINGERPRINT: weights_fp,
                versions.SUITE_SHA256: suite_hash, versions.IDEMPOTENCY_KEY: key}
        params = {"architecture": spec.architecture, "num_classes": spec.num_classes,
                  "input_size": tuple(spec.input_size), "checkpoint": Path(checkpoint).name,
                  "fingerprint": weights_fp, "suite_hash": suite_hash,
                  "suite_files": sum(1 for p in suite_dir.rglob("*") if p.is_file())}
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp)
            artifacts.write_weights(model, spec, staged)
            artifacts.copy_suite(suite_dir, staged)
            run_id = create_run(conn, exp, f"base-{spec.architecture}", tags)
            (staged / artifacts.DESCRIPTION).write_text(description.base_description(
                spec, weights_fp, suite_hash, Path(checkpoint).name, exp, run_id))
            content = RunContent(params=params, metrics={}, staged=staged,
                                 datasets=(suite_files_dataset(suite_dir, suite_hash),))
            fill_run(conn, run_id, content, model, spec, onnx)
    return register_run(run_id, tracking_uri=conn.tracking_uri, audit=audit)
