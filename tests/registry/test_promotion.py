"""promote / rollback / history through the CLI on the embedded store."""

import json
from dataclasses import replace

import pytest
from mlflow import MlflowClient
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from registry.mlflow_registry import publish_edit
from registry.promotion import AliasEvent, champion_stack, events


@pytest.fixture
def as_reviewer(embedded_uri, monkeypatch):
    monkeypatch.setenv("VITEDIT_MLFLOW_TRACKING_URI", embedded_uri)
    monkeypatch.setenv("VITEDIT_USER", "reviewer-ana")


@pytest.fixture(scope="module")
def shared(embedded_uri, register_base_as, good_edit, bad_edit):
    """For tests that never move an alias: v1 base champion, v2 gate passed, v3 gate failed."""
    name = "promotion-shared"
    register_base_as(name, embedded_uri)
    good = publish_edit(replace(good_edit.record, registered_model=name), embedded_uri)
    bad = publish_edit(replace(bad_edit.record, registered_model=name), embedded_uri)
    return name, good, bad, MlflowClient(embedded_uri)


def _champion(client, name):
    return str(client.get_model_version_by_alias(name, "champion").version)


def _audited(model_name):
    """The promotion audit of the test's monitoring store (VITEDIT_HOME), as the CLI writes it."""
    from monitoring import open_store
    from monitoring.audit import StoreAuditTrail

    with open_store() as store:
        return StoreAuditTrail(store).events(model_name, "champion")


def test_promote_rollback_history(as_reviewer, embedded_uri, register_base_as, good_edit,
                                  model_name, run_cli):
    from monitoring import open_store
    from monitoring.audit import StoreAuditTrail

    with open_store() as store:
        register_base_as(model_name, embedded_uri, audit=StoreAuditTrail(store))
    good = publish_edit(replace(good_edit.record, registered_model=model_name), embedded_uri)
    client = MlflowClient(embedded_uri)

    result = run_cli("promote", "--run-id", good.run_id)
    assert result.exit_code == 0, result.output
    assert "champion -> v2 (was v1)" in result.stdout
    assert _champion(client, model_name) == "2"
    tags = client.get_model_version(model_name, "2").tags
    assert tags["vitedit.champion.by"] == "reviewer-ana"
    assert tags["vitedit.champion.previous"] == "1"
    assert tags["vitedit.champion.forced"] == "false" and tags["vitedit.champion.at"]
    # the challenger became champion, so it is no longer a challenger
    assert client.get_model_version(model_name, "2").aliases == ["champion"]

    again = run_cli("promote", "--run-id", good.run_id)
    assert again.exit_code == 0 and "nothing changed" in again.stdout

    back = run_cli("rollback", "--model", model_name, "--reason", "drift on 7s")
    assert back.exit_code == 0, back.output
    assert _champion(client, model_name) == "1"
    v1 = client.get_model_version(model_name, "1").tags
    assert v1["vitedit.champion.action"] == "rollback" and v1["vitedit.champion.previous"] == "2"
    assert v1["vitedit.champion.reason"] == "drift on 7s"

    nothing_left = run_cli("rollback", "--model", model_name)
    assert nothing_left.exit_code == 2 and "no previous champion" in nothing_left.stderr

    table = run_cli("history", "--model", model_name)
    assert table.exit_code == 0
    for text in ("register-base", "promote", "rollback", "reviewer-ana (unauthenticated)",
                 "drift on 7s", "promotion audit"):
        assert text in table.stdout
    assert "disagrees" not in table.stderr and "moved outside" not in table.stderr
    assert "v1 *" in table.stdout  # the current holder is marked
    # the audit (store) and its MLflow mirror record the same three moves
    audit = _audited(model_name)
    assert audit == events(client, model_name)
    assert [(e.action, e.version, e.by, e.authenticated) for e in audit] == [
        ("register-base", "1", "reviewer-ana", False), ("promote", "2", "reviewer-ana", False),
        ("rollback", "1", "reviewer-ana", False)]

    # someone with EDIT on the model rewrites the mirror: history flags it, the audit holds
    client.set_registered_model_tag(model_name, "vitedit.champion.event.000002", json.dumps(
        {"action": "promote", "version": "2", "previous": "1", "by": "mallory",
         "at": audit[1].at, "forced": False, "reason": "", "overridden": ""}))
    client.set_registered_model_tag(model_name, "vitedit.champion.event.000009", "{not json")
    flagged = run_cli("history", "--model", model_name)
    assert flagged.exit_code == 0 and "reviewer-ana" in flagged.stdout
    assert "mallory" not in flagged.stdout
    assert ("MLflow mirror disagrees with the audit: #2: by is 'mallory' in the MLflow "
            "mirror, 'reviewer-ana' in the audit") in flagged.stderr
    assert "#9: in the MLflow mirror (unreadable v by ), not in the audit" in flagged.stderr
    assert _audited(model_name) == audit

    client.set_registered_model_alias(model_name, "champion", "2")  # someone used the UI
    outside = run_cli("rollback", "--model", model_name)
    assert outside.exit_code == 2 and "moved outside vitedit-ops" in outside.stderr
    shown = run_cli("history", "--model", model_name)
    assert "moved outside vitedit-ops" in shown.stderr


