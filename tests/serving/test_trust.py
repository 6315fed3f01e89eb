"""What serving trusts (issue 12): a real server following a real ``mlflow server`` refuses a
champion whose files or tags changed after signing and an alias moved outside vitedit-ops,
keeps serving the old champion, and follows a registry webhook at once."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import requests
from mlflow import MlflowClient

from registry import versions
from registry.errors import PromotionRefusedError
from registry.promotion import ONNX_FILE, promote
from registry.versions import CHAMPION
from serving.webhook import EVENTS
from vitedit_ops.export import file_sha256

from ..helpers.servers import wait_for
from .conftest import photo

pytestmark = [pytest.mark.server("mlflow"), pytest.mark.slow]


def _onnx_file(client: MlflowClient, name: str, version: str) -> Path:
    location = client.get_logged_model(versions.get(client, name, version).model_id)
    return Path(unquote(urlparse(location.artifact_location).path)) / ONNX_FILE


def _refusals(server) -> float:
    return server.metric("vitedit_serve_champion_loads_total", outcome="refused")


def _still_serves_v1(server) -> None:
    assert server.ready_version() == "1"
    answer = server.predict(("raw", photo(32, 32, seed=7)))
    assert answer.status_code == 200 and answer.json()["version"] == "1"


def test_alias_moved_outside_vitedit_ops_is_not_served(registered, serve):
    lineage = registered("serve-moved-by-hand")
    server = serve(lineage.name, lineage.tracking_uri)
    wait_for(lambda: server.ready_version() == "1", 120, "v1 served", 0.2)
    before = _refusals(server)
    client = MlflowClient(lineage.tracking_uri)
    client.set_registered_model_alias(lineage.name, CHAMPION, "2")  # MLflow's UI "promote"
    wait_for(lambda: _refusals(server) > before, 120, "v2 refused", 0.2)
    _still_serves_v1(server)
    log = server.log_path.read_text()
    assert "champion v2 refused, v1 keeps serving" in log
    assert "was moved outside vitedit-ops" in log

    # the reviewer promotes it properly: the move is signed and v2 is served
    promote(lineage.runs["2"], user="ci", reason="reviewed", tracking_uri=lineage.tracking_uri)
    wait_for(lambda: server.ready_version() == "2", 120, "v2 served", 0.2)
    # a poll may land between the promote's tag writes and its signed grant and refuse v2
    # once more (seen once); what matters is that the signed move is then served
    assert _refusals(server) >= before + 1


def test_an_older_signed_move_put_back_by_hand_is_not_served(registered, serve):
    """v1's signed move copied back onto the registered model with the alias on v1 again
    (everything a signed move needs, replayed through the MLflow API): the server that
    already served the newer move #2 refuses it and keeps serving v2; a real rollback, a
    newer signed move, is followed."""
    from registry.promotion import rollback
    from registry.signing import grant_tag

    lineage = registered("serve-replayed-move")
    client = MlflowClient(lineage.tracking_uri)
    first_move = client.get_registered_model(lineage.name).tags[grant_tag(CHAMPION)]
    server = serve(lineage.name, lineage.tracking_uri)
    promote(lineage.runs["2"], user="ci", reason="reviewed", tracking_uri=lineage.tracking_uri)
    wait_for(lambda: server.ready_version() == "2", 120, "v2 served", 0.2)
    second_move = client.get_registered_model(lineage.name).tags[grant_tag(CHAMPION)]
    before = _refusals(server)
    client.set_registered_model_tag(lineage.name, grant_tag(CHAMPION), first_move)
    client.set_registered_model_alias(lineage.name, CHAMPION, "1")
    wait_for(lambda: _refusals(server) > before, 120, "the replayed move refused", 0.2)
    assert server.ready_version() == "2"
    assert "older than move #2 this server already served" in server.log_path.read_text()

    client.set_registered_model_tag(lineage.name, grant_tag(CHAMPION), second_move)
    client.set_registered_model_alias(lineage.name, CHAMPION, "2")  # put back as it was
    rollback(lineage.name, user="ci", reason="v2 regressed", tracking_uri=lineage.tracking_uri)
    wait_for(lambda: server.ready_version() == "1", 120, "v1 served after a real rollback", 0.2)


def test_swapped_onnx_with_its_hash_tag_rewritten_is_refused_by_promote_and_serving(
        registered, serve):
    """The attack of issue 12 against a served model."""
    lineage = registered("serve-swapped-onnx")
    server = serve(lineage.name, lineage.tracking_uri)
    wait_for(lambda: server.ready_version() == "1", 120, "v1 served", 0.2)
    client = MlflowClient(lineage.tracking_uri)
    served = _onnx_file(client, lineage.name, "2")
    served.write_bytes(_onnx_file(client, lineage.name, "3").read_bytes())
    client.set_model_version_tag(lineage.name, "2", versions.ONNX_SHA256, file_sha256(served))

    with pytest.raises(PromotionRefusedError, match="was rewritten after signing"):
        promote(lineage.runs["2"], user="ci", tracking_uri=lineage.tracking_uri)
    before = _refusals(server)
    promote(lineage.runs["2"], force=True, reason="fault trial", user="ci",
            tracking_uri=lineage.tracking_uri)  # a signed move: only the files are wrong
    wait_for(lambda: _refusals(server) > before, 120, "v2 refused", 0.2)
    _still_serves_v1(server)
    log = server.log_path.read_text()
    assert f"tag {versions.ONNX_SHA256} was rewritten after signing" in log
    assert "served ONNX file hash" in log


def test_a_registry_webhook_makes_the_server_look_at_once(registered, serve, monkeypatch):
    name = "serve-webhook"
    secret = "whsec-" + secrets.token_hex(16)
    monkeypatch.setenv("VITEDIT_SERVE_WEBHOOK_SECRET", secret)
    lineage = registered(name)
    # one look at start, then none for an hour: only a webhook makes it look again
    server = serve(name, lineage.tracking_uri, "--poll-interval", "3600")
    wait_for(lambda: server.ready_version() == "1", 120, "v1 served", 0.2)
    client = MlflowClient(lineage.tracking_uri)
    hook = client.create_webhook(name=f"vitedit-serve-{name}", url=server.url +
                                 "/webhooks/mlflow", events=list(EVENTS), secret=secret)
    try:
        assert client.test_webhook(hook.webhook_id).success  # MLflow's example payload

        def delivered() -> bool:  # the registry's webhook list is cached: wait until it fires
            client.set_model_version_tag(name, "3", "note", secrets.token_hex(4))
            return server.metric("vitedit_serve_webhooks_total", outcome="accepted") > 0
        wait_for(delivered, 120, "a webhook delivery accepted", 1.0)

        promote(lineage.runs["2"], user="ci", reason="webhook", tracking_uri=lineage.tracking_uri)
        wait_for(lambda: server.ready_version() == "2", 120, "v2 served after the webhook", 0.2)

        before = _refusals(server)
        client.set_registered_model_alias(name, CHAMPION, "3")  # by hand: looked at, refused
        wait_for(lambda: _refusals(server) > before, 120, "v3 refused after the webhook", 0.2)
        assert server.ready_version() == "2"
    finally:
        client.delete_webhook(hook.webhook_id)

    forged = requests.post(server.url + "/webhooks/mlflow", data=b'{"entity": "x"}', timeout=30,
                           headers={"X-MLflow-Signature": "v1,AAAA",
                                    "X-MLflow-Timestamp": str(int(time.time())),
                                    "X-MLflow-Delivery-Id": "d"})
    assert forged.status_code == 401 and "does not match" in forged.json()["error"]
    assert server.metric("vitedit_serve_webhooks_total", outcome="refused") >= 1
