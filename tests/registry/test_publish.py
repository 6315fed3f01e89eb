"""Logging and registering edit runs on the embedded store: what a reviewer finds in MLflow."""

import threading
import time
from dataclasses import dataclass, replace

import pytest
from mlflow import MlflowClient

from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from registry import artifacts, versions
from registry.mlflow_registry import Registration, publish_edit
from registry.promotion import current_user


@dataclass
class Lineage:
    name: str
    client: MlflowClient
    good: Registration
    bad: Registration


@pytest.fixture(scope="module")
def lineage(embedded_uri, register_base_as, good_edit, bad_edit) -> Lineage:
    """v1 base (champion), v2 a gate-passed edit, v3 a gate-failed edit."""
    name = "publish-lineage"
    register_base_as(name, embedded_uri)
    good = publish_edit(replace(good_edit.record, registered_model=name), embedded_uri)
    bad = publish_edit(replace(bad_edit.record, registered_model=name), embedded_uri)
    return Lineage(name, MlflowClient(embedded_uri), good, bad)


def _files(client, run_id, path=None):
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _files(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def test_gate_passed_edit_becomes_challenger(lineage):
    assert (lineage.good.version, lineage.good.created, lineage.good.gate_passed) == \
        ("2", True, True)
    assert lineage.good.aliases == ("challenger",)
    assert str(lineage.client.get_model_version_by_alias(lineage.name, "champion").version) == "1"


def test_version_tags_tie_it_to_lineage_gate_patches_onnx_and_suite(lineage, good_edit):
    mv = lineage.client.get_model_version(lineage.name, lineage.good.version)
    record = good_edit.record
    tags = mv.tags
    assert tags[versions.STATUS] == "ready" and versions.PENDING_ALIAS not in tags
    assert tags[versions.KIND] == "edit"
    assert tags[versions.BASE_VERSION] == "1" and tags[versions.PARENT_VERSION] == "1"
    assert tags[versions.LINEAGE_ROOT_FINGERPRINT] == record.lineage_root_fingerprint
    assert tags[versions.FINGERPRINT] == record.gate_report.candidate_fingerprint
    assert tags[versions.GATE] == "passed"
    assert tags[versions.EDITED_GROUPS] == "3->8,5->6"
    assert tags[versions.PATCH_SHA256].split(",") == [p.sha256() for p in record.patches]
    assert tags[versions.ONNX_SHA256] == good_edit.onnx.sha256
    assert tags[versions.SUITE_HASH] == record.suite_hash
    assert tags[versions.IDEMPOTENCY_KEY] == replace(record, registered_model=lineage.name).key
    assert mv.source.startswith("models:/m-") and mv.run_id == lineage.good.run_id


def test_run_holds_params_metrics_and_every_artifact(lineage, good_edit):
    run = lineage.client.get_run(lineage.good.run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["method"] == "localized" and params["window"] == "blocks 0-1"
    assert params["keep_fraction"] == "0.1" and params["lr"] == "2e-05"
    assert params["error_groups"] == "3->8,5->6" and params["num_images"] == "20"
    assert params["parent_fingerprint"] == good_edit.record.parent_fingerprint
    for check in good_edit.record.gate_report.checks:
        assert metrics[f"gate/{check.name}"] == pytest.approx(check.value)
    assert metrics["locality"] == pytest.approx(good_edit.record.metrics_after["locality"])
    assert metrics["group/3to8/generalization_before"] == pytest.approx(0.1)
    assert run.info.status == "FINISHED" and run.data.tags[versions.LOGGED] == "complete"
    files = set(_files(lineage.client, lineage.good.run_id))
    assert {artifacts.GATE_JSON, artifacts.GATE_MD, artifacts.GR_LR_PLOT,
            artifacts.CONFUSION_PLOT, artifacts.WEIGHTS, artifacts.SPEC, artifacts.SUMMARY,
            artifacts.DESCRIPTION, artifacts.MANIFEST, "patches/00_3to8.safetensors",
            "patches/01_5to6.safetensors", "plots/mask_blocks.1.mlp.fc1.weight.png",
            "plots/mask_blocks.1.mlp.fc2.weight.png"} <= files


def test_run_says_who_logged_it_from_which_code_and_when(lineage):
    run = lineage.client.get_run(lineage.good.run_id)
    tags = run.data.tags
    assert tags[MLFLOW_USER] == current_user()
    assert tags[MLFLOW_SOURCE_TYPE] and tags[MLFLOW_SOURCE_NAME]
    assert len(tags[MLFLOW_GIT_COMMIT]) == 40  # the tests run from a git checkout
    history = lineage.client.get_metric_history(lineage.good.run_id, "locality")
    assert [m.timestamp for m in history] == [pytest.approx(run.info.start_time, abs=600_000)]


def test_description_tells_the_reviewer_what_was_fixed_and_the_gate(lineage, good_edit):
    text = lineage.client.get_model_version(lineage.name, lineage.good.version).description
    assert "gate PASSED" in text and "| 3->8 |" in text and "| 5->6 |" in text
    assert "| locality |" in text  # the gate table
    run_id = lineage.good.run_id
    assert f"runs/{run_id}/artifactPath/plots/gr_lr.png" in text
    assert f"runs/{run_id}/artifactPath/plots/mask_blocks.1.mlp.fc2.weight.png" in text
    assert "| 32 in 2 matrices |" in text  # 16 fc1 rows + 16 fc2 columns


def test_gate_failed_edit_is_registered_without_alias(lineage):
    mv = lineage.client.get_model_version(lineage.name, lineage.bad.version)
    assert lineage.bad.version == "3" and not lineage.bad.gate_passed
    assert mv.tags[versions.GATE] == "failed"
    assert mv.tags[versions.FAILED_CHECKS] == "locality"
    assert mv.aliases == [] and "gate FAILED" in mv.description
    assert str(lineage.client.get_model_version_by_alias(lineage.name, "challenger").version) == "2"


def test_same_edit_twice_creates_no_second_version_or_run(lineage, good_edit, embedded_uri):
    runs_before = lineage.client.search_runs(
        [lineage.client.get_run(lineage.good.run_id).info.experiment_id])
    again = publish_edit(replace(good_edit.record, registered_model=lineage.name), embedded_uri)
    assert (again.version, again.run_id, again.created) == ("2", lineage.good.run_id, False)
    runs_after = lineage.client.search_runs(
        [lineage.client.get_run(lineage.good.run_id).info.experiment_id])
    assert len(runs_after) == len(runs_before)
    assert len(lineage.client.search_model_versions(f"name = '{lineage.name}'")) == 3


def test_an_alias_never_points_at_a_version_not_ready(embedded_uri, register_base_as,
                                                      good_edit, model_name):
    """What serving's poll and promote see while a base and an edit register: the alias
    moves only once its version is ready (no spurious refusal of a half-registered one)."""
    client = MlflowClient(embedded_uri)
    seen: list[tuple[str, str, bool]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for alias in (versions.CHAMPION, versions.CHALLENGER):
                info = versions.by_alias(client, model_name, alias)
                if info is not None:
                    seen.append((alias, info.version, info.ready))
            time.sleep(0.01)
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        register_base_as(model_name, embedded_uri)
        publish_edit(replace(good_edit.record, registered_model=model_name), embedded_uri)
    finally:
        stop.set()
        poller.join()
    assert {("champion", "1", True), ("challenger", "2", True)} <= set(seen)
    assert [s for s in seen if not s[2]] == []


def test_a_registration_that_died_before_its_alias_finishes_when_run_again(
        embedded_uri, register_base_as, good_edit, model_name):
    client = MlflowClient(embedded_uri)
    register_base_as(model_name, embedded_uri)
    record = replace(good_edit.record, registered_model=model_name)
    first = publish_edit(record, embedded_uri)
    # the state a process killed between the ready mark and the alias move leaves behind
    for alias, version in ((versions.CHAMPION, "1"), (versions.CHALLENGER, first.version)):
        client.delete_registered_model_alias(model_name, alias)
        client.set_model_version_tag(model_name, version, versions.PENDING_ALIAS, alias)
    assert register_base_as(model_name, embedded_uri).aliases == ("champion",)
    again = publish_edit(record, embedded_uri)
    assert (again.version, again.created, again.aliases) == (first.version, False,
                                                             ("challenger",))
    for version in ("1", first.version):
        assert versions.PENDING_ALIAS not in client.get_model_version(model_name, version).tags


def test_printed_run_links_use_the_configured_ui_address(lineage, embedded_uri, monkeypatch):
    from flows.reporting import mlflow_ui_command
    from registry.lookup import run_url

    monkeypatch.setenv("VITEDIT_MLFLOW_UI_URL", "https://mlflow.example.org:8443/")
    experiment = lineage.client.get_run(lineage.good.run_id).info.experiment_id
    assert run_url(lineage.good.run_id, embedded_uri) == \
        f"https://mlflow.example.org:8443/#/experiments/{experiment}/runs/{lineage.good.run_id}"
    assert mlflow_ui_command(embedded_uri).endswith("--port 8443")