def test_forced_promotion_records_who_why_and_what_was_overridden(
        as_reviewer, embedded_uri, register_base_as, bad_edit, model_name, run_cli):
    register_base_as(model_name, embedded_uri)
    bad = publish_edit(replace(bad_edit.record, registered_model=model_name), embedded_uri)
    forced = run_cli("promote", "--run-id", bad.run_id, "--force", "--reason", "hotfix, see #12")
    assert forced.exit_code == 0 and "(forced)" in forced.stdout
    tags = MlflowClient(embedded_uri).get_model_version(model_name, "2").tags
    assert tags["vitedit.champion.forced"] == "true"
    assert tags["vitedit.champion.reason"] == "hotfix, see #12"
    assert tags["vitedit.champion.by"] == "reviewer-ana"
    assert "gate failed (locality)" in tags["vitedit.champion.overridden"]


def test_gate_failure_is_refused_with_exit_3(as_reviewer, shared, run_cli):
    name, _, bad, client = shared
    refused = run_cli("promote", "--run-id", bad.run_id)
    assert refused.exit_code == 3
    assert "refused" in refused.stderr and "gate failed (locality)" in refused.stderr
    assert _champion(client, name) == "1"


def test_force_without_reason_is_bad_input(as_reviewer, shared, run_cli):
    name, _, bad, client = shared
    result = run_cli("promote", "--run-id", bad.run_id, "--force")
    assert result.exit_code == 2 and "--reason" in result.stderr
    assert _champion(client, name) == "1"


def test_tampered_patch_artifact_is_detected(as_reviewer, shared, run_cli):
    name, _, bad, client = shared
    root = client.get_run(bad.run_id).info.artifact_uri.removeprefix("file://")
    path = f"{root}/patches/00_7to1.safetensors"
    with safe_open(path, framework="pt") as handle:
        header = handle.metadata()
    tensors = load_file(path)
    tensors["0.after"] = tensors["0.after"] + 0.5  # a valid patch, but not the gated one
    save_file(tensors, path, metadata=header)

    refused = run_cli("promote", "--run-id", bad.run_id)
    assert refused.exit_code == 3
    assert "patch sha256 list hash" in refused.stderr and "does not match tag" in refused.stderr
    assert _champion(client, name) == "1"


def test_unknown_run_and_run_without_version_are_bad_input(as_reviewer, shared, run_cli):
    name, _, _, client = shared
    unknown = run_cli("promote", "--run-id", "0" * 32)
    assert unknown.exit_code == 2 and "find run" in unknown.stderr

    experiment = client.get_experiment_by_name(f"vitedit-{name}").experiment_id
    unregistered = client.create_run(experiment, run_name="never registered").info.run_id
    missing = run_cli("promote", "--run-id", unregistered)
    assert missing.exit_code == 2 and "has no registered model version" in missing.stderr


def test_rollback_follows_the_stack_not_the_last_previous():
    def event(seq, action, version):
        return AliasEvent(seq, "champion", action, version, "", "u", "t")

    timeline = [event(1, "register-base", "1"), event(2, "promote", "2"),
                event(3, "promote", "3"), event(4, "rollback", "2")]
    assert champion_stack(timeline) == ["1", "2"]  # next rollback goes to v1, not back to v3


def test_a_timeline_recorded_after_the_first_champion_rolls_back_to_what_it_replaced():
    """An audit added to a running registry (migration 0005) never saw the base's move."""
    timeline = [AliasEvent(1, "champion", "promote", "2", "1", "u", "t")]
    assert champion_stack(timeline) == ["1", "2"]
    assert champion_stack([]) == []


