"""register-base and what the flow and serving load back."""

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from registry import versions
from registry.artifacts import directory_sha256
from registry.base import register_base
from registry.errors import RegistryError
from registry.loading import download_suite, load_version, model_uri
from registry.lookup import champion
from registry.mlflow_registry import publish_edit
from registry.promotion import ONNX_FILE
from vitedit_ops.export import file_sha256
from vitedit_ops.models import fingerprint, save_model


@pytest.fixture(scope="module")
def lineage(embedded_uri, base_checkpoint, suite, run_cli):
    """Registered through the CLI, which exports the ONNX file itself."""
    name = "base-lineage"
    result = run_cli("register-base", "--checkpoint", str(base_checkpoint), "--suite",
                     str(suite[0]), "--model", name, "--tracking-uri", embedded_uri)
    assert result.exit_code == 0, result.output
    assert f"{name} v1 registered" in result.stdout and "aliases: champion" in result.stdout
    return name, MlflowClient(embedded_uri).get_model_version(name, "1")


def test_base_is_version_1_champion_with_suite_and_hashes(lineage, embedded_uri, base_model,
                                                          suite, tmp_path):
    name, mv = lineage
    assert mv.aliases == ["champion"]
    tags = mv.tags
    assert tags[versions.KIND] == "base" and tags[versions.BASE_VERSION] == "1"
    assert tags[versions.FINGERPRINT] == fingerprint(base_model)
    assert tags[versions.LINEAGE_ROOT_FINGERPRINT] == fingerprint(base_model)
    assert tags[versions.SUITE_SHA256] == directory_sha256(suite[0])
    model_id = mv.source.removeprefix("models:/")
    location = MlflowClient(embedded_uri).get_logged_model(model_id).artifact_location
    served = mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{ONNX_FILE}",
                                                 dst_path=str(tmp_path))
    assert tags[versions.ONNX_SHA256] == file_sha256(served)


def test_register_base_is_idempotent_and_starts_lineages_only(lineage, embedded_uri,
                                                              register_base_as, spec, tmp_path,
                                                              suite):
    name, mv = lineage
    again = register_base_as(name, embedded_uri)
    assert (again.version, again.run_id, again.created) == ("1", mv.run_id, False)
    torch.manual_seed(7)
    different = spec.build().eval()  # same architecture, other weights
    checkpoint = save_model(different, spec, tmp_path / "other.safetensors")
    with pytest.raises(RegistryError, match="already has version"):
        register_base(checkpoint, suite[0], name=name, tracking_uri=embedded_uri)


def test_the_champion_loads_as_an_editable_timm_model(lineage, embedded_uri, base_model,
                                                     good_edit, suite):
    name, _ = lineage
    model, spec, info = load_version(name, champion(name, embedded_uri).version,
                                     tracking_uri=embedded_uri)
    assert info.version == "1" and info.kind == "base"
    assert fingerprint(model) == fingerprint(base_model)
    assert spec.architecture == "vit_tiny_patch16_224" and spec.num_classes == 10
    for patch in good_edit.record.patches:  # editable: the night's patches apply on it
        patch.apply(model)
    assert fingerprint(model) == good_edit.record.gate_report.candidate_fingerprint


def test_serving_loads_the_champion_by_alias(lineage, embedded_uri, base_model):
    """The version's logged model is the pyfunc (tests/registry/test_pyfunc.py) and holds
    the served ONNX file, whose hash the version's tag records."""
    name, mv = lineage
    uri = model_uri(name)
    assert uri == f"models:/{name}@champion"
    mlflow.set_tracking_uri(embedded_uri)
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert file_sha256(local / ONNX_FILE) == mv.tags[versions.ONNX_SHA256]
    assert mv.source == f"models:/{mlflow.models.Model.load(str(local)).model_id}"


def test_download_suite_is_verified_and_inherited(lineage, embedded_uri, suite, good_edit,
                                                  tmp_path):
    name, _ = lineage
    local = download_suite(name, dst=tmp_path / "a", tracking_uri=embedded_uri)
    assert directory_sha256(local) == directory_sha256(suite[0])
    edit = publish_edit(replace(good_edit.record, registered_model=name), embedded_uri)
    inherited = download_suite(name, version=edit.version, dst=tmp_path / "b",
                               tracking_uri=embedded_uri)
    assert directory_sha256(inherited) == directory_sha256(suite[0])

    client = MlflowClient(embedded_uri)
    root = client.get_run(client.get_model_version(name, "1").run_id).info.artifact_uri
    (Path(root.removeprefix("file://")) / "suite" / "README.txt").write_text("edited later\n")
    with pytest.raises(RegistryError, match="hashes to"):
        download_suite(name, dst=tmp_path / "c", tracking_uri=embedded_uri)
