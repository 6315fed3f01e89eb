"""A failure anywhere leaves no usable version, and the same edit can be registered later."""

from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from registry import versions
from registry.errors import RegistryError
from registry.mlflow_registry import publish_edit
from registry.promotion import promote
from vitedit_ops.errors import InvalidInputError
from vitedit_ops.export import ExportResult

from ..helpers.mlflow_runs import run_left_running


def _versions(uri, name):
    return MlflowClient(uri).search_model_versions(f"name = '{name}'")


def test_corrupt_onnx_midway_registers_nothing_and_the_retry_works(
        embedded_uri, register_base_as, good_edit, model_name, tmp_path):
    register_base_as(model_name, embedded_uri)
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(good_edit.onnx.path.read_bytes()[:5000])  # truncated upload source
    broken = replace(good_edit.record, registered_model=model_name,
                     onnx=ExportResult(corrupt, good_edit.onnx.sha256, 20))
    with pytest.raises(RegistryError, match="nothing registered"):
        publish_edit(broken, embedded_uri)
    assert [str(v.version) for v in _versions(embedded_uri, model_name)] == ["1"]
    client = MlflowClient(embedded_uri)
    failed = client.search_runs([client.get_experiment_by_name(f"vitedit-{model_name}")
                                 .experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 1 and failed[0].data.tags[versions.ERROR]
    # the fault hit midway: patches and weights were already uploaded, the run is not reusable
    uploaded = {f.path for f in client.list_artifacts(failed[0].info.run_id)}
    assert {"patches", "weights", "plots", "gate"} <= uploaded
    assert failed[0].data.tags[versions.LOGGED] == "in-progress"

    fixed = publish_edit(replace(broken, onnx=good_edit.onnx), embedded_uri)
    assert (fixed.version, fixed.created, fixed.aliases) == ("2", True, ("challenger",))


def test_unwritable_artifact_store_registers_nothing(embedded_uri, good_edit, model_name,
                                                     tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the artifact store should be")
    client = MlflowClient(embedded_uri)
    client.create_experiment(f"vitedit-{model_name}",
                             artifact_location=(blocker / "artifacts").as_uri())
    record = replace(good_edit.record, registered_model=model_name)
    with pytest.raises(RegistryError, match="logging run .* failed"):
        publish_edit(record, embedded_uri)
    assert _versions(embedded_uri, model_name) == []


def lost_connection(self, *args, **kwargs):
    raise ConnectionError("connection reset by peer")


def test_failure_after_version_creation_withdraws_or_disables_the_version(
        embedded_uri, register_base_as, good_edit, model_name, monkeypatch):
    """The registry failing between creating a version and aliasing it (mocked: this cannot be
    timed for real in-process) must not leave a usable version behind."""
    register_base_as(model_name, embedded_uri)
    record = replace(good_edit.record, registered_model=model_name)
    client = MlflowClient(embedded_uri)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", lost_connection)
    with pytest.raises(RegistryError, match="version withdrawn"):
        publish_edit(record, embedded_uri)
    assert [str(v.version) for v in _versions(embedded_uri, model_name)] == ["1"]

    # deleting fails too: the version stays, marked incomplete, never aliased or promoted
    monkeypatch.setattr(MlflowClient, "delete_model_version", lost_connection)
    with pytest.raises(RegistryError):
        publish_edit(record, embedded_uri)
    monkeypatch.undo()
    stale = client.get_model_version(model_name, "3")
    assert stale.tags[versions.STATUS] == versions.INCOMPLETE and stale.aliases == []
    with pytest.raises(RegistryError, match="no usable version"):
        promote(stale.run_id, tracking_uri=embedded_uri)

    # the store is back: the completely logged run is registered, once
    again = publish_edit(record, embedded_uri)
    assert (again.version, again.created, again.aliases) == ("4", True, ("challenger",))
    assert again.run_id == stale.run_id
    assert publish_edit(record, embedded_uri).created is False


def test_record_with_missing_suite_dir_is_refused_before_any_upload(embedded_uri, good_edit,
                                                                    model_name):
    record = replace(good_edit.record, registered_model=model_name,
                     suite_dir=Path("/nonexistent/suite"))
    with pytest.raises(InvalidInputError, match="suite directory"):
        publish_edit(record, embedded_uri)
    assert MlflowClient(embedded_uri).get_experiment_by_name(f"vitedit-{model_name}") is None



def test_edit_runs_left_running_by_a_killed_process_are_marked_failed(embedded_uri,
                                                                       model_name):
    from datetime import timedelta

    from registry import fail_orphaned_edit_runs

    client = MlflowClient(embedded_uri)
    orphan = run_left_running(embedded_uri, model_name)
    base_run = run_left_running(embedded_uri, model_name, kind="base")
    assert client.get_run(orphan).info.status == "RUNNING"

    # younger than the night's timeout: may still be a live night, left alone
    assert fail_orphaned_edit_runs(model_name, timedelta(hours=1), "test", embedded_uri) == []
    assert client.get_run(orphan).info.status == "RUNNING"

    assert fail_orphaned_edit_runs(model_name, timedelta(0), "nightly flow run X",
                                   embedded_uri) == [orphan]
    run = client.get_run(orphan)
    assert run.info.status == "FAILED"
    assert run.data.tags[versions.ERROR].startswith("orphaned: RUNNING for more than")
    assert "marked FAILED by nightly flow run X" in run.data.tags[versions.ERROR]
    assert run.data.tags[versions.LOGGED] == "in-progress"  # still never registrable
    assert client.get_run(base_run).info.status == "RUNNING"  # not a night's run: not ours
    assert fail_orphaned_edit_runs(model_name, timedelta(0), "test", embedded_uri) == []
