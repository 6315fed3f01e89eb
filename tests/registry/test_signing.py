"""Tamper-evident versions (issue 12): the attacks through the plain MLflow API on a real
embedded store, refused by ``promote`` because the version's record is signed with a key the
store does not hold."""

import json
import os
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from mlflow import MlflowClient

from registry import signing, versions
from registry.errors import PromotionRefusedError
from registry.lookup import verified_champion
from registry.mlflow_registry import publish_edit
from registry.promotion import ONNX_FILE, events, promote, verify
from registry.versions import CHAMPION
from vitedit_ops.export import file_sha256


@pytest.fixture
def as_reviewer(embedded_uri, monkeypatch):
    monkeypatch.setenv("VITEDIT_MLFLOW_TRACKING_URI", embedded_uri)
    monkeypatch.setenv("VITEDIT_USER", "reviewer-ana")


@pytest.fixture
def lineage(embedded_uri, register_base_as, good_edit, bad_edit, model_name):
    """v1 base champion, v2 gate passed, v3 gate failed; all signed with the session key."""
    register_base_as(model_name, embedded_uri)
    good = publish_edit(replace(good_edit.record, registered_model=model_name), embedded_uri)
    bad = publish_edit(replace(bad_edit.record, registered_model=model_name), embedded_uri)
    return model_name, good, bad, MlflowClient(embedded_uri)


def _champion(client, name):
    return str(client.get_model_version_by_alias(name, CHAMPION).version)


def _onnx_file(client: MlflowClient, name: str, version: str) -> Path:
    location = client.get_logged_model(versions.get(client, name, version).model_id)
    return Path(unquote(urlparse(location.artifact_location).path)) / ONNX_FILE


def _key_file(tmp_path: Path, name: str) -> Path:
    return signing.create_key_file(tmp_path / name)


def test_registered_versions_carry_a_signature_of_their_record(lineage):
    name, good, _, client = lineage
    info = versions.get(client, name, good.version)
    record = json.loads(info.tags[signing.SIGNED_RECORD])
    assert record["version"] == good.version and record["run_id"] == good.run_id
    assert record["tags"][versions.GATE] == "passed"
    assert record["tags"][versions.ONNX_SHA256] == info.tags[versions.ONNX_SHA256]
    assert info.tags[signing.SIGNATURE].startswith("v1:")
    assert verify(client, info) == []
    base = versions.get(client, name, "1")  # the base too, and register-base's move
    assert verify(client, base) == []
    assert signing.check_alias(client, base, CHAMPION)[1] == []


def test_swapped_onnx_with_its_hash_tag_rewritten_is_refused(as_reviewer, lineage, run_cli):
    """The attack of issue 12: the ungated model's graph is put where the passed version's
    served ONNX file was, and the hash tag rewritten to match it."""
    name, good, _, client = lineage
    served = _onnx_file(client, name, good.version)
    served.write_bytes(_onnx_file(client, name, "3").read_bytes())
    client.set_model_version_tag(name, good.version, versions.ONNX_SHA256, file_sha256(served))
    info = versions.get(client, name, good.version)
    assert info.tags[versions.ONNX_SHA256] == file_sha256(served)  # tag and file agree now

    problems = verify(client, info)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"tag {versions.ONNX_SHA256} was rewritten after signing")
    assert problems[1].startswith("served ONNX file hash")  # judged by the signed hash
    refused = run_cli("promote", "--run-id", good.run_id)
    assert refused.exit_code == 3, refused.output
    assert "was rewritten after signing" in refused.stderr
    assert _champion(client, name) == "1"


