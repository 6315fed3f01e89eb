"""Log an edit run to MLflow and register it as a new version of the registered model.

Order matters: a version is created only from a run whose every artifact is in the store,
and it becomes usable (``vitedit.status=ready``) only after its description and tags are set;
its alias moves onto it only after that, so an alias never points at a version not ready.
A failure after creation deletes the version, or, if the store is gone by then, leaves it
without the ready mark, which every lookup and ``promote`` ignore. A process that died
between the ready mark and the alias left ``vitedit.pending_alias``: registering the run
again moves the alias. The idempotency key makes registering the same edit twice return
the existing version.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from vitedit_ops.audit import AuditTrail

from . import artifacts, description, signing, versions
from .client import Connection, connect, experiment_id, first_line, translate_errors
from .datasets import edit_datasets
from .errors import RegistryError
from .promotion import REGISTER_BASE, move_alias
from .record import EditRunRecord
from .runs import RunContent, create_run, fill_run, logged_run


@dataclass(frozen=True)
class Registration:
    """Outcome of registering a run: ``created`` is False when the version already existed."""

    name: str
    version: str
    run_id: str
    gate_passed: bool
    aliases: tuple[str, ...]
    created: bool


def publish_edit(record: EditRunRecord, tracking_uri: str | None = None) -> Registration:
    """Log ``record`` as a run and register it; idempotent on ``record.key``."""
    candidate = record.validate()
    conn = connect(tracking_uri)
    name = versions.check_safe(record.registered_model, "registered model name")
    key = versions.check_safe(record.key, "idempotency key")
    existing = versions.ready_by_key(conn.client, name, key)
    if existing is not None:  # register_run finishes it if its alias is still pending
        return register_run(existing.run_id, tracking_uri=conn.tracking_uri)
    run_id = (logged_run(conn, experiment_id(conn, name), key)
              or _log_edit(conn, record, candidate))
    return register_run(run_id, tracking_uri=conn.tracking_uri)


def _log_edit(conn: Connection, record: EditRunRecord, candidate: str) -> str:
    exp = experiment_id(conn, record.registered_model)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        plot_paths = artifacts.stage_edit(record, candidate, staged)
        run_id = create_run(conn, exp, _run_name(record), _edit_tags(record, candidate))
        (staged / artifacts.DESCRIPTION).write_text(
            description.edit_description(record, candidate, exp, run_id, plot_paths))
        content = RunContent(params=_edit_params(record), metrics=_edit_metrics(record),
                             staged=staged, datasets=tuple(edit_datasets(record)))
        fill_run(conn, run_id, content, record.model, record.spec, record.onnx)
        return run_id


def _run_name(record: EditRunRecord) -> str:
    return f"edit-v{record.parent_version}-" + "-".join(g.slug for g in record.accepted_groups)


def _edit_tags(record: EditRunRecord, candidate: str) -> dict[str, str]:
    report = record.gate_report
    tags = {
        versions.REGISTERED_MODEL: record.registered_model,
        versions.KIND: "edit",
        versions.BASE_VERSION: record.base_version,
        versions.PARENT_VERSION: record.parent_version,
        versions.LINEAGE_ROOT_FINGERPRINT: record.lineage_root_fingerprint,
        versions.PARENT_FINGERPRINT: record.parent_fingerprint,
        versions.FINGERPRINT: candidate,
        versions.GATE: "passed" if report.passed else "failed",
        versions.EDITED_GROUPS: ",".join(g.key for g in record.accepted_groups),
        versions.PATCH_SHA256: ",".join(p.sha256() for p in record.patches),
        versions.SUITE_HASH: record.suite_hash,
        versions.IDEMPOTENCY_KEY: record.key,
        versions.METHOD: record.method,
    }
    if record.suite_dir is not None:
        tags[versions.SUITE_SHA256] = artifacts.directory_sha256(record.suite_dir)
    if not report.passed:
        tags[versions.FAILED_CHECKS] = ",".join(report.failed_checks)
    return tags


def _edit_params(record: EditRunRecord) -> dict[str, object]:
    params: dict[str, object] = dict(record.settings)
    params.update({
        "method": record.method, "window": record.window,
        "registered_model": record.registered_model, "parent_version": record.parent_version,
        "parent_fingerprint": record.parent_fingerprint, "base_version": record.base_version,
        "lineage_root_fingerprint": record.lineage_root_fingerprint,
        "error_groups": ",".join(g.key for g in record.groups),
        "accepted_groups": ",".join(g.key for g in record.accepted_groups),
        "num_images": record.num_images, "suite_hash": record.suite_hash,
    })
    return params


def _edit_metrics(record: EditRunRecord) -> dict[str, float]:
    metrics = {k: v for k, v in record.metrics_after.items()}
    metrics.update({f"{k}_before": v for k, v in record.metrics_before.items()})
    for group in record.groups:
        prefix = f"group/{group.slug}/"
        metrics.update({prefix + k: v for k, v in group.after.items()})
        metrics.update({f"{prefix}{k}_before": v for k, v in group.before.items()})
        metrics.update({prefix + "steps": group.steps, prefix + "seconds": group.seconds,
                        prefix + "success": float(group.success),
                        prefix + "accepted": float(group.accepted)})
    for check in record.gate_report.checks:
        metrics[f"gate/{check.name}"] = math.nan if check.value is None else check.value
        if check.threshold is not None:
            metrics[f"gate/{check.name}/threshold"] = check.threshold
    metrics["gate/passed"] = float(record.gate_report.passed)
    metrics["steps"] = float(sum(g.steps for g in record.groups))
    metrics["edit_seconds"] = float(sum(g.seconds for g in record.groups))
    metrics["accepted_groups"] = float(len(record.accepted_groups))
    return metrics


def register_run(run_id: str, tracking_uri: str | None = None,
                 audit: AuditTrail | None = None) -> Registration:
    """Create the model version of a completely logged run; a run registers at most once.

    Base runs get the ``champion`` alias (the move recorded in ``audit``), edit runs whose
    gate passed ``challenger``.
    """
    conn = connect(tracking_uri)
    client = conn.client
    with translate_errors(f"read run {versions.check_safe(run_id, 'run id')}"):
        run = client.get_run(run_id)
    tags = run.data.tags
    if tags.get(versions.LOGGED) != "complete":
        raise RegistryError(f"run {run_id} is not completely logged "
                            f"({tags.get(versions.ERROR, run.info.status)}); nothing registered")
    name = tags[versions.REGISTERED_MODEL]
    done = [v for v in versions.by_run(client, run_id) if v.name == name and v.ready]
    if done:
        if versions.PENDING_ALIAS in done[0].tags:  # died between its ready mark and alias
            with translate_errors(f"finish registering {name} v{done[0].version}"):
                _move_alias(conn, name, done[0].version, done[0].tags[versions.PENDING_ALIAS],
                            audit)
            return _registration(versions.get(client, name, done[0].version), created=False)
        return _registration(done[0], created=False)
    with tempfile.TemporaryDirectory() as tmp, translate_errors(f"read run {run_id}"):
        text = Path(client.download_artifacts(run_id, artifacts.DESCRIPTION, tmp)).read_text()
    keys = signing.configured_keys()  # an unusable key fails here, before anything is made
    _ensure_registered_model(client, name)
    model_id = tags[versions.ONNX_MODEL_ID]
    alias = (versions.CHAMPION if tags[versions.KIND] == "base"
             else versions.CHALLENGER if tags.get(versions.GATE) == "passed" else "")
    with translate_errors(f"create a version of {name}"):
        created = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id,
            description=text,
            tags={**{k: tags[k] for k in versions.VERSION_TAGS if k in tags},
                  versions.STATUS: versions.REGISTERING,
                  **({versions.PENDING_ALIAS: alias} if alias else {})})
    version = str(created.version)
    try:
        _link_logged_model(client, model_id, name, version)
        if tags[versions.KIND] == "base":
            client.set_model_version_tag(name, version, versions.BASE_VERSION, version)
        signing.sign_version(client, versions.get(client, name, version), keys)
        # ready before the alias: whoever follows the alias (serving's poll, promote) must
        # never find it on a version still marked registering
        client.set_model_version_tag(name, version, versions.STATUS, versions.READY)
        if alias:
            _move_alias(conn, name, version, alias, audit)
    except Exception as exc:
        _abandon(conn, name, version)
        raise RegistryError(f"registering run {run_id} as {name} v{version} failed, version "
                            f"withdrawn: {first_line(exc)}") from exc
    return _registration(versions.get(client, name, version), created=True)


def _move_alias(conn: Connection, name: str, version: str, alias: str,
                audit: AuditTrail | None) -> None:
    """Put the registration's alias on the (ready) version, then drop its pending mark; the
    champion's first move is recorded in ``audit``."""
    client = conn.client
    if alias == versions.CHAMPION:
        move_alias(conn, name, versions.CHAMPION, version, REGISTER_BASE, audit=audit)
    else:
        client.set_registered_model_alias(name, alias, version)
    client.delete_model_version_tag(name, version, versions.PENDING_ALIAS)


