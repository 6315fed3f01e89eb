"""A lineage's KE/MEND update networks in the registry: attached with ``register-updater``,
signed, loaded back only when the files hash to the signed value and the signature holds."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from registry import versions
from registry.errors import AssetRefusedError, MissingAssetError, RegistryError
from registry.lineage_assets import (load_lineage_updater, register_updater, updater_tag)
from vitedit_ops.learned_update import WEIGHTS_FILE, new_updater


def _base(client: MlflowClient, name: str) -> versions.VersionInfo:
    return versions.get(client, name, "1")


def test_an_update_network_round_trips_through_the_cli_and_back(
        embedded_uri, register_base_as, base_model, run_cli, tmp_path):
    name = "upd-round-trip"
    register_base_as(name, embedded_uri)
    net = new_updater("ke", base_model)
    net.save(tmp_path / "ke")
    attach = ["register-updater", "--model", name, "--version", "1", "--updater",
              str(tmp_path / "ke"), "--tracking-uri", embedded_uri]
    result = run_cli(*attach)
    assert result.exit_code == 0, result.output
    assert f"update network attached to {name} v1" in result.stdout

    loaded = load_lineage_updater(_base(MlflowClient(embedded_uri), name), "ke", embedded_uri)
    assert loaded.kind == "ke" and loaded.config == net.config
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    again = run_cli(*attach)
    assert again.exit_code == 0 and "already attached" in again.stdout

    with pytest.raises(MissingAssetError, match="has no MEND update network") as missing:
        load_lineage_updater(_base(MlflowClient(embedded_uri), name), "mend", embedded_uri)
    assert missing.value.exit_code == 2 and "register-updater" in str(missing.value)

    nowhere = run_cli("register-updater", "--model", name, "--version", "1", "--updater",
                      str(tmp_path / "nowhere"), "--tracking-uri", embedded_uri)
    assert nowhere.exit_code == 2, nowhere.output
    (line,) = nowhere.output.strip().splitlines()
    assert "nowhere" in line and "unreadable" in line


def test_swapped_files_or_rewritten_tags_are_refused(embedded_uri, register_base_as,
                                                    base_model, tmp_path):
    """What anyone with write access to the registry can do: overwrite the stored weights
    (the hash check refuses), then rewrite the hash tag to match (the signature refuses)."""
    from registry.artifacts import directory_sha256

    name = "upd-tampered"
    register_base_as(name, embedded_uri)
    new_updater("ke", base_model).save(tmp_path / "ke")
    stored = register_updater(name, "1", tmp_path / "ke", tracking_uri=embedded_uri)
    client = MlflowClient(embedded_uri)

    forged = tmp_path / "forged"
    forged.mkdir()
    weights = load_file(str(tmp_path / "ke" / WEIGHTS_FILE))
    weights["log_step"] = weights["log_step"] + 5.0  # a 150-fold step, same shapes
    save_file(weights, str(forged / WEIGHTS_FILE))
    client.log_artifact(stored.run_id, str(forged / WEIGHTS_FILE), "updater-ke")
    with pytest.raises(AssetRefusedError, match="hashes to") as refused:
        load_lineage_updater(_base(client, name), "ke", embedded_uri)
    assert refused.value.exit_code == 3 and "\n" not in str(refused.value)

    local = client.download_artifacts(stored.run_id, "updater-ke", str(tmp_path / "dl"))
    client.set_model_version_tag(name, "1", updater_tag("ke", "sha256"),
                                 directory_sha256(local))
    with pytest.raises(AssetRefusedError, match="signature does not match"):
        load_lineage_updater(_base(client, name), "ke", embedded_uri)
    client.delete_model_version_tag(name, "1", updater_tag("ke", "signature"))
    with pytest.raises(AssetRefusedError, match="unsigned"):
        load_lineage_updater(_base(client, name), "ke", embedded_uri)


def test_a_network_of_other_weights_is_refused_at_registration(embedded_uri, register_base_as,
                                                               spec, tmp_path):
    name = "upd-stranger"
    register_base_as(name, embedded_uri)
    torch.manual_seed(5)
    new_updater("mend", spec.build().eval()).save(tmp_path / "mend")
    with pytest.raises(RegistryError, match="meta-trained for weights"):
        register_updater(name, "1", tmp_path / "mend", tracking_uri=embedded_uri)
    assert updater_tag("mend", "run_id") not in _base(MlflowClient(embedded_uri), name).tags
