"""MLflow registry webhooks: a delivery is authenticated before it may wake the champion slot.

MLflow (3.3+) signs each delivery as ``v1,base64(HMAC-SHA256(secret, "<delivery id>.<unix
timestamp>.<body>"))`` in ``X-MLflow-Signature``. A delivery is only a hint to look at the alias
now: everything it could point at is verified again by the slot, so an accepted delivery never
decides what is served, and polling keeps working when deliveries are lost. A stale timestamp
is refused so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIGNATURE_HEADER = "x-mlflow-signature"
TIMESTAMP_HEADER = "x-mlflow-timestamp"
DELIVERY_HEADER = "x-mlflow-delivery-id"
MAX_AGE_SECONDS = 300
# the events whose deliveries make serving look at the champion alias now
EVENTS = ("model_version_alias.created", "model_version_alias.deleted",
          "model_version_tag.set")


class WebhookRefused(Exception):
    """The delivery is not authentic (bad or missing signature, stale, not JSON)."""


@dataclass(frozen=True)
class Delivery:
    """An authenticated delivery: its event (``entity.action``) and data."""

    event: str
    data: dict[str, Any]

    def concerns(self, model: str) -> bool:
        return self.event in EVENTS and self.data.get("name") == model


def authenticate(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> Delivery:
    """The delivery in ``body`` if its signature is ``secret``'s and it is fresh."""
    signature = headers.get(SIGNATURE_HEADER, "")
    delivery_id = headers.get(DELIVERY_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    if not (signature and delivery_id and timestamp):
        raise WebhookRefused("missing X-MLflow-Signature, -Delivery-Id or -Timestamp header")
    try:
        age = abs(now - int(timestamp))
    except ValueError as exc:
        raise WebhookRefused(f"timestamp {timestamp[:20]!r} is not a unix time") from exc
    if age > MAX_AGE_SECONDS:
        raise WebhookRefused(f"delivery is {age:.0f} s from now (at most {MAX_AGE_SECONDS})")
    content = f"{delivery_id}.{timestamp}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(secret.encode(), content,
                                                 hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, signature):
        raise WebhookRefused("X-MLflow-Signature does not match the configured secret")
    try:
        payload = json.loads(body)
        return Delivery(f"{payload['entity']}.{payload['action']}", dict(payload["data"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise WebhookRefused(f"delivery is not an MLflow webhook payload "
                             f"({type(exc).__name__})") from exc