def _link_logged_model(client, model_id: str, name: str, version: str) -> None:
    """Record the version on its logged model, as ``mlflow.register_model`` does, so the
    LoggedModel page links to it instead of offering "Register model"."""
    model = client.get_logged_model(model_id)
    linked = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    if {"name": name, "version": version} not in linked:
        linked.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})


def _ensure_registered_model(client, name: str) -> None:
    try:
        client.create_registered_model(
            name, description="Vision Transformer repaired nightly by vitedit-ops. Serving "
                              f"loads `models:/{name}@champion`.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise RegistryError(f"create registered model {name} failed: "
                                f"{first_line(exc)}") from exc


def _abandon(conn: Connection, name: str, version: str) -> None:
    """Delete a half-registered version; if that fails, mark it incomplete (never ready)."""
    try:
        conn.client.delete_model_version(name, version)
        return
    except Exception:  # noqa: BLE001 - fall back to marking it
        pass
    try:
        conn.client.set_model_version_tag(name, version, versions.STATUS, versions.INCOMPLETE)
    except Exception:  # noqa: BLE001 - store gone: it stays "registering", also never used
        pass


def _registration(info: versions.VersionInfo, created: bool) -> Registration:
    return Registration(name=info.name, version=info.version, run_id=info.run_id,
                        gate_passed=info.gate_passed, aliases=info.aliases, created=created)