def test_rewritten_gate_verdict_is_refused_and_so_is_a_rewritten_record(as_reviewer, lineage,
                                                                        run_cli):
    name, _, bad, client = lineage
    client.set_model_version_tag(name, bad.version, versions.GATE, "passed")
    client.delete_model_version_tag(name, bad.version, versions.FAILED_CHECKS)
    refused = run_cli("promote", "--run-id", bad.run_id)
    assert refused.exit_code == 3
    assert f"tag {versions.GATE} was rewritten after signing" in refused.stderr
    assert f"tag {versions.FAILED_CHECKS} was rewritten after signing" in refused.stderr
    assert "gate failed (locality)" in refused.stderr  # the signed verdict is what counts

    # the attacker rewrites the signed record to match the tags: its MAC no longer holds
    record = json.loads(client.get_model_version(name, bad.version).tags[signing.SIGNED_RECORD])
    record["tags"][versions.GATE] = "passed"
    del record["tags"][versions.FAILED_CHECKS]
    client.set_model_version_tag(name, bad.version, signing.SIGNED_RECORD,
                                 json.dumps(record, sort_keys=True, separators=(",", ":")))
    forged = run_cli("promote", "--run-id", bad.run_id)
    assert forged.exit_code == 3
    assert "signature does not match the signed record" in forged.stderr
    assert _champion(client, name) == "1"


def test_a_signature_copied_from_another_version_is_refused(as_reviewer, lineage):
    name, good, bad, client = lineage
    source = client.get_model_version(name, good.version).tags
    for tag in (signing.SIGNED_RECORD, signing.SIGNATURE, *versions.VERSION_TAGS):
        if tag in source:
            client.set_model_version_tag(name, bad.version, tag, source[tag])
    with pytest.raises(PromotionRefusedError, match="signature copied from another version"):
        promote(bad.run_id)
    assert _champion(client, name) == "1"


def test_without_a_key_nothing_is_signed_and_promotion_needs_force(
        as_reviewer, embedded_uri, register_base_as, good_edit, model_name, monkeypatch,
        run_cli):
    key = os.environ["VITEDIT_SIGNING_KEY_FILE"]
    monkeypatch.delenv("VITEDIT_SIGNING_KEY_FILE")
    register_base_as(model_name, embedded_uri)
    good = publish_edit(replace(good_edit.record, registered_model=model_name), embedded_uri)
    client = MlflowClient(embedded_uri)
    assert signing.SIGNATURE not in client.get_model_version(model_name, "2").tags

    refused = run_cli("promote", "--run-id", good.run_id)
    assert refused.exit_code == 3 and "unsigned" in refused.stderr
    # with the key back, a version registered unsigned (e.g. before signing existed) stays
    # refused: nothing vouches for it after the fact
    monkeypatch.setenv("VITEDIT_SIGNING_KEY_FILE", key)
    assert run_cli("promote", "--run-id", good.run_id).exit_code == 3
    forced = run_cli("promote", "--run-id", good.run_id, "--force", "--reason", "pre-signing")
    assert forced.exit_code == 0 and "(forced)" in forced.stdout
    tags = client.get_model_version(model_name, "2").tags
    assert "unsigned" in tags["vitedit.champion.overridden"]


def test_a_signed_version_needs_the_key_to_be_promoted(as_reviewer, lineage, monkeypatch,
                                                       run_cli):
    name, good, _, client = lineage
    monkeypatch.delenv("VITEDIT_SIGNING_KEY_FILE")
    refused = run_cli("promote", "--run-id", good.run_id)
    assert refused.exit_code == 3 and "no signing key configured" in refused.stderr
    assert _champion(client, name) == "1"


def test_rotated_key_verifies_through_the_old_key_files(as_reviewer, lineage, monkeypatch,
                                                       tmp_path, run_cli):
    name, good, _, client = lineage
    old = os.environ["VITEDIT_SIGNING_KEY_FILE"]
    monkeypatch.setenv("VITEDIT_SIGNING_KEY_FILE", str(_key_file(tmp_path, "new.key")))
    wrong = run_cli("promote", "--run-id", good.run_id)
    assert wrong.exit_code == 3 and "the configured keys are" in wrong.stderr

    monkeypatch.setenv("VITEDIT_SIGNING_OLD_KEY_FILES", json.dumps([old]))
    promoted = run_cli("promote", "--run-id", good.run_id)
    assert promoted.exit_code == 0, promoted.output
    assert _champion(client, name) == good.version
    # the move was signed with the new key, which verifies it
    info = versions.get(client, name, good.version)
    assert signing.check_alias(client, info, CHAMPION)[1] == []