def test_a_move_that_fails_midway_puts_the_alias_and_its_signed_grant_back(
        as_reviewer, embedded_uri, register_base_as, good_edit, model_name, run_cli,
        monkeypatch):
    """The timeline write fails after the grant was signed and the alias moved (a fault the
    store cannot be made to cause on demand): v1 keeps the alias and still verifies."""
    from registry import signing

    register_base_as(model_name, embedded_uri)
    good = publish_edit(replace(good_edit.record, registered_model=model_name), embedded_uri)
    client = MlflowClient(embedded_uri)
    before, _ = signing.read_grant(client, model_name, "champion")
    assert before is not None and before.version == "1"

    real = MlflowClient.set_registered_model_tag

    def failing(self, name, key, value):
        if ".event." in key:
            raise OSError("disk full while writing the timeline")
        return real(self, name, key, value)

    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "set_registered_model_tag", failing)
        refused = run_cli("promote", "--run-id", good.run_id)
    assert refused.exit_code != 0 and "disk full" in refused.stderr
    assert _champion(client, model_name) == "1"
    after, problem = signing.read_grant(client, model_name, "champion")
    assert after == before, problem


def test_a_forged_mirror_event_does_not_commit_an_unpromoted_challengers_fixes(
        as_reviewer, embedded_uri, register_base_as, good_edit, model_name):
    """The MLflow mirror of the timeline is display: anyone with EDIT on the model can add an
    event claiming challenger v2 served. The night's ledger settling (the real task, outside
    a flow run) goes by the audit, so v2's fixes stay pending, not committed, which would keep
    their images out of every later collection although no served model holds them."""
    from datetime import UTC, datetime

    from flows.nightly import reconcile_ledger
    from monitoring import open_store
    from monitoring.audit import StoreAuditTrail
    from monitoring.store import StagedRecord

    ts = datetime(2026, 11, 20, tzinfo=UTC)
    fixed = [StagedRecord({"id": f"fixed-{i}", "ts": ts, "model_name": model_name,
                           "model_version": "1", "model_alias": "champion",
                           "image_uri": f"file:///img/{i}", "image_sha256": f"{i:064x}",
                           "predicted_class": 1, "topk": [], "request_metadata": {},
                           "content_hash": f"{i:064x}", "ingested_at": ts}, f"t:{i}", "{}")
             for i in range(3)]
    with open_store() as store:
        register_base_as(model_name, embedded_uri, audit=StoreAuditTrail(store))
        good = publish_edit(replace(good_edit.record, registered_model=model_name),
                            embedded_uri)
        assert store.write_predictions(fixed, []).accepted == 3
        store.record_edit_usage(good.run_id, good.version, [r.row["id"] for r in fixed])
    MlflowClient(embedded_uri).set_registered_model_tag(
        model_name, "vitedit.champion.event.000002", json.dumps(
            {"action": "promote", "version": good.version, "previous": "1", "by": "mallory",
             "at": "2026-12-03T00:00:00+00:00", "forced": False, "reason": "",
             "overridden": ""}))
    settled, challenger = reconcile_ledger.fn(model_name, embedded_uri)
    assert challenger == good.version and settled.committed == {}
    with open_store() as store:
        assert store.ledger_states(model_name) == {good.version: {"pending": 3}}


def test_a_forged_mirror_event_numbered_beyond_the_audit_does_not_block_promotion(
        as_reviewer, embedded_uri, register_base_as, good_edit, model_name, run_cli):
    """Anyone with EDIT on the model can add a mirror event numbered beyond every integer
    column. The next move is numbered from the audit and the signed move, so promotion goes
    on (before, its audit row could not be stored and every promotion failed); history names
    the stray event."""
    from monitoring import open_store
    from monitoring.audit import StoreAuditTrail

    with open_store() as store:
        register_base_as(model_name, embedded_uri, audit=StoreAuditTrail(store))
    good = publish_edit(replace(good_edit.record, registered_model=model_name), embedded_uri)
    MlflowClient(embedded_uri).set_registered_model_tag(
        model_name, "vitedit.champion.event." + "9" * 20, json.dumps(
            {"action": "promote", "version": "1", "previous": "", "by": "mallory",
             "at": "2026-12-03T00:00:00+00:00"}))
    promoted = run_cli("promote", "--run-id", good.run_id)
    assert promoted.exit_code == 0, promoted.output
    assert [(e.seq, e.version) for e in _audited(model_name)] == [(1, "1"), (2, "2")]
    shown = run_cli("history", "--model", model_name)
    assert f"#{'9' * 20}: in the MLflow mirror" in shown.stderr, shown.stderr
