"""Webhook deliveries signed by MLflow's own signer are accepted; anything else is refused."""

import json

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from serving.webhook import MAX_AGE_SECONDS, WebhookRefused, authenticate

NOW = 1_800_000_000
BODY = json.dumps({"entity": "model_version_alias", "action": "created",
                   "timestamp": "2027-01-15T08:00:00+00:00",
                   "data": {"name": "m", "alias": "champion", "version": "2"}})


def headers(secret: str, at: int = NOW, body: str = BODY) -> dict[str, str]:
    return {"x-mlflow-signature": _generate_hmac_signature(secret, "d-1", str(at), body),
            "x-mlflow-timestamp": str(at), "x-mlflow-delivery-id": "d-1"}


def test_a_delivery_signed_by_mlflow_is_accepted():
    delivery = authenticate("s3cret", headers("s3cret"), BODY.encode(), NOW + 10)
    assert delivery.event == "model_version_alias.created"
    assert delivery.concerns("m") and not delivery.concerns("other")


@pytest.mark.parametrize("case, match", [
    ("wrong secret", "does not match"), ("stale", "s from now"),
    ("body changed", "does not match"), ("no headers", "missing")])
def test_other_deliveries_are_refused(case, match):
    sent, body = headers("s3cret"), BODY.encode()
    if case == "wrong secret":
        sent = headers("guess")
    elif case == "stale":  # a captured delivery replayed later
        sent = headers("s3cret", at=NOW - MAX_AGE_SECONDS - 1)
    elif case == "body changed":
        body = BODY.replace('"2"', '"3"').encode()
    else:
        sent = {}
    with pytest.raises(WebhookRefused, match=match):
        authenticate("s3cret", sent, body, NOW)