def test_unusable_key_files_are_bad_input(as_reviewer, lineage, monkeypatch, tmp_path, run_cli):
    _, good, _, _ = lineage
    made = run_cli("signing-key", "create", str(tmp_path / "k" / "signing.key"))
    assert made.exit_code == 0, made.output
    path = tmp_path / "k" / "signing.key"
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) == 64
    again = run_cli("signing-key", "create", str(path))
    assert again.exit_code == 2 and "exists" in again.stderr

    path.chmod(0o644)
    monkeypatch.setenv("VITEDIT_SIGNING_KEY_FILE", str(path))
    loose = run_cli("promote", "--run-id", good.run_id)
    assert loose.exit_code == 2 and "readable by others" in loose.stderr
    short = tmp_path / "short.key"
    short.write_text("too short")
    short.chmod(0o600)
    monkeypatch.setenv("VITEDIT_SIGNING_KEY_FILE", str(short))
    assert "needs at least 32" in run_cli("promote", "--run-id", good.run_id).stderr


def test_an_alias_moved_by_hand_is_told_apart_and_promote_vouches_for_it(as_reviewer, lineage,
                                                                         run_cli):
    name, good, _, client = lineage
    assert run_cli("promote", "--run-id", good.run_id).exit_code == 0
    holder = versions.get(client, name, good.version)
    assert signing.check_alias(client, holder, CHAMPION)[1] == []

    client.set_registered_model_alias(name, CHAMPION, "1")  # MLflow's UI, past every check
    base = versions.get(client, name, "1")
    grant, problems = signing.check_alias(client, base, CHAMPION)
    assert grant.version == good.version
    assert problems and "was moved outside vitedit-ops" in problems[0]
    with pytest.raises(PromotionRefusedError, match="was moved outside vitedit-ops"):
        verified_champion(name)  # what the nightly's pin-champion task asks: no night on v1

    # a forged move record is refused too
    forged = json.loads(client.get_registered_model(name).tags[signing.grant_tag(CHAMPION)])
    forged["record"]["version"] = "1"
    client.set_registered_model_tag(name, signing.grant_tag(CHAMPION), json.dumps(forged))
    assert "signature does not match" in signing.check_alias(client, base, CHAMPION)[1][0]

    # promoting the holder records and signs the move instead of "nothing changed"
    again = run_cli("promote", "--run-id", base.run_id)
    assert again.exit_code == 0 and "champion -> v1" in again.stdout, again.output
    assert signing.check_alias(client, base, CHAMPION)[1] == []
    assert events(client, name)[-1].version == "1"


def _weights_file(client: MlflowClient, name: str, version: str) -> Path:
    from registry import artifacts

    run = client.get_run(versions.get(client, name, version).run_id)
    return Path(unquote(urlparse(run.info.artifact_uri).path)) / artifacts.WEIGHTS


def test_swapped_torch_weights_are_refused_before_any_use(as_reviewer, lineage, run_cli):
    """The safetensors weights a night edits and pyfunc loads, replaced by the ungated
    version's (a file swap in the artifact store): promotion refuses by hash, a load refuses
    by fingerprint; and with the fingerprint tag rewritten to match, both still refuse, by
    the signed record."""
    from registry.errors import RegistryError
    from registry.loading import load_version

    name, good, bad, client = lineage
    served = _weights_file(client, name, good.version)
    served.write_bytes(_weights_file(client, name, bad.version).read_bytes())
    refused = run_cli("promote", "--run-id", good.run_id)
    assert refused.exit_code == 3, refused.output
    assert "weights weights/model.safetensors hash" in refused.stderr
    with pytest.raises(RegistryError, match="do not match the version's"):
        load_version(name, good.version)

    swapped = client.get_model_version(name, bad.version).tags[versions.FINGERPRINT]
    client.set_model_version_tag(name, good.version, versions.FINGERPRINT, swapped)
    refused = run_cli("promote", "--run-id", good.run_id)
    assert refused.exit_code == 3 and "was rewritten after signing" in refused.stderr
    with pytest.raises(PromotionRefusedError, match=f"tag {versions.FINGERPRINT} was rewritten"):
        load_version(name, good.version)
    assert _champion(client, name) == "1"
