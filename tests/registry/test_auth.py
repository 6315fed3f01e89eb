"""Promotion against MLflow's built-in authentication (a real ``mlflow server --app-name
basic-auth`` on loopback): only a user with MANAGE on the registered model moves the champion,
the others are refused with one line and exit 3, and the audit records the user the server
authenticated, not ``$VITEDIT_USER``."""

from dataclasses import replace

import pytest
from mlflow import MlflowClient

from registry.mlflow_registry import publish_edit
from vitedit_ops.errors import EXIT_BAD_INPUT, EXIT_REFUSED

from ..helpers.servers import AUTH_ADMIN, AUTH_ADMIN_PASSWORD

pytestmark = pytest.mark.server("mlflow-auth")
USERS = {"alice": "MANAGE", "bob": "EDIT", "carol": None}  # carol: the default, READ


def _password(user: str) -> str:
    return AUTH_ADMIN_PASSWORD if user == AUTH_ADMIN else f"{user}-password-for-tests"


def _as(monkeypatch, user: str, password: str | None = None) -> None:
    """The MLflow credentials every client of this process sends from now on."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password or _password(user))


def _audit(name):
    from monitoring import open_store
    from monitoring.audit import StoreAuditTrail

    with open_store() as store:
        return StoreAuditTrail(store).events(name, "champion")


@pytest.fixture
def lineage(mlflow_auth_server, register_base_as, good_edit, model_name, monkeypatch):
    """As the admin: users, the base (v1, champion; recorded in the audit) and a passed edit
    (v2, challenger) under a model of this test, with alice MANAGE and bob EDIT on it."""
    from mlflow.server import get_app_client

    from monitoring import open_store
    from monitoring.audit import StoreAuditTrail

    monkeypatch.setenv("VITEDIT_MLFLOW_TRACKING_URI", mlflow_auth_server)
    monkeypatch.setenv("VITEDIT_USER", "not-who-promotes")
    _as(monkeypatch, AUTH_ADMIN)
    auth = get_app_client("basic-auth", tracking_uri=mlflow_auth_server)
    existing = {u for u in USERS if _exists(auth, u)}
    for user in USERS.keys() - existing:
        auth.create_user(user, _password(user))
    with open_store() as store:
        register_base_as(model_name, mlflow_auth_server, audit=StoreAuditTrail(store))
    good = publish_edit(replace(good_edit.record, registered_model=model_name),
                        mlflow_auth_server)
    for user, permission in USERS.items():
        if permission:
            auth.grant_user_permission(user, "registered_model", model_name, permission)
    return model_name, good, MlflowClient(mlflow_auth_server)


def _exists(auth, user: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        auth.get_user(user)
        return True
    except MlflowException:
        return False


def _champion(client, name) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def test_only_manage_promotes_and_the_audit_names_the_authenticated_user(
        lineage, run_cli, monkeypatch):
    name, good, client = lineage
    first = _audit(name)
    assert [(e.action, e.by, e.authenticated) for e in first] == [
        ("register-base", AUTH_ADMIN, True)]

    for user, granted in (("bob", "EDIT"), ("carol", "READ")):
        _as(monkeypatch, user)
        refused = run_cli("promote", "--run-id", good.run_id)
        assert refused.exit_code == EXIT_REFUSED, refused.output
        assert refused.stderr.strip().splitlines() == [
            f"error: {user} may not move the champion alias of {name}: it needs MANAGE "
            f"permission on the registered model, the MLflow server grants {granted}"]
        assert _champion(client, name) == "1"
    assert _audit(name) == first  # nothing recorded for a refused move

    _as(monkeypatch, "bob", "wrong-password")
    assert run_cli("promote", "--run-id", good.run_id).exit_code == EXIT_BAD_INPUT

    _as(monkeypatch, "alice")
    promoted = run_cli("promote", "--run-id", good.run_id)
    assert promoted.exit_code == 0, promoted.output
    assert "champion -> v2 (was v1), by alice" in promoted.stdout
    assert _champion(client, name) == "2"
    moved = _audit(name)[-1]
    assert (moved.action, moved.version, moved.by, moved.authenticated) == (
        "promote", "2", "alice", True)
    tags = client.get_model_version(name, "2").tags  # the mirror says the same
    assert (tags["vitedit.champion.by"], tags["vitedit.champion.authenticated"]) == (
        "alice", "true")

    _as(monkeypatch, "bob")
    assert run_cli("rollback", "--model", name).exit_code == EXIT_REFUSED
    _as(monkeypatch, "alice")
    assert run_cli("rollback", "--model", name).exit_code == 0
    assert [(e.action, e.by) for e in _audit(name)] == [
        ("register-base", AUTH_ADMIN), ("promote", "alice"), ("rollback", "alice")]
    shown = run_cli("history", "--model", name)
    assert shown.exit_code == 0 and "not-who-promotes" not in shown.stdout
    assert "disagrees" not in shown.stderr
